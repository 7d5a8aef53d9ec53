"""The Blynk device HTTPS API, ``/external/api/...`` (reference protocol.md §10.2).

Every rule goes through ``Domain``; this module only maps query parameters to domain calls and
domain errors to the cloud's ``400 {"error": {"message": ...}}``.

``dataStreamId=N`` is the datastream whose id is N (``Datastream.id``, distinct from its pin; without
an explicit id a ``VN`` datastream has id N), in every endpoint that takes it. ``metaFieldId`` is a
metafield's id or its exact name (as Blynk documents); ``metaFieldName`` a name.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web
from multidict import MultiDictProxy

from blynk_server import metafields
from blynk_server.domain import (
    DAY_MS,
    DeviceState,
    Domain,
    EventNotDeclared,
    EventRejected,
    InvalidValue,
    MetaFieldUnknown,
    MetaValueRefused,
)
from blynk_server.export import ExportBusy, Exports, csv_rows, sanitize, write_zip
from blynk_server.history import (
    FORMATS,
    GRANULARITY_MS,
    PERIODS_MS,
    SOURCE_TYPES,
    Fetched,
    HistoryQuery,
    NoHistory,
    typed_value,
)
from blynk_server.http.common import (
    MAX_BATCH,
    ApiError,
    json_error,
    json_timestamp,
    json_to_raw,
    parse_pin_name,
)
from blynk_server.http.files import base_url
from blynk_server.http.limits import token_device
from blynk_server.hub import Hub
from blynk_server.model import MAX_DATASTREAM_ID, now_ms
from blynk_server.uploads import UploadRefused, Uploads
from protocol.body import SEP, BodyError, Pin, parse_pin, parse_uint

log = logging.getLogger(__name__)

MONTH_MS = 31 * 24 * 3600 * 1000
PERIOD_ENUM = "cc.blynk.server.core.model.widgets.outputs.graph.Period"  # as Blynk's error names it
RESERVED = {"token", "pin", "dataStreamId", "value"}
UNDECLARED_EVENT = "Can't find Event with this code in Product template"
# Distinct pins one request may name (``get``/``update``/``batch/update`` with ``&v1&v2...``): each is a
# write delivered to the device, and the URL alone allows thousands of names.
MAX_PINS_PER_REQUEST = 64
BATCH_SLICE = 500  # batch/update points checked between two yields to the event loop


def _device(domain: Domain, request: web.Request) -> DeviceState:
    """The device of ``token=``."""
    return token_device(domain, request, request.query.get("token"))


def _datastream_pin(domain: Domain, dev: DeviceState, q: MultiDictProxy) -> Pin:
    """The pin of the datastream ``dataStreamId=`` names; Blynk's answers for a malformed or unknown id."""
    try:
        ds_id = parse_uint(q.get("dataStreamId", ""), MAX_DATASTREAM_ID)
    except BodyError:
        raise ApiError("Wrong dataStreamId format.") from None
    ds = domain.datastream_by_id(dev.template, ds_id)
    if ds is None:
        raise ApiError(f"Requested dataStream doesn't exist in the product {dev.template.name}".rstrip())
    return parse_pin(ds.pin)


def _pin_param(domain: Domain, dev: DeviceState, q: MultiDictProxy) -> Pin:
    """The pin of ``pin=`` or ``dataStreamId=``."""
    if "dataStreamId" in q:
        return _datastream_pin(domain, dev, q)
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


def _write(domain: Domain, dev: DeviceState, pin: Pin, values: list[str]) -> None:
    raw = SEP.join(v.encode() for v in values)
    try:
        domain.write_pin(dev, pin, raw, deliver=True)
    except InvalidValue as exc:
        raise ApiError(str(exc)) from None


