"""The admin listener's aiohttp application: provisioning API, ``/metrics``, OpenAPI document.

Every route is behind the API key (``Authorization: Bearer <key>`` or ``X-API-Key``), enforced by a
middleware so routes added by other modules (OTA) are covered too. Open without a key: ``/metrics``
(counters only, for Prometheus), ``/api/health`` (for load balancers) and ``/api/openapi.json``.
The Platform API's routes (``http/platform_api.py``) check their own OAuth2 bearer tokens instead.
The listener binds 127.0.0.1 by default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from aiohttp import web

from blynk_server import apikey, metafields
from blynk_server.domain import DeviceState, InvalidValue
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
from blynk_server.http.common import device_or_404 as find_device
from blynk_server.http.common import json_object as _json_body
from blynk_server.http.platform_api import is_platform_path
from blynk_server.http.stats import HttpStats
from blynk_server.hub import Hub
from blynk_server.ota.http import add_admin_routes
from blynk_server.ota.service import OtaService
from blynk_server.provisioning import (
    NewDevice,
    NotFound,
    Provisioning,
    ProvisioningError,
    datastream_from_json,
    metafield_from_json,
)
from protocol.body import BodyError, parse_uint

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/metrics", "/api/health", "/api/openapi.json"})
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_IMPORT = 100_000  # devices in one import request
ADMIN_MAX_BODY = 16 * 1024 * 1024  # an import of MAX_IMPORT devices fits


def _presented_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("X-API-Key")


def auth_middleware(api_key_hash: str | None):
    """The API key on every route but ``PUBLIC_PATHS``; ``ApiError`` and ``ProvisioningError`` as JSON."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            api_key_hash is not None
            and request.path not in PUBLIC_PATHS
            and not is_platform_path(request.path)  # their own bearer tokens; the API key does not open them
            and not apikey.check_key(_presented_key(request), api_key_hash)
        ):
            log.info("admin auth failed route=%s peer=%s", route_name(request), request.remote)
            return json_error("Missing or invalid API key.", 401)
        try:
            return await handler(request)
        except (ApiError, ProvisioningError) as exc:
            return json_error(exc.message, exc.status)

    return middleware


