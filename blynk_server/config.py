"""One settings object: defaults < TOML file (``--config``) < ``BLYNK_*`` environment < flags."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(slots=True)
class Settings:
    data_dir: Path = Path("./blynk-data")
    host: str = "0.0.0.0"
    port: int = 8080
    tls_port: int | None = None
    cert: Path | None = None
    key: Path | None = None
    admin_host: str = "127.0.0.1"
    admin_port: int = 9080
    # Public base URL devices use to reach this server (OTA download links); derived when unset.
    external_url: str | None = None
    flush_interval: float = 1.0  # seconds between write-behind flushes
    login_timeout: float = 10.0  # seconds a connection may take to log in
    default_heartbeat: int = 10  # seconds, before the info message says otherwise (legacy default)
    message_rate: float = 100.0  # messages/s per device before flood control pauses reading
    message_burst: float | None = None  # bucket size; defaults to one second's worth
    quota_warning_period: float = 60.0  # at most one QUOTA_LIMIT per this many seconds
    recv_buffer: int = 4096  # bytes read per socket read; small so no socket starves the others
    max_frame: int = 32768  # largest body accepted from a device
    default_buff_in: int = 250  # assumed device buffer before the info message (legacy default)
    info_grace: float = 2.0  # seconds to hold pushes while waiting for the info message
    log_level: str = "INFO"
    # OTA: a download with no progress for this long fails ("Upload failure").
    ota_stall_timeout: float = 10.0
    ota_poll_interval: float = 0.5  # seconds between checks for shipment changes made by the CLI
    ota_request_timeout: float = 300.0  # seconds a sent ota command holds an in-flight slot without a download

    @property
    def heartbeat_timeout_default(self) -> int:
        return read_timeout(self.default_heartbeat)


def read_timeout(heartbeat: int) -> int:
    """ceil(h-beat × 2.3) seconds, computed as the legacy server does (IEEE doubles: 40 → 92)."""
    import math

    return math.ceil(heartbeat * 2.3)


_PATHS = {"data_dir", "cert", "key"}


def _convert(name: str, value):
    field = {f.name: f for f in fields(Settings)}[name]
    if value is None:
        return None
    kind = str(field.type)
    if name in _PATHS:
        return Path(value)
    if kind.startswith("int"):
        return int(value)
    if kind.startswith("float"):
        return float(value)
    return str(value)


def load(config_file: Path | None = None, env: dict | None = None, overrides: dict | None = None) -> Settings:
    """Build settings from the layers, each overriding the one before."""
    values: dict = {}
    known = {f.name for f in fields(Settings)}
    if config_file is not None:
        with open(config_file, "rb") as fh:
            data = tomllib.load(fh)
        data = data.get("server", data)
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ValueError(f"unknown setting {key!r} in {config_file}")
            values[name] = _convert(name, value)
    env = os.environ if env is None else env
    for name in known:
        raw = env.get("BLYNK_" + name.upper())
        if raw is not None and raw != "":
            values[name] = _convert(name, raw)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _convert(name, value)
    return dataclasses.replace(Settings(), **values)
