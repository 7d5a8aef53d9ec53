"""The Blynk device HTTPS API, ``/external/api/...`` (reference protocol.md §10.2).

Every rule goes through ``Domain``; this module only maps query parameters to domain calls and
domain errors to the cloud's ``400 {"error": {"message": ...}}``.

``dataStreamId=N`` is the datastream whose id is N (``Datastream.id``, distinct from its pin; without
an explicit id a ``VN`` datastream has id N), in every endpoint that takes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web
from multidict import MultiDictProxy

from blynk_server.domain import DeviceState, Domain, EventRejected, InvalidValue
from blynk_server.history import FORMATS, GRANULARITY_MS, PERIODS_MS, SOURCE_TYPES, HistoryQuery, NoHistory, typed_value
from blynk_server.http.common import (
    MAX_BATCH,
    ApiError,
    json_error,
    json_timestamp,
    json_to_raw,
    parse_pin_name,
)
from blynk_server.http.limits import check_rate
from blynk_server.hub import Hub
from blynk_server.model import MAX_DATASTREAM_ID, now_ms
from protocol.body import SEP, BodyError, Pin, parse_pin, parse_uint

log = logging.getLogger(__name__)

MONTH_MS = 31 * 24 * 3600 * 1000
RESERVED = {"token", "pin", "dataStreamId", "value"}
# Distinct pins one request may name (``get``/``update``/``batch/update`` with ``&v1&v2...``): each is a
# write delivered to the device, and the URL alone allows thousands of names.
MAX_PINS_PER_REQUEST = 64
BATCH_SLICE = 500  # batch/update points checked between two yields to the event loop


def _device(domain: Domain, request: web.Request) -> DeviceState:
    """The device of ``token=``; spends one request of its rate (``http_request_rate``)."""
    token = request.query.get("token")
    if not token:
        raise ApiError("No token provided.")
    dev = domain.device_by_token(token)
    if dev is None:
        raise ApiError("Invalid token.")
    check_rate(request, dev.id)
    return dev


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


def add_routes(app: web.Application, domain: Domain, hub: Hub, data_get_max_points: int) -> None:

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
        q = request.query
        dev = _device(domain, request)
        if "pin" in q or "dataStreamId" in q:
            values = q.getall("value", [])
            if not values:
                raise ApiError("Wrong request format.")
            _write(domain, dev, _pin_param(domain, dev, q), values)
            return web.Response(text="")
        pins = _bare_pins(q, {"token"})
        if not pins:
            raise ApiError("Wrong pin format.")
        for name, pin in pins:
            _write(domain, dev, pin, q.getall(name))
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
            return web.Response(text="")
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
        try:
            domain.write_history(dev, pin, points)
        except InvalidValue as exc:
            raise ApiError(str(exc)) from None
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
        except EventRejected as exc:
            raise ApiError(str(exc)) from None
        return web.Response(text="")

    async def is_connected(request: web.Request) -> web.Response:
        dev = _device(domain, request)
        return web.Response(text="true" if hub.is_online(dev.id) else "false")

    async def data_get(request: web.Request) -> web.Response:
        dev = _device(domain, request)
        query = parse_history_query(domain, request.query, dev, data_get_max_points)
        try:
            body = await domain.history_json(query)
        except NoHistory as exc:
            raise ApiError(str(exc), 500) from None
        return web.Response(body=body, content_type="application/json")

    async def meta_get(request: web.Request) -> web.Response:
        q = request.query
        dev = _device(domain, request)
        name = q.get("metaFieldId", "")
        if not name:
            raise ApiError("Wrong metaField format.")
        value = domain.meta_get(dev, name)
        if value is None:
            raise ApiError("MetaField doesn't exist.")
        return web.json_response({"type": "Text", "value": value})

    async def meta_update(request: web.Request) -> web.Response:
        q = request.query
        dev = _device(domain, request)
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
    ]
    for method, path, handler in routes:
        # With and without a trailing slash: Blynk's widget pages show ``/external/api/update/?token=``.
        for url in (f"/external/api/{path}", f"/external/api/{path}/"):
            app.router.add_route(method, url, handler)


def parse_history_query(domain: Domain, q: MultiDictProxy, dev: DeviceState, max_points: int) -> HistoryQuery:
    """A checked ``data/get`` (``output=JSON``)."""
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
    pin = _pin_param(domain, dev, q)
    until = now_ms()
    return HistoryQuery(
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


__all__ = ["add_routes", "json_error"]