def update_pins(domain: Domain, dev: DeviceState, q: MultiDictProxy) -> None:
    """``update``: the pins its query names (``&v1=..``, or ``pin=``/``dataStreamId=`` with ``value=``)
    written and delivered; ApiError with Blynk's message otherwise. Also the HTTP short path's."""
    if "pin" in q or "dataStreamId" in q:
        values = q.getall("value", [])
        if not values:
            raise ApiError("Wrong request format.")
        _write(domain, dev, _pin_param(domain, dev, q), values)
        return
    pins = _bare_pins(q, {"token"})
    if not pins:
        raise ApiError("Wrong pin format.")
    for name, pin in pins:
        _write(domain, dev, pin, q.getall(name))


class DailyPoints:
    """Timestamped points each device imported today (UTC), for ``batch_points_per_day``: kept in memory
    (a restart starts the day's count again), one entry per device that imported today."""

    def __init__(self, per_day: int) -> None:
        self.per_day = per_day
        self._day = -1
        self._used: dict[int, int] = {}

    def check(self, device_id: int, points: int, now: int) -> None:
        """ApiError when ``points`` more would pass the device's limit for the day of ``now``."""
        if not self.per_day:
            return
        day = now // DAY_MS
        if day != self._day:
            self._day, self._used = day, {}
        used = self._used.get(device_id, 0)
        if used + points > self.per_day:
            raise ApiError(
                f"Daily limit of {self.per_day} data points per device is reached "
                f"({self.per_day - used} left for today, UTC)."
            )

    def add(self, device_id: int, points: int) -> None:
        """Count points stored (after ``check`` of the same day)."""
        if self.per_day:
            self._used[device_id] = self._used.get(device_id, 0) + points


@dataclass(frozen=True, slots=True)
class Files:
    """What the file endpoints need: the export and upload stores (None: the endpoint answers 404 or
    400), and the base of the links (``external_url``, else the request's own scheme and host)."""

    exports: Exports | None = None
    uploads: Uploads | None = None
    external_url: str | None = None


