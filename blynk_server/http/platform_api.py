"""Blynk's Platform HTTPS API (``/api/v1/organization/...``) and its OAuth2 token endpoint.

docs.blynk.io "Platform HTTPS API": a client gets an access token with client credentials
(``POST /oauth2/token?grant_type=client_credentials``, HTTP Basic ``client_id:client_secret``, or the
two as form fields) and sends it as ``Authorization: Bearer <token>``. The routes keep Blynk's paths,
parameter names (``deviceId``, ``dataStreamId``, ``page``, ``size``...), JSON shapes and error bodies
(``{"error": {"message": ...}}``; the token endpoint answers RFC 6749's ``{"error", "error_description"}``).

This server has one organization and no users: ``orgId`` is 1 (another id is "not found"),
``ownerId``/``ownerUserId`` are accepted and ignored (null), template ids are this server's
(``TMPL...``) where Blynk has integers.

Every rule goes through the domain and provisioning (writes, history, events, timeline); this module
maps parameters and answers. Mounted on the admin listener always, on the device port with
``platform_on_device_port``; the admin API key does not open these routes (see ``admin.py``) and a
Platform token does not open admin routes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from blynk_server import metafields
from blynk_server.config import Settings
from blynk_server.device_provisioning import DeviceProvisioning
from blynk_server.domain import DeviceState, EventRejected, InvalidValue, coerce_value
from blynk_server.events import MAX_PAGE as TIMELINE_CAP
from blynk_server.events import EventsService, TimelineQuery
from blynk_server.history import typed_value
from blynk_server.http.common import (
    INT64_MAX,
    MAX_BATCH,
    ApiError,
    json_error,
    json_object,
    json_timestamp,
    json_to_raw,
)
from blynk_server.http.limits import RequestRate, Throttled
from blynk_server.hub import Hub
from blynk_server.model import MAX_TS_MS, Datastream, MetaField, Template
from blynk_server.oauth import Grant, OAuthClients, OAuthError, TokenRefused
from blynk_server.provisioning import Provisioning, ProvisioningError
from protocol.body import BodyError, Pin, parse_uint

log = logging.getLogger(__name__)

PREFIX = "/api/v1/organization/"
PREFIX_V2 = "/api/v2/organization/"
TOKEN_PATH = "/oauth2/token"
ORG_ID = 1  # the one organization of this server
MAX_PAGE_SIZE = 1000  # Blynk: "Page size (max 1000)"
DEFAULT_PAGE_SIZE = 50
MAX_SEARCH = 255  # characters of a search query (Blynk's max)
MAX_MANY = 64  # datastreams in one "update many" body (as the device API's pins per request)
BLYNK_LEVELS = {"INFORMATION": "info", "WARNING": "warning", "CRITICAL": "critical", "CONTENT": "content"}
LEVEL_NAMES = {v: k for k, v in BLYNK_LEVELS.items()}
TYPE_NAMES = {"int": "INT", "double": "DOUBLE", "string": "STRING", "enum": "ENUM", "location": "LOCATION"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Forbidden(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 403)


@dataclass(slots=True)
class PlatformStats:
    """Counters read by the metrics collector (and ``RequestRate``'s ``throttled``)."""

    requests: int = 0
    unauthorized: int = 0
    forbidden: int = 0
    throttled: int = 0


@dataclass(slots=True)
class Platform:
    """What the Platform routes use, and their rate buckets (one set, whichever listener a request
    comes in on)."""

    clients: OAuthClients
    provisioning: Provisioning
    hub: Hub
    events: EventsService
    settings: Settings
    stats: PlatformStats
    device_provisioning: DeviceProvisioning | None = None  # "Get provision token"; None: 404
    per_client: RequestRate = field(init=False)
    token_per_client: RequestRate = field(init=False)
    token_per_peer: RequestRate = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.per_client = RequestRate(s.platform_request_rate, s.platform_request_burst, self.stats)
        self.per_client.message = f"Too many requests: at most {s.platform_request_rate:g} per second per client."
        self.token_per_client = RequestRate(s.platform_token_rate, s.platform_token_burst, self.stats)
        self.token_per_peer = RequestRate(s.platform_token_rate, s.platform_token_burst, self.stats)
        self.token_per_client.message = self.token_per_peer.message = (
            f"Too many token requests: at most {s.platform_token_rate:g} per second per client and per address."
        )


# --- parameters -------------------------------------------------------------------------------------


def _uint(raw: object, name: str, limit: int = INT64_MAX) -> int:
    if isinstance(raw, bool):
        raise ApiError(f"Wrong {name} format.")
    if isinstance(raw, int):
        if 0 <= raw <= limit:
            return raw
        raise ApiError(f"Wrong {name} format.")
    try:
        return parse_uint(str(raw), limit)
    except BodyError:
        raise ApiError(f"Wrong {name} format.") from None


def page_params(q, max_size: int = MAX_PAGE_SIZE, default_size: int = DEFAULT_PAGE_SIZE) -> tuple[int, int]:
    """``page`` (from 0) and ``size`` (1..``max_size``) as Blynk documents them."""
    page = _uint(q.get("page", "0") or "0", "page")
    size = _uint(q.get("size", str(default_size)) or str(default_size), "size")
    if not 1 <= size <= max_size:
        raise ApiError(f"Page size should be from 1 to {max_size}.")
    return page, size


def paged(items: list, page: int, size: int) -> dict:
    """Blynk's page: ``{"content": [...], "totalElements": N}``."""
    start = page * size
    return {"content": items[start : start + size], "totalElements": len(items)}


def check_org(value: object) -> None:
    """Only this server's one organization (1) exists."""
    if value is not None and value != "" and _uint(value, "orgId") != ORG_ID:
        raise ApiError("Organization is not found or you don't have access to it.", 404)


async def json_body(request: web.Request) -> object:
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError("Body must be JSON.") from None


def device_name(value: object) -> str:
    """A device name by the server's one rule (``metafields.check_device_name``: 1..50 printable)."""
    if not isinstance(value, str):
        raise ApiError("name is required.")
    try:
        return metafields.check_device_name(value)
    except ValueError as exc:
        raise ApiError(str(exc)) from None


def _raw(value: object) -> bytes:
    if value is None or isinstance(value, dict):
        raise ApiError("Value doesn't match the Datastream data type.")
    try:
        return json_to_raw(value)
    except ValueError as exc:
        raise ApiError(str(exc)) from None


# --- datastreams ---------------------------------------------------------------------------------------


def ds_pin(ds: Datastream) -> Pin:
    return Pin(ds.pin[0], int(ds.pin[1:]))


# --- the routes ---------------------------------------------------------------------------------------


def add_routes(app: web.Application, platform: Platform) -> None:
    """The token endpoint and the Platform routes, each behind its own bearer check (no middleware, so
    the routes can join any app: the admin listener's and the device port's)."""
    p = platform
    s = p.settings
    domain = p.provisioning.domain
    stats = p.stats
    per_client, token_per_client, token_per_peer = p.per_client, p.token_per_client, p.token_per_peer

    def now() -> float:
        return asyncio.get_running_loop().time()

    def answer_error(exc: ApiError) -> web.Response:
        response = json_error(exc.message, exc.status)
        if isinstance(exc, Throttled):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    def guarded(handler: Callable[[web.Request, Grant], Awaitable[web.StreamResponse]], write: bool) -> Handler:
        async def route(request: web.Request) -> web.StreamResponse:
            stats.requests += 1
            auth = request.headers.get("Authorization", "")
            grant = p.clients.check(auth[7:].strip() if auth[:7].lower() == "bearer " else None)
            if grant is None:
                stats.unauthorized += 1
                response = json_error("Invalid or expired access token.", 401)
                response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
                return response
            try:
                per_client.check(grant.client_id, now())
                if write and not grant.can_write:
                    stats.forbidden += 1
                    raise Forbidden("This access token is read-only (scope read).")
                return await handler(request, grant)
            except ApiError as exc:
                return answer_error(exc)
            except ProvisioningError as exc:
                return json_error(exc.message, exc.status)

        return route

    def device(ref: object) -> DeviceState:
        if ref is None or ref == "":
            raise ApiError("deviceId is required.")
        ident = _uint(ref, "deviceId")
        dev = domain.device(ident)
        if dev is None:
            raise ApiError(f"Device with identifier {ident} is not found or belong to another organization.", 404)
        return dev

    def datastream(dev: DeviceState, ref: object) -> Datastream:
        ident = _uint(ref, "dataStreamId")
        ds = domain.datastream_by_id(dev.template, ident)
        if ds is None:
            raise ApiError(f"Data stream with identifier {ident} is not found!", 404)
        return ds

    def template(ref: str | None) -> Template:
        if not ref:
            raise ApiError("templateId is required.")
        tpl = domain.template(ref)
        if tpl is None:
            raise ApiError("Template is not found.", 404)
        return tpl

    def device_json(dev: DeviceState) -> dict:
        r = dev.record
        info = r.info or {}
        online = p.hub.is_online(r.id)
        return {
            "id": r.id,
            "templateId": r.template_id,
            "orgId": ORG_ID,
            "name": r.name,
            "token": r.token,
            "status": "ONLINE" if online else "OFFLINE",
            "activatedAt": r.created_at,
            "lastReportedAt": r.last_seen,
            "ownerUserId": None,
            "hardwareInfo": {
                "version": info.get("firmware_version"),
                "fwType": info.get("firmware_type"),
                "blynkVersion": info.get("library_version"),
                "boardType": info.get("device"),
                "build": info.get("build"),
                "templateId": info.get("template_id"),
            },
        }

    def value_json(dev: DeviceState, ds: Datastream) -> dict:
        stored = dev.values.get(ds.pin)
        raw = domain.read_pin(dev, ds.pin)
        return {
            "dataStreamId": ds.id,
            "pin": ds.pin,
            "dataStreamLabel": ds.name,
            "dataStreamAlias": ds.alias,
            "value": None if raw is None else typed_value(ds, raw),
            "updatedAt": stored[1] if stored is not None else None,
        }

    def write(dev: DeviceState, ds: Datastream, value: object) -> None:
        try:
            domain.write_pin(dev, ds_pin(ds), _raw(value), deliver=True)
        except InvalidValue as exc:
            raise ApiError(str(exc)) from None

    # --- OAuth2 -------------------------------------------------------------------------------

    async def token(request: web.Request) -> web.Response:
        def refused(error: str, description: str, status: int = 400) -> web.Response:
            return web.json_response({"error": error, "error_description": description}, status=status)

        form = await request.post() if request.content_type == "application/x-www-form-urlencoded" else {}
        client_id, secret = basic_credentials(request.headers.get("Authorization", ""))
        if client_id is None:
            client_id, secret = form.get("client_id"), form.get("client_secret")
        try:
            token_per_peer.check(request.remote or "unknown", now())
            if isinstance(client_id, str) and client_id:
                token_per_client.check(client_id[:128], now())
        except Throttled as exc:
            return answer_error(exc)
        grant_type = request.query.get("grant_type") or form.get("grant_type")
        if not grant_type:
            return refused("invalid_request", "grant_type is required.")
        if grant_type != "client_credentials":
            return refused("unsupported_grant_type", "Only grant_type=client_credentials is supported.")
        if not isinstance(client_id, str) or not isinstance(secret, str) or not client_id:
            return refused("invalid_client", "Client ID is not found or password is wrong.", 401)
        try:
            access, grant = p.clients.issue(client_id, secret)
        except TokenRefused as exc:
            log.info("oauth token refused peer=%s", request.remote)
            return refused(exc.error, exc.description, exc.status)
        return web.json_response(
            {"access_token": access, "token_type": "Bearer", "expires_in": int(s.platform_token_ttl)},
            headers={"Cache-Control": "no-store"},
        )

    # --- devices ------------------------------------------------------------------------------

    async def list_devices(request: web.Request, grant: Grant) -> web.Response:
        q = request.query
        check_org(q.get("orgId"))
        page, size = page_params(q)
        return web.json_response(paged([device_json(d) for d in domain.devices()], page, size))

    async def search_devices(request: web.Request, grant: Grant) -> web.Response:
        q = request.query
        text = q.get("query")
        if text is None or len(text) > MAX_SEARCH:
            raise ApiError(f"query is required, at most {MAX_SEARCH} characters.")
        page, size = page_params(q)
        sort_by = q.get("sortBy") or "id"
        if sort_by not in ("id", "name"):
            raise ApiError("sortBy must be id or name.")
        order = (q.get("sortOrder") or "ASC").upper()
        if order not in ("ASC", "DESC"):
            raise ApiError("sortOrder must be ASC or DESC.")
        needle = text.casefold()
        found = [
            d
            for d in domain.devices()
            if needle in d.record.name.casefold() or text == str(d.id) or (len(text) >= 8 and text == d.token)
        ]
        found.sort(key=(lambda d: d.id) if sort_by == "id" else (lambda d: (d.record.name.casefold(), d.id)))
        if order == "DESC":
            found.reverse()
        return web.json_response(paged([device_json(d) for d in found], page, size))

    async def get_device(request: web.Request, grant: Grant) -> web.Response:
        return web.json_response(device_json(device(request.query.get("deviceId"))))

    async def create_device(request: web.Request, grant: Grant) -> web.Response:
        body = await json_object(request)
        check_org(body.get("orgId"))
        name = device_name(body.get("name"))
        tid = body.get("templateId")
        if not isinstance(tid, str) or domain.template(tid) is None:
            raise ApiError("Template is not found.", 404)
        record = await p.provisioning.create_device(tid, name)
        return web.json_response(device_json(domain.device(record.id)))

    async def edit_device(request: web.Request, grant: Grant) -> web.Response:
        dev = device(request.query.get("deviceId"))
        name = device_name((await json_object(request)).get("name"))
        await p.provisioning.rename_device(dev.id, name)
        return web.json_response(device_json(dev))

    async def delete_device(request: web.Request, grant: Grant) -> web.Response:
        dev = device(request.query.get("deviceId"))
        await p.provisioning.delete_device(dev.id)
        return web.Response(status=204)

    async def provision_token(request: web.Request, grant: Grant) -> web.Response:
        """Blynk's "Get provision token": ``{orgId, ownerId}`` → ``{token, deviceId}``. Blynk learns the
        template from the device's first info; here a token belongs to one template from the start:
        ``templateId`` names it or, when left out, the one template that allows dynamic provisioning.
        ``ownerId`` is accepted and ignored (no users here)."""
        if p.device_provisioning is None:
            raise ApiError("Dynamic provisioning is off on this server.", 404)
        body = await json_object(request)
        check_org(body.get("orgId"))
        tid = body.get("templateId")
        if tid is None:
            allowed = sorted(p.device_provisioning.allowed)
            if len(allowed) != 1:
                raise ApiError("templateId is required: no single template allows dynamic provisioning.")
            tid = allowed[0]
        if not isinstance(tid, str):
            raise ApiError("templateId must be a string.")
        template(tid)
        issued = await p.device_provisioning.issue_provision_token(tid)
        return web.json_response(issued.as_blynk())

    # --- datastream values --------------------------------------------------------------------

    async def get_values(request: web.Request, grant: Grant) -> web.Response:
        q = request.query
        dev = device(q.get("deviceId"))
        wanted = [i for raw in q.getall("dataStreamIds", []) for i in raw.split(",") if i]
        if wanted:
            streams = [datastream(dev, i) for i in dict.fromkeys(wanted[:MAX_MANY])]
        else:
            streams = sorted(dev.template.datastreams.values(), key=lambda ds: ds.id)
        return web.json_response([value_json(dev, ds) for ds in streams])

    async def update_value(request: web.Request, grant: Grant) -> web.Response:
        body = await json_object(request)
        dev = device(body.get("deviceId"))
        ds = datastream(dev, body.get("dataStreamId"))
        if "value" not in body:
            raise ApiError("value is required.")
        write(dev, ds, body["value"])
        return web.Response(status=204)

    async def update_many(request: web.Request, grant: Grant) -> web.Response:
        body = await json_body(request)
        ref = request.query.get("deviceId")
        if isinstance(body, dict):
            ref = body.get("deviceId", ref)
            body = body.get("dataStreams", body.get("values"))
        dev = device(ref)
        if not isinstance(body, list) or not body or not all(isinstance(x, dict) for x in body):
            raise ApiError("Body must be a list of {dataStreamId, value} objects.")
        if len(body) > MAX_MANY:
            raise ApiError(f"At most {MAX_MANY} datastreams in one request.")
        checked = [(datastream(dev, x.get("dataStreamId")), _raw(x.get("value"))) for x in body]
        try:
            for ds, raw in checked:  # every value checked before any is written
                coerce_value(ds, raw)
            for ds, raw in checked:
                domain.write_pin(dev, ds_pin(ds), raw, deliver=True)
        except InvalidValue as exc:
            raise ApiError(str(exc)) from None
        return web.Response(status=204)

    async def update_property(request: web.Request, grant: Grant) -> web.Response:
        body = await json_object(request)
        dev = device(body.get("deviceId"))
        ds = datastream(dev, body.get("dataStreamId"))
        name, value = body.get("property"), body.get("value")
        if not isinstance(name, str) or not name:
            raise ApiError("property is required.")
        values = value if isinstance(value, list) else [value]
        try:
            domain.set_property(dev, [ds_pin(ds)], name, [_raw(v) for v in values])
        except InvalidValue as exc:  # the domain's caps on property names, sizes and counts
            raise ApiError(str(exc)) from None
        return web.Response(status=204)

    async def import_batch(request: web.Request, grant: Grant) -> web.Response:
        body = await json_object(request)
        dev = device(body.get("deviceId"))
        ds = datastream(dev, body.get("dataStreamId"))
        values = body.get("values")
        if not isinstance(values, list) or not values or not all(isinstance(v, dict) for v in values):
            raise ApiError("values must be a non-empty list of {value, ts} objects.")
        if len(values) > MAX_BATCH:
            raise ApiError(f"Too much data in batch. Maximum batch size is {MAX_BATCH} points.")
        points = [(json_timestamp(v.get("ts")), _raw(v.get("value"))) for v in values]
        try:
            domain.write_history(dev, ds_pin(ds), points)
        except InvalidValue as exc:
            raise ApiError(str(exc)) from None
        return web.Response(status=204)

    async def history(request: web.Request, grant: Grant) -> web.Response:
        q = request.query
        dev = device(q.get("deviceId"))
        if q.get("dataStreamId"):
            ds = datastream(dev, q["dataStreamId"])
        else:
            pin = q.get("pin", "").lower()
            ds = dev.template.datastreams.get(pin)
            if ds is None:
                raise ApiError(f"Data stream with pin {q.get('pin', '')[:8]!r} is not found!", 404)
        page, size = page_params(q)
        since = _uint(q.get("from") or "0", "from", MAX_TS_MS)
        until = _uint(q["to"], "to", MAX_TS_MS) if q.get("to") else None
        cap = max(1, s.data_get_max_points)
        if (page + 1) * size > cap:
            raise ApiError(f"At most the first {cap} points of a period can be paged; narrow from/to.")
        store = domain.store
        points = await store.run(store.history, dev.id, ds.pin, since, until, cap)
        rows = [{"createdAt": ts, "value": typed_value(ds, v)} for ts, v in points[page * size : (page + 1) * size]]
        return web.json_response({"content": rows, "totalElements": len(points)})

    # --- metadata -------------------------------------------------------------------------------

    def metafield_json(mf: MetaField) -> dict:
        return {
            "id": mf.id,
            "name": mf.name,
            "type": metafields.BLYNK_TYPES.get(mf.type, mf.type),
            "defaultValue": None if mf.default is None else metafields.typed(mf, mf.default),
            "options": list(mf.options),
            "min": mf.min,
            "max": mf.max,
        }

    async def device_metadata(request: web.Request, grant: Grant) -> web.Response:
        dev = device(request.query.get("deviceId"))
        out = [
            {
                "id": mf.id,
                "name": mf.name,
                "type": metafields.BLYNK_TYPES.get(mf.type, mf.type),
                "value": metafields.typed(mf, domain.meta_value(dev, mf)),
            }
            for _, mf in sorted(dev.template.metafields.items())
        ]
        return web.json_response(out)

    async def update_metadata(request: web.Request, grant: Grant) -> web.Response:
        body = await json_object(request)
        dev = device(body.get("deviceId"))
        ref, value = body.get("metaFieldId"), body.get("value")
        if isinstance(ref, bool) or not isinstance(ref, int | str) or str(ref) == "":
            raise ApiError("metaFieldId is required.")
        if value is None or isinstance(value, dict | list):
            raise ApiError("value must be a string or a number.")
        field = domain.meta_field(dev.template, str(ref))
        if field is None:
            raise ApiError(f"Meta field with identifier {str(ref)[:64]} is not found!", 404)
        try:
            domain.meta_set(dev, field, value if isinstance(value, str) else json_to_raw(value).decode())
        except ValueError as exc:  # the field's type, a read-only field, the metadata caps
            raise ApiError(str(exc)) from None
        return web.Response(status=204)

    async def template_metafields(request: web.Request, grant: Grant) -> web.Response:
        tpl = template(request.query.get("templateId"))
        return web.json_response([metafield_json(mf) for _, mf in sorted(tpl.metafields.items())])

    # --- events and timeline ------------------------------------------------------------------

    async def timeline(request: web.Request, grant: Grant) -> web.Response:
        q = request.query
        dev = device(q.get("deviceId"))
        page, size = page_params(q, default_size=20)
        if (page + 1) * size > TIMELINE_CAP:
            raise ApiError(f"At most the newest {TIMELINE_CAP} events can be paged; narrow from/to.")
        kind = q.get("eventType")
        levels: tuple[str, ...] = ()
        codes: tuple[str, ...] = ()
        if kind in ("ONLINE", "OFFLINE"):
            codes = (kind.lower(),)
        elif kind:
            if kind not in BLYNK_LEVELS:
                raise ApiError("eventType must be one of ONLINE, OFFLINE, " + ", ".join(BLYNK_LEVELS) + ".")
            levels = (BLYNK_LEVELS[kind],)
        since = _uint(q.get("from") or "0", "from", MAX_TS_MS)
        until = _uint(q["to"], "to", MAX_TS_MS) if q.get("to") else None
        found = await p.events.timeline(dev, TimelineQuery(since, until, levels, codes, TIMELINE_CAP))
        rows = found["events"]
        content = [
            {
                "id": e["id"],
                "eventCode": e["code"],
                "eventName": e["name"],
                "orgId": ORG_ID,
                "deviceId": dev.id,
                "eventType": _event_type(e),
                "description": e["description"],
                "ts": e["ts"],
                "isResolved": e["resolved_at"] is not None,
                "resolvedAt": e["resolved_at"],
                "resolvedComment": None,
            }
            for e in rows[page * size : (page + 1) * size]
        ]
        return web.json_response({"content": content, "totalElements": len(rows)})

    async def trigger_event(request: web.Request, grant: Grant) -> web.Response:
        body = await json_object(request)
        dev = device(body.get("deviceId"))
        code = body.get("eventCode")
        description = body.get("eventDescription")
        if not isinstance(code, str) or not code:
            raise ApiError("eventCode is required.")
        if description is not None and not isinstance(description, str):
            raise ApiError("eventDescription must be a string.")
        if len(code) + len(description or "") > 1024:
            raise ApiError("The event code and description together must not exceed 1024 symbols.")
        try:
            domain.log_event(dev, code, description)
        except EventRejected as exc:
            raise ApiError(str(exc)) from None
        return web.Response(status=204)

    # --- templates ----------------------------------------------------------------------------

    def template_json(tpl: Template) -> dict:
        return {"id": tpl.id, "templateIds": [tpl.id], "parentId": None, "orgId": ORG_ID, "name": tpl.name}

    async def list_templates(request: web.Request, grant: Grant) -> web.Response:
        q = request.query
        check_org(q.get("orgId"))
        page, size = page_params(q)
        return web.json_response(paged([template_json(t) for t in domain.templates()], page, size))

    async def get_template(request: web.Request, grant: Grant) -> web.Response:
        return web.json_response(template_json(template(request.query.get("templateId"))))

    async def template_datastreams(request: web.Request, grant: Grant) -> web.Response:
        tpl = template(request.query.get("templateId"))
        out = []
        for ds in sorted(tpl.datastreams.values(), key=lambda ds: ds.id):
            default = None if ds.default is None else typed_value(ds, ds.default.encode())
            out.append(
                {
                    "id": ds.id,
                    "label": ds.name,
                    "alias": ds.alias,
                    "type": TYPE_NAMES.get(ds.type, ds.type.upper()),
                    "defaultValue": default,
                    "pin": int(ds.pin[1:]),
                    "pinType": {"v": "VIRTUAL", "d": "DIGITAL", "a": "ANALOG"}[ds.pin[0]],
                    "min": ds.min,
                    "max": ds.max,
                    "isRaw": ds.history,
                    "isHistory": ds.history,
                    "isSync": ds.sync,
                }
            )
        return web.json_response(out)

    async def template_events(request: web.Request, grant: Grant) -> web.Response:
        tpl = template(request.query.get("templateId"))
        defs = p.provisioning.event_defs(tpl.id)
        return web.json_response(
            [
                {"id": i, "name": d.name, "eventCode": d.code, "type": _def_type(d.code, d.level)}
                for i, d in enumerate(defs, 1)
            ]
        )

    routes: list[tuple[str, str, Callable, bool]] = [
        ("GET", PREFIX + "devices", list_devices, False),
        ("GET", PREFIX + "search/devices", search_devices, False),
        ("GET", PREFIX + "device", get_device, False),
        ("POST", PREFIX + "device/create", create_device, True),
        ("PUT", PREFIX + "device", edit_device, True),
        ("DELETE", PREFIX + "device", delete_device, True),
        ("POST", PREFIX + "device/provision/token", provision_token, True),
        ("GET", PREFIX + "device/metadata", device_metadata, False),
        ("POST", PREFIX + "device/metadata", update_metadata, True),
        ("GET", PREFIX_V2 + "device/datastreams", get_values, False),
        ("POST", PREFIX + "device/datastream", update_value, True),
        ("POST", PREFIX + "device/datastreams", update_many, True),
        ("POST", PREFIX + "device/import/batch", import_batch, True),
        ("POST", PREFIX + "device/datastream/property", update_property, True),
        ("GET", PREFIX + "device/datastream/history", history, False),
        ("GET", PREFIX + "device/timeline", timeline, False),
        ("POST", PREFIX + "device/trigger-event", trigger_event, True),
        ("GET", PREFIX + "templates", list_templates, False),
        ("GET", PREFIX + "template", get_template, False),
        ("GET", PREFIX + "template/datastreams", template_datastreams, False),
        ("GET", PREFIX + "template/events", template_events, False),
        ("GET", PREFIX + "template/metafields", template_metafields, False),
    ]
    app.router.add_post(TOKEN_PATH, token)
    for method, path, handler, writes in routes:
        app.router.add_route(method, path, guarded(handler, writes))


def _event_type(row: dict) -> str:
    """Blynk's event type of a timeline row: ONLINE/OFFLINE for presence, else its level's name."""
    if row["code"] in ("online", "offline"):
        return row["code"].upper()
    return LEVEL_NAMES.get(row.get("level") or "info", "INFORMATION")


def _def_type(code: str, level: str) -> str:
    if code in ("online", "offline"):
        return code.upper()
    return LEVEL_NAMES.get(level, "INFORMATION")


def basic_credentials(header: str) -> tuple[str | None, str | None]:
    """``(client_id, secret)`` of an HTTP Basic ``Authorization`` header (RFC 6749 §2.3.1: each part
    form-encoded), or ``(None, None)``."""
    if header[:6].lower() != "basic ":
        return None, None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        return None, None
    return unquote(client_id), unquote(secret)


# --- admin API: the clients -------------------------------------------------------------------------


def add_admin_routes(app: web.Application, clients: OAuthClients) -> None:
    """``/api/oauth-clients`` behind the admin API key: list, create (the secret is in this answer
    only), delete (its tokens stop working at once)."""

    def failed(exc: OAuthError) -> web.Response:
        return json_error(exc.message, exc.status)

    async def list_clients(request: web.Request) -> web.Response:
        return web.json_response([c.as_dict() for c in clients.list()])

    async def create_client(request: web.Request) -> web.Response:
        body = await json_object(request)
        try:
            client, secret = await clients.create(body.get("name"), body.get("scope"))
        except OAuthError as exc:
            return failed(exc)
        return web.json_response(client.as_dict() | {"client_secret": secret}, status=201)

    async def delete_client(request: web.Request) -> web.Response:
        try:
            await clients.delete(request.match_info["client_id"])
        except OAuthError as exc:
            return failed(exc)
        return web.Response(status=204)

    app.router.add_get("/api/oauth-clients", list_clients)
    app.router.add_post("/api/oauth-clients", create_client)
    app.router.add_delete("/api/oauth-clients/{client_id}", delete_client)


def platform_metrics(platform: Platform) -> Iterator[Metric]:
    """The Platform API's counters, for ``/metrics``."""
    s, c = platform.stats, platform.clients
    yield CounterMetricFamily("blynk_platform_tokens_issued", "OAuth2 access tokens issued", value=c.issued)
    yield CounterMetricFamily(
        "blynk_platform_token_refusals", "Token requests refused for bad client credentials", value=c.refused
    )
    yield GaugeMetricFamily(
        "blynk_platform_tokens_live", "Access tokens held (expired ones not yet dropped)", value=c.live_tokens
    )
    yield CounterMetricFamily(
        "blynk_platform_requests", "Platform API requests (token endpoint excluded)", value=s.requests
    )
    yield CounterMetricFamily(
        "blynk_platform_unauthorized", "Platform API requests without a valid access token", value=s.unauthorized
    )
    yield CounterMetricFamily("blynk_platform_forbidden", "Writes refused to read-scope tokens", value=s.forbidden)
    yield CounterMetricFamily(
        "blynk_platform_throttled", "Platform API and token requests over their rate (429)", value=s.throttled
    )


def is_platform_path(path: str) -> bool:
    """Routes with their own (bearer) authentication, which the admin API key does not open."""
    return path == TOKEN_PATH or path.startswith(PREFIX) or path.startswith(PREFIX_V2)


__all__ = ["Platform", "PlatformStats", "add_admin_routes", "add_routes", "is_platform_path", "platform_metrics"]
