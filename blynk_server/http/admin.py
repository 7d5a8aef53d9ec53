"""The admin listener's aiohttp application: provisioning API, ``/metrics``, OpenAPI document.

Every route is behind the API key (``Authorization: Bearer <key>`` or ``X-API-Key``), enforced by a
middleware so routes added by other modules (OTA) are covered too. Open without a key: ``/metrics``
(counters only, for Prometheus), ``/api/health`` (for load balancers) and ``/api/openapi.json``.
The listener binds 127.0.0.1 by default.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
from typing import TYPE_CHECKING

from aiohttp import web

from blynk_server import apikey
from blynk_server.domain import InvalidValue
from blynk_server.http.common import (
    INT64_MAX,
    ApiError,
    Handler,
    json_error,
    json_to_raw,
    metrics_middleware,
    parse_pin_name,
    route_name,
)
from blynk_server.metrics import render
from blynk_server.model import DATASTREAM_TYPES, Datastream
from blynk_server.ota.http import add_admin_routes
from protocol.body import BodyError, parse_pin, parse_uint

if TYPE_CHECKING:
    from blynk_server.app import BlynkServer

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/metrics", "/api/health", "/api/openapi.json"})
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _presented_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("X-API-Key")


def auth_middleware(server: BlynkServer):
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in PUBLIC_PATHS and not apikey.check_key(_presented_key(request), server.api_key_hash):
            log.info("admin auth failed route=%s peer=%s", route_name(request), request.remote)
            return json_error("Missing or invalid API key.", 401)
        try:
            return await handler(request)
        except ApiError as exc:
            return json_error(exc.message, exc.status)

    return middleware


async def _json_body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError, RecursionError):  # also numbers over 4,300 digits
        raise ApiError("Body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise ApiError("Body must be a JSON object.")
    return body


def datastream_from_json(pin: str, d: dict) -> Datastream:
    """A datastream from its JSON form (the same fields ``Datastream.as_dict`` gives)."""
    try:
        p = parse_pin(pin)
    except BodyError:
        raise ApiError("Wrong pin format.") from None
    typ = str(d.get("type", "string")).lower()
    if typ not in DATASTREAM_TYPES:
        raise ApiError(f"type must be one of {', '.join(DATASTREAM_TYPES)}.")
    try:
        mn = float(d["min"]) if d.get("min") is not None else None
        mx = float(d["max"]) if d.get("max") is not None else None
        enum = tuple(int(x) for x in d.get("enum_values") or ())
    except (TypeError, ValueError, OverflowError):
        raise ApiError("min, max and enum_values must be numbers.") from None
    if not all(math.isfinite(x) for x in (mn, mx) if x is not None) or not all(
        -INT64_MAX - 1 <= x <= INT64_MAX for x in enum
    ):
        raise ApiError("min, max and enum_values must be finite numbers within 64 bits.")
    if mn is not None and mx is not None and mn > mx:
        raise ApiError("min is greater than max.")
    default = d.get("default")
    return Datastream(
        p.key,
        str(d.get("name") or str(p)),
        typ,
        mn,
        mx,
        None if default is None else str(default),
        enum,
        bool(d.get("history", False)),
        bool(d.get("sync", False)),
    )


def build_admin_app(server: BlynkServer) -> web.Application:
    middlewares = [auth_middleware(server)]
    if getattr(server, "http", None) is not None:
        middlewares.insert(0, metrics_middleware(server.http.stats, "admin"))
    app = web.Application(middlewares=middlewares)

    def store():
        assert server.store is not None
        return server.store

    def domain():
        assert server.domain is not None
        return server.domain

    def device_json(record) -> dict:
        """A device row plus its online state; last_seen of a live device comes from memory (the store's
        copy is written behind)."""
        d = record.as_dict()
        d["online"] = online = server.hub.is_online(record.id)
        if online:
            live = domain().device(record.id)
            if live is not None:
                d["last_seen"] = max(record.last_seen or 0, live.record.last_seen or 0) or None
        return d

    def device_or_404(request: web.Request):
        try:
            device_id = parse_uint(request.match_info["device_id"], INT64_MAX)
        except BodyError:
            raise ApiError("Device not found.", 404) from None
        dev = domain().device(device_id)
        if dev is None:
            raise ApiError("Device not found.", 404)
        return dev

    def template_or_404(tid: str):
        tpl = store().get_template(tid)
        if tpl is None:
            raise ApiError("Template not found.", 404)
        return tpl

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "sessions": len(server.hub)})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render(server.http.registry), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    async def openapi(request: web.Request) -> web.Response:
        from blynk_server.http.openapi import add_undocumented, spec

        return web.json_response(add_undocumented(spec(), request.app.router.routes()))

    async def list_templates(request: web.Request) -> web.Response:
        return web.json_response([t.as_dict() for t in store().list_templates()])

    async def create_template(request: web.Request) -> web.Response:
        from blynk_server.app import _template_id

        body = await _json_body(request)
        tid = str(body.get("id") or _template_id())
        name = str(body.get("name") or tid)
        streams = body.get("datastreams") or []
        if not isinstance(streams, list) or not all(isinstance(d, dict) for d in streams):
            raise ApiError("datastreams must be a list of objects.")
        datastreams = [datastream_from_json(str(d.get("pin", "")), d) for d in streams]
        if store().get_template(tid) is not None:
            raise ApiError("Template already exists.", 409)
        try:
            tpl = store().create_template(tid, name, datastreams)
        except sqlite3.IntegrityError:
            raise ApiError("Template already exists.", 409) from None
        domain().invalidate_template(tid)
        log.info("admin template created template=%s", tid)
        return web.json_response(tpl.as_dict(), status=201)

    async def show_template(request: web.Request) -> web.Response:
        return web.json_response(template_or_404(request.match_info["template_id"]).as_dict())

    async def delete_template(request: web.Request) -> web.Response:
        tid = request.match_info["template_id"]
        template_or_404(tid)
        if store().list_devices(tid):
            raise ApiError("Template has devices; delete them first.", 409)
        store().delete_template(tid)
        domain().invalidate_template(tid)
        log.info("admin template deleted template=%s", tid)
        return web.Response(status=204)

    async def put_datastream(request: web.Request) -> web.Response:
        tid = request.match_info["template_id"]
        template_or_404(tid)
        ds = datastream_from_json(request.match_info["pin"], await _json_body(request))
        store().put_datastream(tid, ds)
        domain().invalidate_template(tid)
        return web.json_response(ds.as_dict())

    async def delete_datastream(request: web.Request) -> web.Response:
        tid = request.match_info["template_id"]
        template_or_404(tid)
        pin = parse_pin_name(request.match_info["pin"])
        if pin is None or not store().delete_datastream(tid, pin.key):
            raise ApiError("Datastream not found.", 404)
        domain().invalidate_template(tid)
        return web.Response(status=204)

    async def list_devices(request: web.Request) -> web.Response:
        records = store().list_devices(request.query.get("template_id"))
        return web.json_response([device_json(r) for r in records])

    async def create_device(request: web.Request) -> web.Response:
        body = await _json_body(request)
        tid = str(body.get("template_id", ""))
        template_or_404(tid)
        token = body.get("token")
        if token is not None and (not isinstance(token, str) or not 1 <= len(token) <= 64 or not token.isprintable()):
            raise ApiError("token must be 1..64 printable characters.")
        try:
            record = store().create_device(tid, str(body.get("name") or "Device"), token)
        except sqlite3.IntegrityError:
            raise ApiError("Token already in use.", 409) from None
        log.info("admin device created device=%d template=%s", record.id, tid)
        return web.json_response(device_json(record), status=201)

    async def show_device(request: web.Request) -> web.Response:
        dev = device_or_404(request)
        record = store().get_device(dev.id) or dev.record
        out = device_json(record)
        out["last_seen"] = max(record.last_seen or 0, dev.record.last_seen or 0) or None
        out["info"] = dev.record.info or record.info
        return web.json_response(out)

    async def delete_device(request: web.Request) -> web.Response:
        dev = device_or_404(request)
        store().delete_device(dev.id)
        domain().forget(dev.id)
        log.info("admin device deleted device=%d", dev.id)
        return web.Response(status=204)

    async def device_values(request: web.Request) -> web.Response:
        dev = device_or_404(request)
        return web.json_response(
            {
                k: {"value": v.decode("utf-8", "replace").replace("\0", ","), "ts": ts}
                for k, (v, ts) in dev.values.items()
            }
        )

    async def write_value(request: web.Request) -> web.Response:
        dev = device_or_404(request)
        pin = parse_pin_name(request.match_info["pin"])
        if pin is None:
            raise ApiError("Wrong pin format.")
        value = (await _json_body(request)).get("value")
        values = value if isinstance(value, list) else [value]
        if value is None or any(isinstance(v, (dict, list)) or v is None for v in values):
            raise ApiError("value must be a string, a number or a list of them.")
        try:
            raw = b"\0".join(str(v).encode() if isinstance(v, str) else json_to_raw(v) for v in values)
            stored = domain().write_pin(dev, pin, raw, deliver=True)
        except ValueError as exc:  # InvalidValue, or json_to_raw's "Number is out of range."
            raise ApiError(str(exc)) from None
        return web.json_response({"pin": pin.key, "value": stored.decode("utf-8", "replace")})

    async def device_events(request: web.Request) -> web.Response:
        dev = device_or_404(request)
        try:
            limit = max(1, min(10_000, parse_uint(request.query.get("limit", "1000"), INT64_MAX)))
        except BodyError:
            raise ApiError("limit must be an integer.") from None
        await asyncio.get_running_loop().run_in_executor(None, store().flush_now)
        return web.json_response(store().events(dev.id, limit))

    async def device_meta(request: web.Request) -> web.Response:
        dev = device_or_404(request)
        return web.json_response(dict(dev.meta))

    async def put_meta(request: web.Request) -> web.Response:
        dev = device_or_404(request)
        value = (await _json_body(request)).get("value")
        if not isinstance(value, str):
            raise ApiError("value must be a string.")
        try:
            domain().meta_set(dev, request.match_info["name"], value)
        except InvalidValue as exc:  # the domain's caps on metadata sizes and counts
            raise ApiError(str(exc)) from None
        return web.json_response({"name": request.match_info["name"], "value": value})

    r = app.router
    r.add_get("/api/health", health)
    r.add_get("/metrics", metrics)
    r.add_get("/api/openapi.json", openapi)
    r.add_get("/api/templates", list_templates)
    r.add_post("/api/templates", create_template)
    r.add_get("/api/templates/{template_id}", show_template)
    r.add_delete("/api/templates/{template_id}", delete_template)
    r.add_put("/api/templates/{template_id}/datastreams/{pin}", put_datastream)
    r.add_delete("/api/templates/{template_id}/datastreams/{pin}", delete_datastream)
    r.add_get("/api/devices", list_devices)
    r.add_post("/api/devices", create_device)
    r.add_get("/api/devices/{device_id}", show_device)
    r.add_delete("/api/devices/{device_id}", delete_device)
    r.add_get("/api/devices/{device_id}/values", device_values)
    r.add_put("/api/devices/{device_id}/values/{pin}", write_value)
    r.add_get("/api/devices/{device_id}/events", device_events)
    r.add_get("/api/devices/{device_id}/meta", device_meta)
    r.add_put("/api/devices/{device_id}/meta/{name}", put_meta)
    add_admin_routes(app, server)
    return app


__all__ = ["build_admin_app"]
