"""Firmware over the air (Blynk.Air): firmware registry, shipments, per-device statuses, downloads."""
