"""The Platform API's part of the OpenAPI document: ``/oauth2/token``, the ``/oauth-clients`` admin
routes and the ``/api/v1/organization/...`` routes (Blynk's paths and shapes; see platform_api.py)."""

from __future__ import annotations

from typing import Any

PLATFORM = [{"platformBearer": []}]  # the security of the Platform routes: an OAuth2 access token
BASIC = [{"clientBasic": []}]

SECURITY_SCHEMES = {
    "platformBearer": {
        "type": "oauth2",
        "description": "Platform API: an access token from POST /oauth2/token (client credentials). The admin "
        "API key does not open these routes.",
        "flows": {"clientCredentials": {"tokenUrl": "/oauth2/token", "scopes": {}}},
    },
    "clientBasic": {"type": "http", "scheme": "basic", "description": "client_id:client_secret"},
}

_err = {"$ref": "#/components/responses/Error"}
_page = [
    {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}},
    {"name": "size", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}},
]


def _q(name: str, kind: str = "integer", required: bool = False, description: str = "") -> dict:
    return {"name": name, "in": "query", "required": required, "schema": {"type": kind}, "description": description}


_device_id = _q("deviceId", required=True)
_template_id = _q("templateId", "string", True, "this server's template id (TMPL...)")


def _op(summary: str, ok: str = "200", body: dict | None = None, params: list | None = None) -> dict:
    op: dict[str, Any] = {
        "summary": summary,
        "security": PLATFORM,
        "responses": {
            ok: {"description": "OK" if ok == "200" else "No content"},
            "400": _err,
            "401": _err,
            "403": _err,
            "404": _err,
            "429": _err,
        },
    }
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _obj(**props: str) -> dict:
    return {"type": "object", "properties": {k: {"type": v} for k, v in props.items()}}


