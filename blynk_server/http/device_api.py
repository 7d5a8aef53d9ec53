"""The Blynk device HTTPS API, ``/external/api/...`` (reference protocol.md §10.2).

Every rule goes through ``Domain``; this module only maps query parameters to domain calls and
domain errors to the cloud's ``400 {"error": {"message": ...}}``.

``dataStreamId``: the cloud numbers datastreams; this server keys them by pin, so ``dataStreamId=N``
means virtual pin ``VN``.
``metaFieldId``: likewise, metadata here is keyed by field name, so ``metaFieldId`` is the field name
(both documented in the OpenAPI description and blynk_server/http/README.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web
from multidict import MultiDictProxy

from blynk_server.domain import DeviceState, EventRejected, InvalidValue
from blynk_server.http.common import (
    MAX_BATCH,
    ApiError,
    json_error,
    json_timestamp,
    json_to_raw,
    parse_pin_name,
    typed_value,
)
from blynk_server.http.limits import check_rate
from blynk_server.model import Datastream, now_ms
from protocol.body import SEP, BodyError, Pin, parse_uint

if TYPE_CHECKING:
    from blynk_server.app import BlynkServer
    from blynk_server.store.sqlite import SqliteStore

log = logging.getLogger(__name__)

MONTH_MS = 31 * 24 * 3600 * 1000
PERIODS_MS = {
    "HOUR": 3600_000,
    "DAY": 24 * 3600_000,
    "WEEK": 7 * 24 * 3600_000,
    "MONTH": 30 * 24 * 3600_000,
    "THREE_MONTHS": 90 * 24 * 3600_000,
}
GRANULARITY_MS = {"RAW_DATA": 0, "MINUTE": 60_000, "HOURLY": 3600_000, "DAILY": 24 * 3600_000}
SOURCE_TYPES = ("AVG", "MIN", "MAX", "SUM", "COUNT")
FORMATS = ("TS", "ISO_US", "ISO_SIMPLE")
RESERVED = {"token", "pin", "dataStreamId", "value"}
# Distinct pins one request may name (``get``/``update``/``batch/update`` with ``&v1&v2...``): each is a
# write delivered to the device, and the URL alone allows thousands of names.
MAX_PINS_PER_REQUEST = 64
# Aggregated ``data/get`` reads at most this many times ``data_get_max_points`` raw points.
AGGREGATE_SCAN_FACTOR = 10
ENCODE_SLICE = 500  # rows per json.dumps call in data/get
BATCH_SLICE = 500  # batch/update points checked between two yields to the event loop


def _device(server: BlynkServer, request: web.Request) -> DeviceState:
    """The device of ``token=``; spends one request of its rate (``http_request_rate``)."""
    token = request.query.get("token")
    if not token:
        raise ApiError("No token provided.")
    dev = server.domain.device_by_token(token)
    if dev is None:
        raise ApiError("Invalid token.")
    check_rate(request, dev.id)
    return dev


def _datastream_pin(q: MultiDictProxy) -> Pin:
    try:
        return Pin("v", parse_uint(q.get("dataStreamId", ""), 255))
    except BodyError:
        raise ApiError("Wrong dataStreamId format.") from None


def _pin_param(q: MultiDictProxy) -> Pin:
    """The pin of ``pin=`` or ``dataStreamId=``."""
    if "dataStreamId" in q:
        return _datastream_pin(q)
    pin = parse_pin_name(q.get("pin", ""))
    if pin is None:
        raise ApiError("Wrong pin format.")
    return pin


def _bare_pins(q: MultiDictProxy, skip: set[str]) -> list[tuple[str, Pin]]:
    """Pins given as parameter names (``&v1`` or ``&v1=42``); any other unknown name is a bad pin.
    Each pin once (``v1`` and ``V01`` are one pin: the first name wins), at most
    ``MAX_PINS_PER_REQUEST`` of them."""
    out: dict[str, tuple[str, Pin]] = {}
    for name in dict.fromkeys(q.keys()):
        if name in skip:
            continue
        pin = parse_pin_name(name)
        if pin is None:
            raise ApiError("Wrong pin format.")
        out.setdefault(pin.key, (name, pin))
        if len(out) > MAX_PINS_PER_REQUEST:
            raise ApiError(f"Too many pins in one request (at most {MAX_PINS_PER_REQUEST}).")
    return list(out.values())


def _write(server: BlynkServer, dev: DeviceState, pin: Pin, values: list[str]) -> None:
    if pin.key not in dev.template.datastreams:
        raise ApiError("No datastream setup for that pin.")
    raw = SEP.join(v.encode() for v in values)
    try:
        server.domain.write_pin(dev, pin, raw, deliver=True)
    except InvalidValue as exc:
        raise ApiError(str(exc)) from None


def add_routes(app: web.Application, server: BlynkServer) -> None:
    domain = server.domain
    assert domain is not None

    async def get(request: web.Request) -> web.Response:
        q = request.query
        dev = _device(server, request)
        if "dataStreamId" in q:
            pin = _datastream_pin(q)
            if pin.key not in dev.template.datastreams:
                raise ApiError("Requested dataStream doesn't exist in the product.")
            pins = [(pin.key, pin)]
        else:
            pins = _bare_pins(q, {"token"})
            if not pins:
                raise ApiError("Wrong pin format.")
        if len(pins) == 1:
            pin = pins[0][1]
            value = domain.read_pin(dev, pin.key)
            if value is None:
                if pin.key not in dev.template.datastreams:
                    raise ApiError("No datastream setup for that pin.")
                return web.Response(text="")
            return web.Response(text=value.decode("utf-8", "replace").replace("\0", ","))
        out = {}
        for name, pin in pins:
            value = domain.read_pin(dev, pin.key)
            out[name] = None if value is None else typed_value(dev.template.datastreams.get(pin.key), value)
        return web.json_response(out)

    async def get_all(request: web.Request) -> web.Response:
        dev = _device(server, request)
        keys = set(dev.values) | set(dev.template.datastreams)
        out = {}
        for key in sorted(keys, key=lambda k: (k[0], int(k[1:]))):
            value = domain.read_pin(dev, key)
            if value is not None:
                out[key] = typed_value(dev.template.datastreams.get(key), value)
        return web.json_response(out)

    async def update(request: web.Request) -> web.Response:
        q = request.query
        dev = _device(server, request)
        if "pin" in q or "dataStreamId" in q:
            values = q.getall("value", [])
            if not values:
                raise ApiError("Wrong request format.")
            _write(server, dev, _pin_param(q), values)
            return web.Response(text="")
        pins = _bare_pins(q, {"token"})
        if not pins:
            raise ApiError("Wrong pin format.")
        for name, pin in pins:
            _write(server, dev, pin, q.getall(name))
        return web.Response(text="")

    async def batch_update(request: web.Request) -> web.Response:
        q = request.query
        dev = _device(server, request)
        if request.method == "GET":
            pins = _bare_pins(q, {"token"})
            if not pins:
                raise ApiError("Wrong pin format.")
            for name, pin in pins:
                _write(server, dev, pin, q.getall(name))
            return web.Response(text="")
        pin = _pin_param(q)
        if request.content_type != "application/json":
            raise ApiError("Unknown content type.")
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError, RecursionError):  # also numbers over 4,300 digits, deep nesting
            raise ApiError("Request with incorrect parameters") from None
        if not isinstance(body, list):
            raise ApiError("Request with incorrect parameters")
        if len(body) > MAX_BATCH:
            raise ApiError(f"Too much data in batch. Maximum batch size is {MAX_BATCH} points.")
        oldest = now_ms() - MONTH_MS
        points = []
        for i, point in enumerate(body):
            if i and i % BATCH_SLICE == 0:
                await asyncio.sleep(0)  # 10,000 points are ~50 ms of Python: let other connections in between
            if not (isinstance(point, list) and len(point) == 2 and isinstance(point[0], int)):
                raise ApiError("Request with incorrect parameters")
            ts = json_timestamp(point[0])
            if ts < oldest:
                raise ApiError("Timestamp is more than 1 month old.")
            try:
                points.append((ts, json_to_raw(point[1])))
            except ValueError as exc:
                raise ApiError(str(exc)) from None
        if pin.key not in dev.template.datastreams:
            raise ApiError("No datastream setup for that pin.")
        try:
            domain.write_history(dev, pin, points)
        except InvalidValue as exc:
            raise ApiError(str(exc)) from None
        return web.Response(text="OK")

    async def update_property(request: web.Request) -> web.Response:
        q = request.query
        dev = _device(server, request)
        pin = _pin_param(q)
        names = [n for n in dict.fromkeys(q.keys()) if n not in RESERVED]
        if not names:
            raise ApiError("Wrong request format.")
        try:
            for name in names:
                domain.set_property(dev, [pin], name, [v.encode() for v in q.getall(name)])
        except InvalidValue as exc:  # the domain's caps on property names, sizes and counts
            raise ApiError(str(exc)) from None
        return web.Response(text="")

    async def log_event(request: web.Request) -> web.Response:
        q = request.query
        dev = _device(server, request)
        try:
            domain.log_event(dev, q.get("code", ""), q.get("description"))
        except EventRejected as exc:
            raise ApiError(str(exc)) from None
        return web.Response(text="")

    async def is_connected(request: web.Request) -> web.Response:
        dev = _device(server, request)
        return web.Response(text="true" if server.hub.is_online(dev.id) else "false")

    # Queries, aggregation and encoding of data/get run here, off the event loop; one thread, so
    # concurrent calls queue instead of taking the default executor's threads from everyone else, and
    # the event loop competes for the GIL with one of them at most.
    history_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blynk-data-get")

    async def stop_history_pool(app: web.Application) -> None:
        history_pool.shutdown(wait=True, cancel_futures=True)

    app.on_cleanup.append(stop_history_pool)

    async def data_get(request: web.Request) -> web.Response:
        q = request.query
        dev = _device(server, request)
        query = HistoryQuery.parse(q, dev, server.settings.data_get_max_points)
        body = await asyncio.get_running_loop().run_in_executor(history_pool, query.run, domain.store)
        return web.Response(body=body, content_type="application/json")

    async def meta_get(request: web.Request) -> web.Response:
        q = request.query
        dev = _device(server, request)
        name = q.get("metaFieldId", "")
        if not name:
            raise ApiError("Wrong metaField format.")
        value = domain.meta_get(dev, name)
        if value is None:
            raise ApiError("MetaField doesn't exist.")
        return web.json_response({"type": "Text", "value": value})

    async def meta_update(request: web.Request) -> web.Response:
        q = request.query
        dev = _device(server, request)
        name = q.get("metaFieldId", "")
        if not name:
            raise ApiError("Wrong metaField format")
        if domain.meta_get(dev, name) is None:
            raise ApiError("MetaField doesn't exist")
        value = q.get("value")
        if value is None or name == "Auth Token":
            raise ApiError("Wrong value")
        try:
            domain.meta_set(dev, name, value)
        except InvalidValue as exc:  # the domain's caps on metadata sizes
            raise ApiError(str(exc)) from None
        return web.Response(text="")

    r = app.router
    r.add_get("/external/api/get", get)
    r.add_get("/external/api/getAll", get_all)
    r.add_get("/external/api/update", update)
    r.add_get("/external/api/batch/update", batch_update)
    r.add_post("/external/api/batch/update", batch_update)
    r.add_get("/external/api/update/property", update_property)
    r.add_get("/external/api/logEvent", log_event)
    r.add_get("/external/api/isHardwareConnected", is_connected)
    r.add_get("/external/api/data/get", data_get)
    r.add_get("/external/api/device/meta", meta_get)
    r.add_get("/external/api/device/meta/update", meta_update)


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """A checked ``data/get`` (``output=JSON``): parsed on the loop, run in a worker thread.

    At most ``max_points`` rows come back: the oldest raw points of the period, or the buckets of the
    oldest ``AGGREGATE_SCAN_FACTOR × max_points`` raw points (buckets after the last complete one
    left out). ``rows_before_limit_at_least`` is then larger than ``rows`` (a lower bound of the rows
    there would be without the limit, as ClickHouse reports it)."""

    device_id: int
    pin: str
    ds: Datastream | None
    since: int
    until: int
    step: int
    source: str
    fmt: str
    tz: ZoneInfo
    max_points: int

    @classmethod
    def parse(cls, q: MultiDictProxy, dev: DeviceState, max_points: int) -> HistoryQuery:
        period = q.get("period", "MONTH")
        if period not in PERIODS_MS:
            raise ApiError(f"No enum constant Period.{period[:64]}", 500)
        granularity = q.get("granularityType", "RAW_DATA")
        source = q.get("sourceType", "AVG")
        fmt = q.get("format", "TS")
        if granularity not in GRANULARITY_MS or source not in SOURCE_TYPES or fmt not in FORMATS:
            raise ApiError("Request with incorrect parameters")
        if granularity == "RAW_DATA" and period == "THREE_MONTHS":
            raise ApiError("Request with incorrect parameters")
        try:
            tz = ZoneInfo(q.get("tzName", "UTC"))
        except (ZoneInfoNotFoundError, ValueError):
            raise ApiError("Request with incorrect parameters") from None
        if q.get("output", "FILE") != "JSON":
            raise ApiError("Only output=JSON is supported by this server.")
        if "pin" not in q and "dataStreamId" not in q:
            raise ApiError("Request with incorrect parameters")
        pin = _pin_param(q)
        until = now_ms()
        return cls(
            dev.id,
            pin.key,
            dev.template.datastreams.get(pin.key),
            until - PERIODS_MS[period],
            until,
            GRANULARITY_MS[granularity],
            source,
            fmt,
            tz,
            max(1, max_points),
        )

    def run(self, store: SqliteStore) -> bytes:
        """Query (with a LIMIT), aggregate and encode: the JSON body. Runs off the event loop."""
        raw_cap = self.max_points if self.step == 0 else self.max_points * AGGREGATE_SCAN_FACTOR
        points = store.history(self.device_id, self.pin, self.since, self.until, limit=raw_cap + 1)
        if not points:
            raise ApiError("No data", 500)
        truncated = len(points) > raw_cap
        del points[raw_cap:]
        ds = self.ds
        if self.step == 0:
            rows: list[tuple[int, object]] = points  # values typed below, slice by slice
            at_least = len(rows) + truncated
            value_type = "Float64" if ds is not None and ds.type in ("int", "double", "enum") else "String"
        else:
            buckets = _aggregate(points, self.step, self.source, self.tz)
            if truncated and buckets:
                buckets.pop()  # its points may go on past the ones read
            at_least = len(buckets) + truncated
            rows = buckets[: self.max_points]
            value_type = "Float64"
        meta = [
            {"name": "ts", "type": "UInt64" if self.fmt == "TS" else "String"},
            {"name": "value", "type": value_type},
        ]
        # Built and encoded in slices, handing the GIL over after each (time.sleep(0) releases it): the
        # event loop waits for this thread ~1 ms at most, not the 5 ms switch interval each time.
        chunks = []
        for i in range(0, len(rows), ENCODE_SLICE):
            part = [
                {"ts": self._when(ts), "value": typed_value(ds, value) if self.step == 0 else value}
                for ts, value in rows[i : i + ENCODE_SLICE]
            ]
            chunks.append(json.dumps(part)[1:-1])
            time.sleep(0)
        return (
            f'{{"meta": {json.dumps(meta)}, "data": [{", ".join(chunks)}], '
            f'"rows": {len(rows)}, "rows_before_limit_at_least": {at_least}}}'
        ).encode()

    def _when(self, ts: int) -> object:
        if self.fmt == "TS":
            return ts
        dt = datetime.fromtimestamp(ts / 1000, UTC).astimezone(self.tz)
        return dt.strftime("%m/%d/%Y %H:%M:%S") if self.fmt == "ISO_US" else dt.isoformat(timespec="milliseconds")


def _aggregate(points: list[tuple[int, bytes]], step: int, source: str, tz: ZoneInfo) -> list[tuple[int, float]]:
    """Bucket numeric points by ``step`` (aligned to the time zone's midnight for daily buckets)."""
    buckets: dict[int, list[float]] = {}
    for ts, raw in points:
        try:
            x = float(raw.split(SEP, 1)[0])
        except ValueError:
            continue
        if not math.isfinite(x):
            continue
        offset = 0
        if step >= 3600_000:
            utcoffset = datetime.fromtimestamp(ts / 1000, tz).utcoffset()
            offset = int(utcoffset.total_seconds() * 1000) if utcoffset else 0
        start = (ts + offset) // step * step - offset
        buckets.setdefault(start, []).append(x)
    out = []
    for start in sorted(buckets):
        xs = buckets[start]
        if source == "AVG":
            value = sum(xs) / len(xs)
        elif source == "MIN":
            value = min(xs)
        elif source == "MAX":
            value = max(xs)
        elif source == "SUM":
            value = sum(xs)
        else:
            value = float(len(xs))
        out.append((start, value))
    return out


__all__ = ["add_routes", "json_error"]
