"""blynk-server: a self-hosted server for Blynk IoT devices."""

__version__ = "0.1.0"