def add_routes(
    app: web.Application,
    domain: Domain,
    hub: Hub,
    data_get_max_points: int,
    files: Files | None = None,
    batch_points_per_day: int = 0,
) -> None:
    files = files or Files()
    daily = DailyPoints(batch_points_per_day)

    async def get(request: web.Request) -> web.Response:
        q = request.query
        dev = _device(domain, request)
        if "pin" in q or "dataStreamId" in q:  # get?token=T&pin=V2: the C++ library's HTTP example
            pin = _pin_param(domain, dev, q)
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
        dev = _device(domain, request)
        keys = set(dev.values) | set(dev.template.datastreams)
        out = {}
        for key in sorted(keys, key=lambda k: (k[0], int(k[1:]))):
            value = domain.read_pin(dev, key)
            if value is not None:
                out[key] = typed_value(dev.template.datastreams.get(key), value)
        return web.json_response(out)

    async def update(request: web.Request) -> web.Response:
        update_pins(domain, _device(domain, request), request.query)
        return web.Response(text="")

    async def batch_update(request: web.Request) -> web.Response:
        q = request.query
        dev = _device(domain, request)
        if request.method == "GET":
            pins = _bare_pins(q, {"token"})
            if not pins:
                raise ApiError("Wrong pin format.")
            for name, pin in pins:
                _write(domain, dev, pin, q.getall(name))
            return web.Response(text="OK")  # as Blynk's "Update Multiple Datastreams" page shows
        pin = _pin_param(domain, dev, q)
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
        now = now_ms()
        oldest = now - MONTH_MS
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
        daily.check(dev.id, len(points), now)  # all or nothing, like the batch itself
        try:
            domain.write_history(dev, pin, points)
        except InvalidValue as exc:
            raise ApiError(str(exc)) from None
        daily.add(dev.id, len(points))
        return web.Response(text="OK")

    async def update_property(request: web.Request) -> web.Response:
        q = request.query
        dev = _device(domain, request)
        pin = _pin_param(domain, dev, q)
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
        dev = _device(domain, request)
        try:
            domain.log_event(dev, q.get("code", ""), q.get("description"))
        except EventNotDeclared:  # Blynk's body (docs.blynk.io device HTTPS API, logEvent)
            raise ApiError(UNDECLARED_EVENT) from None
        except EventRejected as exc:
            raise ApiError(str(exc)) from None
        return web.Response(text="")

    async def is_connected(request: web.Request) -> web.Response:
        dev = _device(domain, request)
        return web.Response(text="true" if hub.is_online(dev.id) else "false")

    async def data_get(request: web.Request) -> web.Response:
        dev = _device(domain, request)
        q = request.query
        output = q.get("output", "FILE")
        if output not in ("FILE", "JSON"):
            raise ApiError("Request with incorrect parameters")
        queries, one_pin = parse_history_query(domain, q, dev, data_get_max_points)
        if output == "JSON":
            try:
                if one_pin:
                    body = await domain.history_json(queries[0])
                else:
                    body = await domain.history_json_many(queries, data_get_max_points)
            except NoHistory as exc:
                raise ApiError(str(exc), 500) from None
            return web.Response(body=body, content_type="application/json")
        if files.exports is None:
            raise ApiError("Only output=JSON is supported by this server.")
        fetched = await domain.history_fetch(queries, data_get_max_points)
        if not any(rows for _, rows, _ in fetched):
            raise ApiError("No data", 500)
        stamp = datetime.fromtimestamp(now_ms() / 1000, UTC).strftime("%Y-%m-%dT%H-%M-%S")
        name = files.exports.new_name(f"device_data_{dev.id}_{stamp}", "zip")
        names = {p: ds.name for p, ds in dev.template.datastreams.items()}
        events: list[dict] = []
        if q.get("sendEvents", "false").lower() == "true":
            since = queries[0].since
            events = [e for e in await domain.events(dev, data_get_max_points) if e["ts"] >= since]

        def write(fh) -> None:
            members = csv_members(fetched, names)
            if events:
                lines = (
                    (queries[0].when(e["ts"]), e["code"], e["level"], e["description"] or "") for e in events[::-1]
                )
                members.append(("events.csv", csv_rows(("ts", "code", "level", "description"), lines)))
            write_zip(fh, members)

        try:
            await files.exports.build(name, write)
        except ExportBusy as exc:
            raise ApiError(str(exc), 429) from None
        return web.json_response({"link": f"{base_url(request, files.external_url)}/{name}"})

    async def upload(request: web.Request) -> web.Response:
        dev = _device(domain, request)
        uploads = files.uploads
        if uploads is None:
            raise ApiError("File uploads are off on this server.", 404)
        if request.content_length is not None and request.content_length > uploads.max_size + 64 * 1024:
            raise ApiError(f"File is too large (at most {uploads.max_size} bytes).", 413)
        if not request.content_type.startswith("multipart/"):
            raise ApiError("Request with incorrect parameters")
        try:
            uploads.check(dev.id)  # before reading any of the body
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if getattr(part, "name", None) == "upfile":
                    path = await uploads.receive(dev.id, part.filename, part)  # type: ignore[arg-type]
                    return web.Response(text=f"{base_url(request, files.external_url)}/{path}")
                await part.release()  # type: ignore[union-attr]
        except UploadRefused as exc:
            raise ApiError(exc.message, exc.status) from None
        except ValueError:  # a malformed multipart body
            raise ApiError("Request with incorrect parameters") from None
        raise ApiError("No file provided in the 'upfile' field.")

    def meta_ref(q: MultiDictProxy) -> str:
        """The field of ``metaFieldId=`` (an id or, as Blynk documents, the exact name) or ``metaFieldName=``."""
        return q.get("metaFieldId") or q.get("metaFieldName") or ""

    async def meta_get(request: web.Request) -> web.Response:
        dev = _device(domain, request)
        ref = meta_ref(request.query)
        if not ref:
            raise ApiError("Wrong metaField format.")
        found = domain.meta_read(dev, ref)
        if found is None:
            raise ApiError("MetaField doesn't exist.")
        field, value = found
        return web.json_response({"type": metafields.blynk_type(field), "value": metafields.typed(field, value)})

    async def meta_update(request: web.Request) -> web.Response:
        q = request.query
        dev = _device(domain, request)
        ref = meta_ref(q)
        if not ref:
            raise ApiError("Wrong metaField format")
        value = q.get("value")
        if value is None:
            if domain.meta_read(dev, ref) is None:
                raise ApiError("MetaField doesn't exist")
            raise ApiError("Wrong value")
        try:
            domain.meta_write(dev, ref, value)
        except MetaFieldUnknown:
            raise ApiError("MetaField doesn't exist") from None
        except MetaValueRefused:
            raise ApiError("Wrong value") from None
        except InvalidValue as exc:  # the domain's caps on metadata sizes and counts
            raise ApiError(str(exc)) from None
        return web.Response(text="")

    routes = [
        ("GET", "get", get),
        ("GET", "getAll", get_all),
        ("GET", "update", update),
        ("GET", "batch/update", batch_update),
        ("POST", "batch/update", batch_update),
        ("GET", "update/property", update_property),
        ("GET", "logEvent", log_event),
        ("GET", "isHardwareConnected", is_connected),
        ("GET", "data/get", data_get),
        ("GET", "device/meta", meta_get),
        ("GET", "device/meta/update", meta_update),
        ("POST", "upload", upload),
    ]
    for method, path, handler in routes:
        # With and without a trailing slash: Blynk's widget pages show ``/external/api/update/?token=``.
        for url in (f"/external/api/{path}", f"/external/api/{path}/"):
            app.router.add_route(method, url, handler)