def paths() -> dict:
    """The Platform paths of the document."""
    p = "/api/v1/organization/"
    return {
        "/oauth2/token": {
            "post": {
                "summary": "An access token by client credentials (HTTP Basic client_id:client_secret, or the "
                "form fields client_id and client_secret); grant_type=client_credentials in the query or "
                "the form. Refusals: RFC 6749 {error, error_description}; 429 past platform_token_rate",
                "security": BASIC,
                "parameters": [_q("grant_type", "string", True, "client_credentials")],
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {
                            "application/json": {
                                "schema": _obj(access_token="string", token_type="string", expires_in="integer")
                            }
                        },
                    },
                    "400": {"description": "invalid_request, unsupported_grant_type"},
                    "401": {"description": "invalid_client"},
                    "429": _err,
                },
            }
        },
        p + "devices": {"get": _op("Devices, one page: {content, totalElements}", params=[_q("orgId"), *_page])},
        p + "search/devices": {
            "get": _op(
                "Devices whose name contains query (or whose id or token is it)",
                params=[_q("query", "string", True), _q("sortBy", "string"), _q("sortOrder", "string"), *_page],
            )
        },
        p + "device": {
            "get": _op("A device (status ONLINE/OFFLINE is its connection status)", params=[_device_id]),
            "put": _op(
                "Rename a device: {name} (1..50 printable characters)", body=_obj(name="string"), params=[_device_id]
            ),
            "delete": _op("Delete a device", "204", params=[_device_id]),
        },
        p + "device/metadata": {
            "get": _op(
                "The device's values of its template's metafields: [{id, name, type, value}]", params=[_device_id]
            ),
            "post": _op(
                "Set one: {deviceId, metaFieldId (id or name), value}, checked by the field's type",
                "204",
                body=_obj(deviceId="integer", metaFieldId="integer", value="string"),
            ),
        },
        p + "device/create": {
            "post": _op("Create a device", body=_obj(templateId="string", name="string", orgId="integer"))
        },
        "/api/v2/organization/device/datastreams": {
            "get": _op(
                "Current values: [{dataStreamId, pin, dataStreamLabel, dataStreamAlias, value, updatedAt}]",
                params=[_device_id, _q("dataStreamIds", "string", description="comma-separated or repeated")],
            )
        },
        p + "device/datastream": {
            "post": _op(
                "Write a datastream value (sent to the device when online)",
                "204",
                body=_obj(deviceId="integer", dataStreamId="integer", value="string"),
            )
        },
        p + "device/datastreams": {
            "post": _op(
                "Write several datastreams: body [{dataStreamId, value}] (at most 64)",
                "204",
                body={"type": "array", "items": _obj(dataStreamId="integer", value="string")},
                params=[_device_id],
            )
        },
        p + "device/datastream/property": {
            "post": _op(
                "Set a widget property of a datastream (read back by GET /api/devices/{id}/properties)",
                "204",
                body=_obj(deviceId="integer", dataStreamId="integer", property="string", value="string"),
            )
        },
        p + "device/import/batch": {
            "post": _op(
                "Import timestamped values: {deviceId, dataStreamId, values: [{value, ts}]} (at most 10,000)",
                "204",
                body=_obj(deviceId="integer", dataStreamId="integer", values="array"),
            )
        },
        p + "device/datastream/history": {
            "get": _op(
                "Stored points, oldest first: {content: [{createdAt, value}], totalElements} (at most "
                "data_get_max_points of a period are counted and paged)",
                params=[
                    _device_id,
                    _q("pin", "string"),
                    _q("dataStreamId"),
                    _q("from", description="ms"),
                    _q("to", description="ms"),
                    *_page,
                ],
            )
        },
        p + "device/timeline": {
            "get": _op(
                "Timeline, newest first: {content: [{id, eventCode, eventName, eventType, description, ts, "
                "isResolved, resolvedAt}], totalElements} (the newest 1,000 are paged)",
                params=[
                    _device_id,
                    _q("eventType", "string", description="ONLINE, OFFLINE, INFORMATION, WARNING, CRITICAL, CONTENT"),
                    _q("from", description="ms"),
                    _q("to", description="ms"),
                    *_page,
                ],
            )
        },
        p + "device/provision/token": {
            "post": _op(
                "Get provision token: a new device waiting for its first login (dynamic provisioning); "
                "templateId may be left out when exactly one template allows it",
                body=_obj(orgId="integer", ownerId="integer", templateId="string"),
            )
        },
        p + "device/trigger-event": {
            "post": _op(
                "Log an event the device's template declares",
                "204",
                body=_obj(deviceId="integer", eventCode="string", eventDescription="string"),
            )
        },
        p + "templates": {"get": _op("Templates, one page", params=[_q("orgId"), *_page])},
        p + "template": {"get": _op("A template", params=[_template_id])},
        p + "template/datastreams": {"get": _op("A template's datastreams", params=[_template_id])},
        p + "template/events": {"get": _op("A template's events", params=[_template_id])},
        p + "template/metafields": {
            "get": _op(
                "A template's metafields: [{id, name, type, defaultValue, options, min, max}]", params=[_template_id]
            )
        },
        "/api/oauth-clients": {
            "get": {
                "summary": "OAuth2 clients of the Platform API (never their secrets)",
                "responses": {"200": {"description": "OK"}, "401": {"$ref": "#/components/responses/Unauthorized"}},
            },
            "post": {
                "summary": "Create a client: {name, scope: read | read-write}; the answer holds client_secret, "
                "shown this once (stored hashed)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _obj(name="string", scope="string")}},
                },
                "responses": {
                    "201": {"description": "Created"},
                    "400": _err,
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "409": _err,
                },
            },
        },
        "/api/oauth-clients/{client_id}": {
            "delete": {
                "summary": "Delete a client; its access tokens stop working at once",
                "parameters": [{"name": "client_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "204": {"description": "Deleted"},
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "404": _err,
                },
            }
        },
    }


__all__ = ["PLATFORM", "SECURITY_SCHEMES", "paths"]
