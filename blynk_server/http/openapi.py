"""OpenAPI 3 description of the admin API, served at ``/api/openapi.json`` (no key needed).

Tests iterate its paths to check that every keyed route refuses a request without the key, so a new
admin route belongs here too.
"""

from __future__ import annotations

import re
from typing import Any

from blynk_server import metafields

_PARAM = re.compile(r"\{([^}]+)\}")

KEYED = [{"bearer": []}, {"apiKey": []}]
OPEN: list = []

_error = {"$ref": "#/components/responses/Error"}
_unauth = {"$ref": "#/components/responses/Unauthorized"}


def _op(
    summary: str,
    ok: dict | None = None,
    *,
    body: str | None = None,
    public: bool = False,
    params: list | None = None,
    errors: tuple[str, ...] = ("400", "404"),
) -> dict:
    op: dict[str, Any] = {"summary": summary, "responses": {}}
    op["responses"].update(ok or {"200": {"description": "OK"}})
    for code in errors:
        op["responses"][code] = _error
    if public:
        op["security"] = OPEN
    else:
        op["responses"]["401"] = _unauth
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"$ref": body}}}}
    if params:
        op["parameters"] = params
    return op


def _json(schema: dict, code: str = "200", description: str = "OK") -> dict:
    return {code: {"description": description, "content": {"application/json": {"schema": schema}}}}


def _path(name: str, description: str = "") -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