def parse_history_query(
    domain: Domain, q: MultiDictProxy, dev: DeviceState, max_points: int
) -> tuple[list[HistoryQuery], bool]:
    """A checked ``data/get``: one query per pin (the ``pin``/``dataStreamId`` named, else every
    datastream of the device's template, in pin order), and whether a pin was named."""
    period = q.get("period", "MONTH")
    if period not in PERIODS_MS:
        raise ApiError(f"No enum constant {PERIOD_ENUM}.{period[:64]}", 500)
    granularity = q.get("granularityType", "RAW_DATA")
    source = q.get("sourceType", "AVG")
    fmt = q.get("format", "TS")
    if granularity not in GRANULARITY_MS or source not in SOURCE_TYPES or fmt not in FORMATS:
        raise ApiError("Request with incorrect parameters")
    if granularity == "RAW_DATA" and period == "THREE_MONTHS":
        raise ApiError("Request with incorrect parameters")
    if q.get("sendEvents", "false").lower() not in ("true", "false"):
        raise ApiError("Request with incorrect parameters")
    try:
        tz = ZoneInfo(q.get("tzName", "UTC"))
    except (ZoneInfoNotFoundError, ValueError):
        raise ApiError("Request with incorrect parameters") from None
    one_pin = "pin" in q or "dataStreamId" in q
    if one_pin:
        keys = [_pin_param(domain, dev, q).key]
    else:
        keys = sorted(dev.template.datastreams, key=lambda k: (k[0], int(k[1:])))
        if not keys:
            raise ApiError("No data", 500)
    until = now_ms()
    since = until - PERIODS_MS[period]
    step = GRANULARITY_MS[granularity]
    points = max(1, max_points)
    queries = [
        HistoryQuery(dev.id, key, dev.template.datastreams.get(key), since, until, step, source, fmt, tz, points)
        for key in keys
    ]
    return queries, one_pin


def csv_members(fetched: list[Fetched], names: dict[str, str]) -> list[tuple[str, bytes]]:
    """The zip of ``data/get`` (``output=FILE``): one CSV per datastream with rows, ``<pin>_<name>.csv``,
    columns ``ts,value`` (``ts`` as ``format`` says; multi-value values joined with commas). Runs on an
    export thread."""
    members = []
    for query, rows, _ in fetched:
        if not rows:
            continue
        lines = ((query.when(ts), _csv_value(query.value(value))) for ts, value in rows)
        name = f"{query.pin}_{sanitize(names.get(query.pin, ''))}".rstrip("_")
        members.append((f"{name}.csv", csv_rows(("ts", "value"), lines)))
    return members


def _csv_value(value: object) -> object:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value


__all__ = ["add_routes", "json_error", "update_pins"]
