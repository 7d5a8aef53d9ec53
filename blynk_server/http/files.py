"""Downloads on the device port: export files (``/<name>.zip``, ``/<name>.csv.gz``, made by ``data/get``
and the legacy ``/{token}/data/{pin}``) and device uploads (``/device_uploads/<device id>/<name>``).

Neither needs a token: the random part of each name is the key (as blynk.cloud's links). Every answer
carries ``X-Content-Type-Options: nosniff`` and ``Content-Security-Policy: sandbox``; an upload whose
extension is not a known image or text type is an ``application/octet-stream`` attachment, so nothing a
device uploads runs in a browser. Unknown or expired names answer 404.
"""

from __future__ import annotations

from aiohttp import web

from blynk_server.export import NAME_PATTERN, Exports
from blynk_server.http.common import ApiError
from blynk_server.uploads import Uploads, content_type
from protocol.body import BodyError, parse_uint

SAFE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}


def base_url(request: web.Request, external_url: str | None) -> str:
    """``external_url`` when set, else the scheme and host the client used (its ``Host`` header)."""
    if external_url:
        return external_url.rstrip("/")
    return f"{request.scheme}://{request.host}"


def add_routes(app: web.Application, exports: Exports | None, uploads: Uploads | None) -> None:

    async def export_file(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = exports.file(name) if exports is not None else None
        if path is None:
            raise ApiError("File not found.", 404)
        kind = "application/zip" if name.endswith(".zip") else "application/gzip"
        headers = {**SAFE_HEADERS, "Content-Type": kind, "Content-Disposition": f'attachment; filename="{name}"'}
        return web.FileResponse(path, headers=headers)

    async def upload_file(request: web.Request) -> web.StreamResponse:
        stored = request.match_info["name"]
        try:
            device_id = parse_uint(request.match_info["device_id"], 2**63 - 1)
        except BodyError:
            raise ApiError("File not found.", 404) from None
        path = uploads.path(device_id, stored) if uploads is not None else None
        if path is None:
            raise ApiError("File not found.", 404)
        kind = content_type(stored)
        headers = dict(SAFE_HEADERS)
        if kind is None:
            headers["Content-Type"] = "application/octet-stream"
            headers["Content-Disposition"] = f'attachment; filename="{stored}"'
        else:
            headers["Content-Type"] = kind
        return web.FileResponse(path, headers=headers)

    app.router.add_get("/{name:" + NAME_PATTERN + "}", export_file)
    app.router.add_get("/device_uploads/{device_id}/{name}", upload_file)
