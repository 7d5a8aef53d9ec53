"""HTTP: the device HTTP APIs on the device port, the admin API and /metrics on the admin port."""
