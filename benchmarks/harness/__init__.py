"""The load harness: simulated devices against blynk-server and MQTT peers (see benchmarks/README.md)."""
