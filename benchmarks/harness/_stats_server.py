"""Fallback launcher: ``blynk-server`` plus a ``/bench/stats`` JSON route with the message counters.

Used only while ``blynk_server.metrics`` (Prometheus ``/metrics``) does not exist yet, so the harness
can still read processed counts from the server's side. It changes nothing else.
"""

from __future__ import annotations

import sys

from aiohttp import web

import blynk_server.app as app_module
from blynk_server.cli import main
from protocol import Command

_build = app_module.build_admin_app


def build_admin_app(server) -> web.Application:
    app = _build(server)

    async def stats(request: web.Request) -> web.Response:
        counts = server.hardware.stats.messages_in if server.hardware else [0] * 256
        return web.json_response({c.name: counts[c.value] for c in Command if counts[c.value]})

    app.router.add_get("/bench/stats", stats)
    return app


app_module.build_admin_app = build_admin_app

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