def build_admin_app(
    provisioning: Provisioning,
    hub: Hub,
    ota: OtaService,
    render_metrics: Callable[[], bytes],
    api_key_hash: str | None,
    stats: HttpStats | None = None,
    extensions: Iterable[Callable[[web.Application], None]] = (),
) -> web.Application:
    """The admin API. ``api_key_hash`` None: no key asked (the control socket in the private data dir).
    ``extensions`` add the routes of other parts (webhooks...), behind the same key."""
    middlewares = [auth_middleware(api_key_hash)]
    if stats is not None:
        middlewares.insert(0, metrics_middleware(stats, "admin"))
    app = web.Application(middlewares=middlewares, client_max_size=ADMIN_MAX_BODY)
    domain = provisioning.domain

    def device_json(dev: DeviceState) -> dict:
        """A device's record (last_seen and info as the running server knows them) and online state."""
        d = dev.record.as_dict()
        d["online"] = hub.is_online(dev.id)
        return d

    def device_or_404(request: web.Request) -> DeviceState:
        return find_device(domain, request)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "sessions": len(hub)})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render_metrics(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    async def openapi(request: web.Request) -> web.Response:
        from blynk_server.http.openapi import add_undocumented, spec

        return web.json_response(add_undocumented(spec(), request.app.router.routes()))

    async def list_templates(request: web.Request) -> web.Response:
        return web.json_response([t.as_dict() for t in provisioning.templates()])

    async def create_template(request: web.Request) -> web.Response:
        body = await _json_body(request)
        streams = body.get("datastreams") or []
        if not isinstance(streams, list):
            raise ApiError("datastreams must be a list of objects or spec strings.")
        datastreams = [datastream_from_json(None, d) for d in streams]
        fields = body.get("metafields") or []
        if not isinstance(fields, list):
            raise ApiError("metafields must be a list of objects or spec strings.")
        declared = [metafield_from_json(None, d, domain.max_meta_size) for d in fields]
        tid = body.get("id")
        tpl = await provisioning.create_template(
            str(body.get("name") or "") or None, datastreams, str(tid) if tid else None, declared
        )
        return web.json_response(tpl.as_dict(), status=201)

    async def show_template(request: web.Request) -> web.Response:
        return web.json_response(provisioning.template(request.match_info["template_id"]).as_dict())

    async def delete_template(request: web.Request) -> web.Response:
        await provisioning.delete_template(request.match_info["template_id"])
        return web.Response(status=204)

    async def put_datastream(request: web.Request) -> web.Response:
        ds = datastream_from_json(request.match_info["pin"], await _json_body(request))
        await provisioning.put_datastream(request.match_info["template_id"], ds)
        return web.json_response(ds.as_dict())

    async def delete_datastream(request: web.Request) -> web.Response:
        pin = parse_pin_name(request.match_info["pin"])
        if pin is None:
            raise ApiError("Datastream not found.", 404)
        await provisioning.delete_datastream(request.match_info["template_id"], pin.key)
        return web.Response(status=204)

    def metafield_id(request: web.Request) -> int:
        try:
            return parse_uint(request.match_info["meta_id"], INT64_MAX)
        except BodyError:
            raise NotFound("Metafield not found.") from None

    async def put_metafield(request: web.Request) -> web.Response:
        mf = metafield_from_json(metafield_id(request), await _json_body(request), domain.max_meta_size)
        await provisioning.put_metafield(request.match_info["template_id"], mf)
        return web.json_response(mf.as_dict())

    async def delete_metafield(request: web.Request) -> web.Response:
        await provisioning.delete_metafield(request.match_info["template_id"], metafield_id(request))
        return web.Response(status=204)

    async def list_devices(request: web.Request) -> web.Response:
        token = request.query.get("token")
        if token is not None:
            dev = domain.device_by_token(token)
            devs = [dev] if dev is not None else []
        else:
            devs = domain.devices(request.query.get("template_id"))
        return web.json_response([device_json(d) for d in devs])

    async def create_device(request: web.Request) -> web.Response:
        body = await _json_body(request)
        token = body.get("token")
        if token is not None and not isinstance(token, str):
            raise ApiError("token must be a string.")
        record = await provisioning.create_device(str(body.get("template_id", "")), str(body.get("name") or ""), token)
        return web.json_response(device_json(domain.device(record.id)), status=201)

    async def import_devices(request: web.Request) -> web.Response:
        rows = (await _json_body(request)).get("devices")
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            raise ApiError("devices must be a non-empty list of objects.")
        if len(rows) > MAX_IMPORT:
            raise ApiError(f"At most {MAX_IMPORT} devices in one import.")
        new = []
        for r in rows:
            token = r.get("token")
            if token is not None and not isinstance(token, str):
                raise ApiError("token must be a string.")
            new.append(NewDevice(str(r.get("template_id", "")), str(r.get("name") or "Device"), token))
        records = await provisioning.import_devices(new)
        return web.json_response([device_json(domain.device(r.id)) for r in records], status=201)

    async def show_device(request: web.Request) -> web.Response:
        return web.json_response(device_json(device_or_404(request)))

    async def delete_device(request: web.Request) -> web.Response:
        await provisioning.delete_device(device_or_404(request).id)
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
            stored = domain.write_pin(dev, pin, raw, deliver=True)
        except ValueError as exc:  # InvalidValue, or json_to_raw's "Number is out of range."
            raise ApiError(str(exc)) from None
        return web.json_response({"pin": pin.key, "value": stored.decode("utf-8", "replace")})

    async def device_events(request: web.Request) -> web.Response:
        dev = device_or_404(request)
        try:
            limit = max(1, min(10_000, parse_uint(request.query.get("limit", "1000"), INT64_MAX)))
        except BodyError:
            raise ApiError("limit must be an integer.") from None
        return web.json_response(await domain.events(dev, limit))

    async def device_properties(request: web.Request) -> web.Response:
        """What ``update/property`` and the device's setProperty set: ``{"V1": {"label": "Temp"}}``."""
        out: dict[str, dict[str, str]] = {}
        for (pin, name), value in sorted(device_or_404(request).properties.items()):
            out.setdefault(pin.upper(), {})[name] = value.decode("utf-8", "replace").replace("\0", ",")
        return web.json_response(out)

    async def device_meta(request: web.Request) -> web.Response:
        """``{name: value}``: every declared field (its value or default, typed) and the values stored
        under undeclared names (free-form, as text)."""
        dev = device_or_404(request)
        out: dict[str, object] = {k: v for k, v in dev.meta.items()}
        for _, mf in sorted(dev.template.metafields.items()):
            out[mf.name] = metafields.typed(mf, domain.meta_value(dev, mf))
        return web.json_response(out)

    async def put_meta(request: web.Request) -> web.Response:
        """Set a field by id or name (free-form by name on a template that declares none)."""
        dev = device_or_404(request)
        value = (await _json_body(request)).get("value")
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ApiError("value must be a string or a number.")
        ref = request.match_info["name"]
        try:
            field = domain.meta_write(dev, ref, value if isinstance(value, str) else str(value), create=True)
        except InvalidValue as exc:  # unknown field, refused value, over a metadata cap
            raise ApiError(str(exc)) from None
        name = field.name if field is not None else ref
        stored = domain.meta_value(dev, field) if field is not None else dev.meta[ref]
        return web.json_response({"name": name, "value": metafields.typed(field, stored)})

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
    r.add_put("/api/templates/{template_id}/metafields/{meta_id}", put_metafield)
    r.add_delete("/api/templates/{template_id}/metafields/{meta_id}", delete_metafield)
    r.add_get("/api/devices", list_devices)
    r.add_post("/api/devices", create_device)
    r.add_post("/api/devices/import", import_devices)
    r.add_get("/api/devices/{device_id}", show_device)
    r.add_delete("/api/devices/{device_id}", delete_device)
    r.add_get("/api/devices/{device_id}/values", device_values)
    r.add_put("/api/devices/{device_id}/values/{pin}", write_value)
    r.add_get("/api/devices/{device_id}/events", device_events)
    r.add_get("/api/devices/{device_id}/properties", device_properties)
    r.add_get("/api/devices/{device_id}/meta", device_meta)
    r.add_put("/api/devices/{device_id}/meta/{name}", put_meta)
    add_admin_routes(app, ota)
    for extend in extensions:
        extend(app)
    return app


__all__ = ["build_admin_app"]