def _query(name: str, kind: str, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": {"type": kind}, "description": description}


TEMPLATE = {"$ref": "#/components/schemas/Template"}
EVENT_DEF = {"$ref": "#/components/schemas/EventDef"}
EVENT_SETTINGS = {"$ref": "#/components/schemas/EventSettings"}
DEVICE = {"$ref": "#/components/schemas/Device"}
DATASTREAM = {"$ref": "#/components/schemas/Datastream"}
METAFIELD = {"$ref": "#/components/schemas/MetaField"}
AUTOMATION = {"$ref": "#/components/schemas/Automation"}
WEBHOOK = {"$ref": "#/components/schemas/Webhook"}


def add_undocumented(doc: dict, routes) -> dict:
    """Routes other modules mounted (OTA) get a minimal entry, so the document lists every keyed route."""
    paths = doc["paths"]
    for route in routes:
        if route.method in ("HEAD", "OPTIONS", "*") or route.resource is None:
            continue
        path = route.resource.canonical
        entry = paths.setdefault(path, {})
        method = route.method.lower()
        if method not in entry:
            params = [_path(n.split(":")[0]) for n in _PARAM.findall(path)]
            entry[method] = _op(f"{route.method} {path} (added by another module)", params=params or None)
    return doc


def spec() -> dict:
    from blynk_server.http import openapi_platform

    doc = _admin_spec()
    doc["components"]["securitySchemes"].update(openapi_platform.SECURITY_SCHEMES)
    doc["paths"].update(openapi_platform.paths())
    return doc


def _admin_spec() -> dict:
    tid = _path("template_id")
    did = _path("device_id", "numeric device id (decimal digits, at most 2^63-1; anything else is 404)")
    pin = _path("pin", "V1, d3, a0")
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "blynk-server admin API",
            "version": "1",
            "description": (
                "Provisioning and inspection on the admin listener (127.0.0.1 by default). Every path needs "
                "the API key (`Authorization: Bearer <key>` or `X-API-Key: <key>`; the key is printed at first "
                "start and kept in `<data-dir>/admin-api-key`), except `/metrics`, `/api/health` and this "
                "document. The device HTTP APIs (`/external/api/...`, legacy `/{token}/...`) live on the device "
                "port and are authenticated by device token; there `dataStreamId=N` is the datastream whose "
                "`id` is N and `metaFieldId` a metafield's id or exact name. The Platform API (`/oauth2/token`, "
                "`/api/v1/organization/...`) answers OAuth2 access tokens only (security `platformBearer`)."
            ),
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "responses": {
                "Error": {
                    "description": "Error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
                "Unauthorized": {
                    "description": "Missing or invalid API key",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "object", "properties": {"message": {"type": "string"}}}},
                },
                "Datastream": {
                    "type": "object",
                    "properties": {
                        "id": {
                            "type": "integer",
                            "format": "int32",
                            "minimum": 0,
                            "description": "Blynk's dataStreamId, unique in the template; default: N of VN, "
                            "else the lowest free id from 256; kept when the datastream is replaced without one",
                        },
                        "pin": {"type": "string", "example": "V1"},
                        "name": {"type": "string"},
                        "alias": {"type": "string", "maxLength": 100, "description": "unique; default: the name"},
                        "type": {"type": "string", "enum": ["int", "double", "string", "enum", "location"]},
                        "min": {"type": "number", "nullable": True, "description": "finite"},
                        "max": {"type": "number", "nullable": True, "description": "finite"},
                        "default": {"type": "string", "nullable": True},
                        "enum_values": {"type": "array", "items": {"type": "integer", "format": "int64"}},
                        "history": {"type": "boolean"},
                        "sync": {"type": "boolean"},
                    },
                },
                "Template": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "created_at": {"type": "integer"},
                        "datastreams": {"type": "array", "items": DATASTREAM},
                        "metafields": {"type": "array", "items": METAFIELD},
                    },
                },
                "MetaField": {
                    "type": "object",
                    "description": "Typed metadata every device of the template has (Blynk's metafield). Also "
                    "accepted: a spec string `id=1,name=Serial,type=text,default=x,options=a|b,min=0,max=9`.",
                    "required": ["name"],
                    "properties": {
                        "id": {"type": "integer", "format": "int32", "minimum": 0, "description": "from the path"},
                        "name": {
                            "type": "string",
                            "description": "unique, case-sensitive, at most max_meta_size bytes; cannot change",
                        },
                        "type": {"type": "string", "enum": list(metafields.TYPES), "default": "text"},
                        "default": {"type": "string", "nullable": True, "description": "checked by the type"},
                        "options": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "list: one or more; switch: exactly two; others: none",
                        },
                        "min": {"type": "number", "nullable": True, "description": "number only"},
                        "max": {"type": "number", "nullable": True, "description": "number only"},
                    },
                },
                "NewDevice": {
                    "type": "object",
                    "required": ["template_id"],
                    "properties": {
                        "template_id": {"type": "string"},
                        "name": {"type": "string"},
                        "token": {
                            "type": "string",
                            "description": "optional; generated when absent; 8..64 of A-Z a-z 0-9 - _",
                        },
                    },
                },
                "DeviceImport": {
                    "type": "object",
                    "required": ["devices"],
                    "properties": {"devices": {"type": "array", "items": {"$ref": "#/components/schemas/NewDevice"}}},
                },
                "Device": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "token": {"type": "string"},
                        "name": {"type": "string"},
                        "template_id": {"type": "string"},
                        "created_at": {"type": "integer"},
                        "last_seen": {"type": "integer", "nullable": True},
                        "online": {"type": "boolean"},
                        "info": {"type": "object", "nullable": True},
                        "timezone": {"type": "string", "nullable": True},
                    },
                },
                "Value": {
                    "type": "object",
                    "properties": {
                        "value": {
                            "oneOf": [
                                {"type": "string"},
                                {"type": "number"},
                                {"type": "array", "items": {"type": "string"}},
                            ]
                        }
                    },
                },
                "MetaValue": {
                    "type": "object",
                    "properties": {"value": {"oneOf": [{"type": "string"}, {"type": "number"}]}},
                },
                "NewAutomation": {
                    "type": "object",
                    "required": ["name", "do"],
                    "properties": {
                        "name": {"type": "string", "description": "1..64 of letters, digits, space, _ - ."},
                        "when": {
                            "type": "string",
                            "description": "TEMPLATE:V1 > 30 (> < >= <= == != changed; DEVICE:… for one device,"
                            " an id or a token), event:TEMPLATE:CODE, online:TEMPLATE, offline:TEMPLATE",
                        },
                        "cron": {"type": "string", "description": "instead of when: 0 7 * * * or daily HH:MM"},
                        "tz": {"type": "string", "description": "with cron: an IANA time zone (default UTC)"},
                        "do": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "write:DEVICE:V2=1, event:DEVICE:CODE, email:ADDRESS, webhook:NAME",
                        },
                    },
                },
                "Automation": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "when": {"type": "string", "description": "canonical: devices by id (device:42:V1 > 30)"},
                        "cron": {"type": "string"},
                        "tz": {"type": "string"},
                        "do": {"type": "array", "items": {"type": "string"}},
                        "created_at": {"type": "integer"},
                        "next_run": {"type": "string", "description": "schedules: ISO 8601, UTC"},
                        "runs": {"type": "integer", "description": "runs since the server started"},
                        "skipped": {"type": "integer", "description": "runs skipped (rate) since it started"},
                    },
                },
                "AutomationRun": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "ts": {"type": "integer"},
                        "time": {"type": "string"},
                        "trigger": {"type": "object", "description": "kind, device_id, device, pin, value, code"},
                        "outcomes": {
                            "type": "array",
                            "items": {"type": "object", "description": "action, ok, error?"},
                        },
                    },
                },
                "NewWebhook": {
                    "type": "object",
                    "required": ["name", "url", "on"],
                    "properties": {
                        "name": {"type": "string", "description": "1..80 letters, digits, spaces, - _ . '"},
                        "url": {"type": "string", "description": "http:// or https://; placeholders in path and query"},
                        "on": {
                            "type": "string",
                            "example": "datastream:TMPL1:V1",
                            "description": "datastream:TEMPLATE:PIN, event:TEMPLATE:CODE, online:TEMPLATE, offline:TEMPLATE",
                        },
                        "method": {"type": "string", "enum": ["GET", "POST", "PUT", "PATCH", "DELETE"]},
                        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                        "body": {"type": "string", "description": "template: {device_name}, {datastream_value}..."},
                        "content_type": {"type": "string", "description": "json, form, text or a media type"},
                        "every_s": {"type": "number", "description": "minimum seconds between calls per device"},
                        "enabled": {"type": "boolean"},
                    },
                },
                "Webhook": {
                    "allOf": [
                        {"$ref": "#/components/schemas/NewWebhook"},
                        {
                            "type": "object",
                            "properties": {
                                "failures": {"type": "integer", "description": "consecutive failed calls"},
                                "disabled_reason": {"type": "string", "nullable": True},
                                "created_at": {"type": "integer"},
                                "stats": {"type": "object"},
                            },
                        },
                    ]
                },
                "EventDef": {
                    "type": "object",
                    "required": ["code"],
                    "properties": {
                        "code": {"type": "string", "description": "as devices send it: letters, digits, _ - . space"},
                        "name": {"type": "string", "description": "the code when absent"},
                        "level": {"type": "string", "enum": ["info", "warning", "critical", "content"]},
                        "description": {"type": "string"},
                        "every_s": {"type": "number", "description": "at most one per device per N s (1 s floor)"},
                        "emails": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "EventSettings": {
                    "type": "object",
                    "properties": {"offline_ignore_s": {"type": "number", "description": "0..604800"}},
                },
                "TemplateProvisioning": {
                    "type": "object",
                    "properties": {
                        "template_id": {"type": "string"},
                        "allowed": {"type": "boolean", "description": "dynamic provisioning allowed (default false)"},
                        "pending": {"type": "integer", "description": "tokens issued, not used, not expired"},
                    },
                },
                "NewProvisionToken": {
                    "type": "object",
                    "required": ["template_id"],
                    "properties": {
                        "template_id": {"type": "string", "description": "templateId is accepted too"},
                        "name": {"type": "string", "description": "device name (default: the template's name)"},
                    },
                },
                "ProvisionToken": {
                    "type": "object",
                    "description": "token and deviceId are Blynk's Platform API answer; the token opens the "
                    "device's first login before expires_at",
                    "properties": {
                        "token": {"type": "string", "description": "the device's auth token (32 characters)"},
                        "deviceId": {"type": "integer"},
                        "template_id": {"type": "string"},
                        "kind": {"type": "string", "enum": ["new", "reprovision"]},
                        "expires_at": {"type": "integer", "description": "ms"},
                    },
                },
                "PendingToken": {
                    "type": "object",
                    "properties": {
                        "device_id": {"type": "integer"},
                        "template_id": {"type": "string"},
                        "kind": {"type": "string", "enum": ["new", "reprovision"]},
                        "issued_at": {"type": "integer"},
                        "expires_at": {"type": "integer"},
                        "expired": {"type": "boolean", "description": "until the sweep deletes its device"},
                    },
                },
                "TimelinePage": {
                    "type": "object",
                    "properties": {
                        "events": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "id": {"type": "integer", "nullable": True, "description": "null: not flushed"},
                                    "code": {"type": "string"},
                                    "name": {"type": "string"},
                                    "level": {"type": "string"},
                                    "description": {"type": "string", "nullable": True},
                                    "ts": {"type": "integer"},
                                    "resolved_at": {"type": "integer", "nullable": True},
                                },
                            },
                        },
                        "next_cursor": {"type": "string", "nullable": True},
                    },
                },
            },
        },
        "security": KEYED,
        "paths": {
            "/api/webhooks": {
                "get": _op(
                    "List webhooks with their state and counters", _json({"type": "array", "items": WEBHOOK}), errors=()
                ),
                "post": _op(
                    "Create a webhook",
                    _json(WEBHOOK, "201", "Created"),
                    body="#/components/schemas/NewWebhook",
                    errors=("400", "404", "409"),
                ),
            },
            "/api/webhooks/{name}": {
                "get": _op("Show a webhook", _json(WEBHOOK), params=[_path("name")], errors=("404",)),
                "delete": _op(
                    "Delete a webhook (its queued calls are dropped)",
                    {"204": {"description": "Deleted"}},
                    params=[_path("name")],
                    errors=("404",),
                ),
            },
            "/api/webhooks/{name}/enable": {
                "post": _op(
                    "Enable a webhook again (failure count back to 0)",
                    _json(WEBHOOK),
                    params=[_path("name")],
                    errors=("404",),
                ),
            },
            "/api/health": {"get": _op("Liveness and session count", public=True, errors=())},
            "/metrics": {
                "get": _op(
                    "Prometheus metrics (text exposition format)",
                    public=True,
                    errors=(),
                    ok={"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}},
                )
            },
            "/api/openapi.json": {"get": _op("This document", public=True, errors=())},
            "/api/templates": {
                "get": _op("List templates", _json({"type": "array", "items": TEMPLATE}), errors=()),
                "post": _op(
                    "Create a template (id generated when absent)",
                    _json(TEMPLATE, "201", "Created"),
                    body="#/components/schemas/Template",
                    errors=("400", "409"),
                ),
            },
            "/api/templates/{template_id}": {
                "get": _op("Show a template", _json(TEMPLATE), params=[tid]),
                "delete": _op(
                    "Delete a template without devices",
                    {"204": {"description": "Deleted"}},
                    params=[tid],
                    errors=("404", "409"),
                ),
            },
            "/api/templates/{template_id}/datastreams/{pin}": {
                "put": _op(
                    "Create or replace a datastream",
                    _json(DATASTREAM),
                    body="#/components/schemas/Datastream",
                    params=[tid, pin],
                ),
                "delete": _op("Delete a datastream", {"204": {"description": "Deleted"}}, params=[tid, pin]),
            },
            "/api/templates/{template_id}/metafields/{meta_id}": {
                "put": _op(
                    "Declare or replace a metafield (a declared name cannot change: 409)",
                    _json(METAFIELD),
                    body="#/components/schemas/MetaField",
                    params=[tid, _path("meta_id", "1")],
                    errors=("400", "404", "409"),
                ),
                "delete": _op(
                    "Delete a metafield declaration (devices' values under its name stay stored)",
                    {"204": {"description": "Deleted"}},
                    params=[tid, _path("meta_id", "1")],
                ),
            },
            "/api/devices": {
                "get": _op(
                    "List devices with online state and last_seen",
                    _json({"type": "array", "items": DEVICE}),
                    params=[
                        {"name": "template_id", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "token",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "only the device with this token (an empty list when none has it)",
                        },
                    ],
                    errors=(),
                ),
                "post": _op(
                    "Create a device (token generated when absent)",
                    _json(DEVICE, "201", "Created"),
                    body="#/components/schemas/NewDevice",
                    errors=("400", "404", "409"),
                ),
            },
            "/api/devices/import": {
                "post": _op(
                    "Create many devices at once, all or none: {devices: [{template_id, name, token?}]}",
                    _json({"type": "array", "items": DEVICE}, "201", "Created"),
                    body="#/components/schemas/DeviceImport",
                    errors=("400", "404", "409"),
                ),
            },
            "/api/devices/{device_id}": {
                "get": _op("Show a device", _json(DEVICE), params=[did]),
                "delete": _op(
                    "Delete a device and close its live session", {"204": {"description": "Deleted"}}, params=[did]
                ),
            },
            "/api/devices/{device_id}/values": {
                "get": _op("Latest pin values: {pin: {value, ts}}", _json({"type": "object"}), params=[did]),
            },
            "/api/devices/{device_id}/values/{pin}": {
                "put": _op(
                    "Write a pin value (stored, and sent to the device when online)",
                    _json({"type": "object"}),
                    body="#/components/schemas/Value",
                    params=[did, pin],
                ),
            },
            "/api/devices/{device_id}/events": {
                "get": _op(
                    "Event timeline, newest first",
                    _json({"type": "array", "items": {"type": "object"}}),
                    params=[
                        did,
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000},
                            "description": "decimal digits; larger values are taken as 10000",
                        },
                    ],
                ),
            },
            "/api/templates/{template_id}/events": {
                "get": _op(
                    "The template's declared events", _json({"type": "array", "items": EVENT_DEF}), params=[tid]
                ),
                "post": _op(
                    "Declare an event (devices may log its code at once)",
                    _json(EVENT_DEF, "201", "Created"),
                    body="#/components/schemas/EventDef",
                    params=[tid],
                    errors=("400", "404", "409"),
                ),
            },
            "/api/templates/{template_id}/events/{code}": {
                "put": _op(
                    "Declare or redeclare an event",
                    _json(EVENT_DEF),
                    body="#/components/schemas/EventDef",
                    params=[tid, _path("code")],
                ),
                "delete": _op("Delete an event", {"204": {"description": "Deleted"}}, params=[tid, _path("code")]),
            },
            "/api/templates/{template_id}/event-settings": {
                "get": _op("The template's offline-ignore period", _json(EVENT_SETTINGS), params=[tid]),
                "put": _op(
                    "Set the offline-ignore period",
                    _json(EVENT_SETTINGS),
                    body="#/components/schemas/EventSettings",
                    params=[tid],
                ),
            },
            "/api/templates/{template_id}/provisioning": {
                "get": _op(
                    "Whether the template allows dynamic provisioning",
                    _json({"$ref": "#/components/schemas/TemplateProvisioning"}),
                    params=[tid],
                ),
                "put": _op(
                    'Allow or stop dynamic provisioning: {"allowed": true}',
                    _json({"$ref": "#/components/schemas/TemplateProvisioning"}),
                    body="#/components/schemas/TemplateProvisioning",
                    params=[tid],
                ),
            },
            "/api/provision/token": {
                "post": _op(
                    "Issue a provision token: {template_id, name?} creates a device waiting for its first login"
                    " (403 not allowed on the template, 429 over the pending bound or the rate)",
                    _json({"$ref": "#/components/schemas/ProvisionToken"}, "201", "Created"),
                    body="#/components/schemas/NewProvisionToken",
                    errors=("400", "403", "404", "429"),
                ),
            },
            "/api/provision/pending": {
                "get": _op(
                    "Provision tokens not used yet (never the token), oldest first",
                    _json({"type": "array", "items": {"$ref": "#/components/schemas/PendingToken"}}),
                    params=[_query("template_id", "string", "only this template's")],
                ),
            },
            "/api/devices/{device_id}/provision/token": {
                "post": _op(
                    "Re-provision: a new token for the device, keeping its id and data; the old token is refused",
                    _json({"$ref": "#/components/schemas/ProvisionToken"}, "201", "Created"),
                    params=[did],
                    errors=("400", "403", "404", "429"),
                ),
            },
            "/api/devices/{device_id}/claim": {
                "post": _op(
                    "Claim an activated device: {owner?, name?} records its owner and/or renames it (1..50 chars)",
                    _json({"type": "object"}),
                    params=[did],
                ),
            },
            "/api/devices/{device_id}/timeline": {
                "get": _op(
                    "The device's timeline, newest first, one page (unflushed events included)",
                    _json({"$ref": "#/components/schemas/TimelinePage"}),
                    params=[
                        did,
                        _query("since", "integer", "ms, inclusive"),
                        _query("until", "integer", "ms, inclusive"),
                        _query("level", "string", "info, warning, critical, content; comma-separated"),
                        _query("code", "string", "comma-separated"),
                        _query("limit", "integer", "1..1000, default 100"),
                        _query("cursor", "string", "next_cursor of the previous page"),
                    ],
                ),
            },
            "/api/devices/{device_id}/properties": {
                "get": _op(
                    "Widget properties set by update/property or the device: {PIN: {name: value}}",
                    _json({"type": "object"}),
                    params=[did],
                ),
            },
            "/api/devices/{device_id}/meta": {
                "get": _op(
                    "Metadata: every declared field by name (its value or default, typed) and the values stored "
                    "under undeclared names (text)",
                    _json({"type": "object"}),
                    params=[did],
                ),
            },
            "/api/automations": {
                "get": _op("List automations", _json({"type": "array", "items": AUTOMATION}), errors=()),
                "post": _op(
                    "Create an automation (every device, template, pin, value, cron and time zone checked)",
                    _json(AUTOMATION, "201", "Created"),
                    body="#/components/schemas/NewAutomation",
                    errors=("400", "404", "409"),
                ),
            },
            "/api/automations/{name}": {
                "get": _op("Show an automation", _json(AUTOMATION), params=[_path("name")], errors=("404",)),
                "delete": _op(
                    "Delete an automation and its runs",
                    {"204": {"description": "Deleted"}},
                    params=[_path("name")],
                    errors=("404",),
                ),
            },
            "/api/automations/{name}/runs": {
                "get": _op(
                    "Recorded runs, newest first (the last 100 are kept)",
                    _json({"type": "array", "items": {"$ref": "#/components/schemas/AutomationRun"}}),
                    params=[
                        _path("name"),
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    ],
                ),
            },
            "/api/devices/{device_id}/meta/{name}": {
                "put": _op(
                    "Set a metadata field by id or name, checked by its type (free-form text by name on a "
                    "template that declares no field)",
                    _json({"type": "object"}),
                    body="#/components/schemas/MetaValue",
                    params=[did, _path("name")],
                ),
            },
        },
    }
