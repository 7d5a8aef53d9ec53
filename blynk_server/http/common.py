"""Helpers shared by the HTTP apps: error bodies, pin parsing, value conversion, request metrics."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from blynk_server.domain import DeviceState, Domain
from blynk_server.errors import Refused
from blynk_server.http.stats import HttpStats
from blynk_server.model import MAX_TS_MS
from protocol.body import SEP, BodyError, Pin, parse_uint

log = logging.getLogger(__name__)

PIN_RE = re.compile(r"^([vVdDaA])([0-9]{1,3})$")  # ASCII digits only (``\d`` takes any script's)
# Methods counted by name in metrics; any other is "other" (a client may send any token as a method, and
# each would be a new label value).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
INT64_MAX = 2**63 - 1
INTERNAL_ERROR = "Internal server error."
MAX_BATCH = 10_000  # points in one batch/update or legacy extra/pin body  # JSON integers beyond SQLite's 64-bit range are refused, never stored
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Refused):
    """An error with the status and message the reference gives; each app renders it its own way."""


def device_or_404(domain: Domain, request: web.Request) -> DeviceState:
    """The device of the route's ``{device_id}``, or a 404 ``ApiError``."""
    try:
        device_id = parse_uint(request.match_info["device_id"], INT64_MAX)
    except BodyError:
        raise ApiError("Device not found.", 404) from None
    dev = domain.device(device_id)
    if dev is None:
        raise ApiError("Device not found.", 404)
    return dev


async def json_object(request: web.Request, empty_ok: bool = False) -> dict:
    """The request's JSON object body (``{}`` for no body when ``empty_ok``), else a 400 ``ApiError``."""
    if empty_ok and not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError, RecursionError):  # also numbers over 4,300 digits
        raise ApiError("Body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise ApiError("Body must be a JSON object.")
    return body


def error_body(message: str) -> bytes:
    """The Blynk cloud's error body, ``{"error": {"message": ...}}``: the one shape every door answers."""
    return json.dumps({"error": {"message": message}}).encode()


def json_error(message: str, status: int = 400) -> web.Response:
    """A JSON error answer (``error_body``)."""
    return web.Response(body=error_body(message), status=status, content_type="application/json", charset="utf-8")


_PIN_NAMES: dict[str, Pin] = {}  # valid names parsed once each: PIN_RE admits a few thousand at most


def parse_pin_name(name: str) -> Pin | None:
    """``v1``/``V1``/``d3``/``a0`` (letter required, 0..255); None when it is not a pin."""
    pin = _PIN_NAMES.get(name)
    if pin is None:
        m = PIN_RE.match(name)
        if m is None or int(m.group(2)) > 255:
            return None
        pin = _PIN_NAMES[name] = Pin(m.group(1).lower(), int(m.group(2)))
    return pin


class LogBudget:
    """At most ``per_interval`` lines per ``interval`` seconds; the rest are counted and the next line
    that may go out says how many were left out. Keeps a flood of bad requests from flooding the log."""

    def __init__(self, per_interval: int = 20, interval: float = 10.0) -> None:
        self.per_interval = per_interval
        self.interval = interval
        self._window = 0.0
        self._used = 0
        self._dropped = 0

    def take(self, now: float) -> int | None:
        """None when this line must not be logged; otherwise how many were left out before it."""
        if now - self._window >= self.interval:
            self._window, self._used = now, 0
        if self._used >= self.per_interval:
            self._dropped += 1
            return None
        self._used += 1
        dropped, self._dropped = self._dropped, 0
        return dropped


_refused_log = LogBudget()  # refused requests are logged at most 20 per 10 s (a bad-token flood is one line)


def log_refused(route: str, error: ApiError) -> None:
    """One line for a refused request, rate-limited (``_refused_log``); ``route`` is the route's pattern,
    never the path (legacy paths hold the token)."""
    if (dropped := _refused_log.take(time.monotonic())) is not None:
        more = f" ({dropped} more not logged)" if dropped else ""
        log.info("http error route=%s status=%d message=%s%s", route, error.status, error.message, more)


def route_name(request: web.Request) -> str:
    """The matched route's pattern (``/{token}/get/{pin}``): what logs and metrics may name, as a legacy
    path holds the device token."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def json_timestamp(value: object) -> int:
    """A point's timestamp from a JSON body: an integer of milliseconds in 0..``MAX_TS_MS``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TS_MS:
        raise ApiError("Timestamp is out of range.")
    return value


def json_to_raw(value: object) -> bytes:
    """A JSON value from a batch body as the bytes a device would send: true→1, [lon,lat]→NUL-joined.

    Integers beyond 64 bits and non-finite floats (``1e999``, ``NaN``) are refused here: no datastream
    type takes them, and they would reach places (floats, SQLite) that overflow."""
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, int):
        if not -INT64_MAX - 1 <= value <= INT64_MAX:
            raise ValueError("Number is out of range.")
        return str(value).encode()
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("Number is out of range.")
        return (str(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)).encode()
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list) and value and all(not isinstance(v, (list, dict)) for v in value):
        return SEP.join(json_to_raw(v) for v in value)
    raise ValueError("Value doesn't match the Datastream data type.")


def observe_request(stats: HttpStats, app_name: str, request: web.Request, status: int, seconds: float) -> None:
    """Count one answered request by route template (not raw path: tokens must not become label values)."""
    name = route_name(request) if status != 404 else "unmatched"
    method = request.method if request.method in METHODS else "other"
    stats.observe(app_name, name, method, status, seconds)


async def counted(stats: HttpStats, app_name: str, handler: Handler, request: web.Request) -> web.StreamResponse:
    """``handler(request)``, counted (``observe_request``) however it ends: its answer's status, an
    ``HTTPException``'s, or 500 for anything else passing through (a cancellation)."""
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        observe_request(stats, app_name, request, status, time.perf_counter() - start)


def metrics_middleware(stats: HttpStats, app_name: str) -> Callable:
    """Count every request (``counted``)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await counted(stats, app_name, handler, request)

    return middleware
