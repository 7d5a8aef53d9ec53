"""The admin listener's aiohttp application."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from blynk_server.app import BlynkServer


def build_admin_app(server: BlynkServer) -> web.Application:
    app = web.Application()

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "sessions": len(server.hub)})

    app.router.add_get("/api/health", health)
    return app
