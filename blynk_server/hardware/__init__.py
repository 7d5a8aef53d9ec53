"""The device side: listeners and per-connection sessions speaking the Blynk binary protocol."""
