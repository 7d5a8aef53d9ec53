"""Helpers shared by the HTTP apps: error bodies, pin parsing, value conversion, request metrics."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from blynk_server.metrics import HttpStats
from blynk_server.model import Datastream
from protocol.body import SEP, Pin

log = logging.getLogger(__name__)

PIN_RE = re.compile(r"^([vVdDaA])(\d{1,3})$")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error with the status and message the reference gives; each app renders it its own way."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def json_error(message: str, status: int = 400) -> web.Response:
    """The Blynk cloud's error body: ``{"error": {"message": ...}}``."""
    return web.json_response({"error": {"message": message}}, status=status)


def parse_pin_name(name: str) -> Pin | None:
    """``v1``/``V1``/``d3``/``a0`` (letter required, 0..255); None when it is not a pin."""
    m = PIN_RE.match(name)
    if m is None or int(m.group(2)) > 255:
        return None
    return Pin(m.group(1).lower(), int(m.group(2)))


def typed_value(ds: Datastream | None, raw: bytes) -> object:
    """A stored value as JSON: numbers for numeric datastreams, a list for multi-value, else a string."""
    if SEP in raw:
        parts = raw.split(SEP)
        if ds is not None and ds.type == "location":
            try:
                return [float(p) for p in parts]
            except ValueError:
                pass
        return [p.decode("utf-8", "replace") for p in parts]
    text = raw.decode("utf-8", "replace")
    if ds is not None and ds.type in ("int", "enum"):
        try:
            return int(float(text))
        except ValueError:
            return text
    if ds is not None and ds.type == "double":
        try:
            return float(text)
        except ValueError:
            return text
    return text


def json_to_raw(value: object) -> bytes:
    """A JSON value from a batch body as the bytes a device would send: true→1, [lon,lat]→NUL-joined."""
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, (int, float)):
        return (str(int(value)) if isinstance(value, int) or value == int(value) else repr(value)).encode()
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list) and value and all(not isinstance(v, (list, dict)) for v in value):
        return SEP.join(json_to_raw(v) for v in value)
    raise ValueError("Value doesn't match the Datastream data type.")


def metrics_middleware(stats: HttpStats, app_name: str) -> Callable:
    """Count every request by route template (not raw path: tokens must not become label values)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
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
            route = request.match_info.route
            resource = route.resource
            name = resource.canonical if resource is not None and status != 404 else "unmatched"
            stats.observe(app_name, name, request.method, status, time.perf_counter() - start)

    return middleware
