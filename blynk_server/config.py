"""One settings object: defaults < TOML file (``--config``) < ``BLYNK_*`` environment < flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from blynk_server.cpuslice import DEFAULT_SLICE_US, check_slice_us


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
    # Linux: the store writer thread's nice value above the event loop's, so that under saturation a
    # flush gets the smaller share of a core they share (0: the same priority).
    store_writer_nice: int = 10
    # Linux 6.12+: the event loop thread's scheduler slice in microseconds (0.1..100 ms; 0: the kernel's),
    # short so that on waking it preempts a thread of the server running on its core (cpuslice.py).
    loop_slice_us: int = DEFAULT_SLICE_US
    login_timeout: float = 10.0  # seconds a connection may take to log in
    default_heartbeat: int = 10  # seconds, before the info message says otherwise (legacy default)
    message_rate: float = 100.0  # messages/s per device before flood control pauses reading
    message_burst: float | None = None  # bucket size; defaults to one second's worth
    quota_warning_period: float = 60.0  # at most one QUOTA_LIMIT per this many seconds
    direct_reads: bool = True  # plain TCP device sockets read from one epoll set (Linux; direct.py)
    # Milliseconds the set is left unwatched after a wakeup that read from it, so the next wakeup finds
    # the reads of that time together (under load: fewer wakeups; a read waits this much at most; 0: off).
    read_coalesce_ms: float = 1.0
    recv_buffer: int = 4096  # bytes read per socket read; small so no socket starves the others
    # Frames of device telemetry handled per event-loop turn; past it, reads wait for a later turn (0: none).
    turn_budget: int = 256
    max_frame: int = 32768  # largest body accepted from a device
    default_buff_in: int = 250  # assumed device buffer before the info message (legacy default)
    info_grace: float = 2.0  # seconds to hold pushes while waiting for the info message
    log_level: str = "INFO"
    # OTA: a download with no progress for this long fails ("Upload failure").
    ota_stall_timeout: float = 10.0
    ota_poll_interval: float = 0.5  # seconds between looks at devices waiting on a time window or a free slot
    ota_request_timeout: float = 300.0  # seconds a sent ota command holds an in-flight slot without a download
    ota_max_firmware: int = 64 * 1024 * 1024  # bytes: the largest firmware image accepted (CLI and admin API)

    # --- limits and protections (README "Limits and protections") --------------------------------
    # Unauthenticated connections.
    max_pending_logins: int = 2000  # connections not yet logged in, server-wide; more are closed at once
    pending_logins_per_ip: int = 64  # connections from one IP not yet logged in; more are closed at once
    failed_logins_per_ip: float = 1.0  # failed logins per second per IP (refill rate of its budget)
    failed_login_burst: int = 20  # failed logins one IP may make at once before its budget is empty
    auth_log_interval: float = 10.0  # seconds between summary log lines of refused/failed logins
    # Output toward one device.
    write_buffer_high: int = 64 * 1024  # unsent bytes to a device above which it is not read
    write_buffer_max: int = 1024 * 1024  # unsent bytes to a device above which it is disconnected
    # Per-device state.
    max_properties_per_pin: int = 32  # distinct property names on one pin
    max_property_size: int = 1024  # bytes of one property value (all its fields)
    max_event_code: int = 64  # characters of an event code
    max_event_codes: int = 100  # distinct event codes one device may use
    max_meta_fields: int = 64  # metadata fields of one device
    max_meta_size: int = 1024  # bytes of one metadata name or value
    max_info_size: int = 2048  # bytes of the device info message
    info_cache_bytes: int = 4 * 1024 * 1024  # bytes of distinct info messages shared between devices
    store_max_pending_rows: int = 1_000_000  # history/event rows kept in memory while flushes fail
    # Retention (0 = keep forever); enforced by a background job that deletes in small batches.
    history_days: float = 90.0
    events_days: float = 90.0
    retention_interval: float = 3600.0  # seconds between retention runs
    # HTTP.
    http_header_timeout: float = 10.0  # seconds for a client to send a request's headers
    http_keepalive_timeout: float = 60.0  # seconds an idle keep-alive HTTP connection is kept
    http_connections_per_ip: int = 64  # concurrent HTTP connections from one IP on the device port
    http_request_rate: float = 50.0  # device API requests/s per token (blynk.cloud: 50 req/s per device)
    http_request_burst: int = 100  # requests one token may make at once
    http_short_path: bool = True  # plain GET /external/api/update answered before aiohttp (http/shortpath.py)
    data_get_max_points: int = 10_000  # raw points or buckets one data/get call returns at most
    data_export_ttl: float = 3600.0  # seconds a data/get FILE link (or a legacy data/{pin} file) stays valid
    data_export_max_files: int = 100  # export files kept at once; over it the oldest are removed
    data_export_max_bytes: int = 256 * 1024 * 1024  # bytes of export files kept at once; likewise
    batch_points_per_day: int = 10_000  # batch/update POST points per device per UTC day (blynk.cloud); 0 = none
    upload_max_size: int = 5 * 1024 * 1024  # bytes of one uploaded file (blynk.cloud: 5 MB); over: 413
    upload_files_per_device: int = 10  # files one device holds; a new one deletes the oldest (blynk.cloud: 10)
    uploads_per_device: int = 1000  # uploads one device may ever make (blynk.cloud: 1,000); over: 403
    upload_max_total_bytes: int = 1024 * 1024 * 1024  # bytes of all devices' uploads on disk; over: 403
    events_per_day: int = 100  # events one device may log per UTC day (blynk.cloud: 100); 0 = no limit
    max_properties_per_device: int = 256  # distinct (pin, name) properties of one device, all pins together

    # --- reactions: notifications, webhooks, automations (issue 14) ---------------------------------
    # Outbound e-mail (SMTP). No host: e-mails are refused with a clear error (device EMAIL: status 14).
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_from: str = "blynk-server@localhost"
    smtp_starttls: bool = True  # STARTTLS when the server offers it (set false for a plain local relay)
    smtp_timeout: float = 30.0  # seconds for one delivery
    email_device_interval: float = 15.0  # seconds between e-mails one device may send (legacy default 15 s)
    # The durable outbox (e-mails, webhook calls): a table in the store, drained by workers.
    outbox_max_rows: int = 100_000  # queued deliveries kept; over it the oldest are dropped, counted
    outbox_workers: int = 4  # deliveries in flight at once
    outbox_retry_base: float = 2.0  # seconds before the first retry; doubles each time
    outbox_retry_max: float = 600.0  # seconds between retries at most
    outbox_max_attempts: int = 8  # attempts before a delivery is given up (counted, logged)
    # Webhooks.
    webhook_timeout: float = 10.0  # seconds for one call (connect to end of answer)
    webhook_max_failures: int = 10  # consecutive failed calls after which a webhook is disabled
    webhook_max_body: int = 64 * 1024  # bytes of one rendered request body
    # Automations.
    automation_max_depth: int = 3  # actions that trigger automations that trigger automations...: stop here
    automation_runs_per_minute: int = 60  # runs of one automation per minute; more are skipped, counted

    # --- the Platform API (OAuth2 client credentials; issue 13) ------------------------------------
    platform_on_device_port: bool = False  # also serve /oauth2/token and /api/v1/organization/... there
    platform_token_ttl: float = 86400.0  # seconds an access token lives (Blynk: 24 h)
    platform_tokens_per_client: int = 100  # live access tokens per client; a new one retires the oldest
    platform_token_rate: float = 1.0  # token requests/s per client id and per peer address
    platform_token_burst: int = 10  # token requests one client or address may make at once
    platform_request_rate: float = 50.0  # Platform API requests/s per client
    platform_request_burst: int = 100  # Platform API requests one client may make at once
    # --- dynamic provisioning (device_provisioning.py) ---------------------------------------------
    provision_token_ttl: float = 3600.0  # seconds a provision token may wait for its device's first login
    provision_max_pending: int = 100  # provision tokens issued and not used yet, per template
    provision_tokens_per_minute: float = 60.0  # provision tokens issued per minute, server-wide; 0 = no limit

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
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"{name} must be true or false, not {value!r}")
        return text in ("1", "true", "yes", "on")
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
    return check(dataclasses.replace(Settings(), **values))


MAX_READ_COALESCE_MS = 1000.0  # a longer rest would near a fast heartbeat's read timeout (3 s at h-beat 1)
# uvloop rounds a timer's delay to whole milliseconds and runs one under half a millisecond at once: a
# shorter rest would end as soon as it began, a loop turn for nothing after every read.
MIN_READ_COALESCE_MS = 1.0


def check(settings: Settings) -> Settings:
    """Refuse a setting out of its range before anything starts (a clear error, not a half-started server)."""
    check_read_coalesce_ms(settings.read_coalesce_ms)
    check_slice_us(settings.loop_slice_us)
    return settings


def check_read_coalesce_ms(ms: float) -> None:
    """The range of ``read_coalesce_ms``: here when the settings load, and where the device set is made."""
    if ms != 0 and not MIN_READ_COALESCE_MS <= ms <= MAX_READ_COALESCE_MS:
        raise ValueError(
            f"read_coalesce_ms must be 0 or {MIN_READ_COALESCE_MS:g}..{MAX_READ_COALESCE_MS:g} (the loop's timers"
            f" count whole milliseconds), not {ms:g}"
        )
