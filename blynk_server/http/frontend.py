"""Wiring of the HTTP side: the device-port aiohttp app (reached by hand-off from the hardware
listener), the metrics registry and the event-loop lag probe.

The device app has no listening socket of its own: the hardware listener sniffs the first bytes of
a connection and, for HTTP, swaps in a protocol made by ``http_handoff`` on the same transport. That
factory makes ``limits.GuardedHandler`` (aiohttp's ``RequestHandler`` plus the per-IP connection cap
and the header-read timeout) for the ``AppRunner``'s low-level server, with the keep-alive timeout.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web

from blynk_server.http import device_api, legacy_api, websocket
from blynk_server.http.common import ApiError, Handler, LogBudget, json_error, metrics_middleware, route_name
from blynk_server.http.limits import REQUEST_RATE, ConnectionGuard, GuardedHandler, RequestRate, Throttled
from blynk_server.metrics import HttpStats, LoopLag, build_registry
from blynk_server.ota.http import add_device_routes

if TYPE_CHECKING:
    from blynk_server.app import BlynkServer

log = logging.getLogger(__name__)
DEVICE_APP_MAX_BODY = 4 * 1024 * 1024  # a 10,000-point batch fits with room to spare


INTERNAL_ERROR = "Internal server error."
_error_log = LogBudget()  # refused requests are logged at most 20 per 10 s (a bad-token flood is one line)


@web.middleware
async def device_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``ApiError`` → JSON for ``/external/api``, text/plain for the legacy paths; both carry CORS ``*``.

    Logs name the route's pattern (``/{token}/get/{pin}``), never the path: legacy paths hold the token.
    An unexpected exception is logged with its traceback; the client gets only a generic 500."""
    external = request.path.startswith("/external/")
    try:
        response = await handler(request)
    except ApiError as exc:
        if external:
            response = json_error(exc.message, exc.status)
        else:
            response = web.Response(text=exc.message, status=exc.status)
        if isinstance(exc, Throttled):
            response.headers["Retry-After"] = str(exc.retry_after)  # counted in metrics, not logged
        elif (dropped := _error_log.take(time.monotonic())) is not None:
            more = f" ({dropped} more not logged)" if dropped else ""
            log.info("http error route=%s status=%d message=%s%s", route_name(request), exc.status, exc.message, more)
    except web.HTTPException as exc:
        if exc.status >= 400 and external:
            response = json_error(exc.reason, exc.status)
        else:
            raise
    except ConnectionError:
        # The client hung up, e.g. in the middle of its body: nobody to answer, nothing to log loudly.
        log.debug("http client went away route=%s", route_name(request))
        response = web.Response(status=400)
    except Exception:
        log.exception("http handler failed route=%s", route_name(request))
        response = json_error(INTERNAL_ERROR, 500) if external else web.Response(text=INTERNAL_ERROR, status=500)
    if not response.prepared:
        response.headers.setdefault("Access-Control-Allow-Origin", "*")
    return response


def build_device_app(server: BlynkServer, stats: HttpStats) -> web.Application:
    app = web.Application(
        middlewares=[metrics_middleware(stats, "device"), device_errors], client_max_size=DEVICE_APP_MAX_BODY
    )
    settings = server.settings
    app[REQUEST_RATE] = RequestRate(settings.http_request_rate, settings.http_request_burst, stats)
    websocket.add_routes(app, server)
    device_api.add_routes(app, server)
    add_device_routes(app, server)
    legacy_api.add_routes(app, server)  # last: its /{token}/... patterns must not shadow the others
    return app


class HttpFrontend:
    """Starts and stops the device HTTP app, metrics and the loop-lag probe, for ``BlynkServer``."""

    def __init__(self, server: BlynkServer) -> None:
        self.server = server
        self.stats = HttpStats()
        self.lag = LoopLag()
        self.registry = build_registry(server, self.stats, self.lag)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(build_device_app(self.server, self.stats), access_log=None)
        await self._runner.setup()
        assert self.server.hardware is not None and self._runner.server is not None
        s = self.server.settings
        # aiohttp's RequestHandler, made by hand (not by ``Server.__call__``) to add the limits.
        self.server.hardware.http_handoff = functools.partial(
            GuardedHandler,
            self._runner.server,
            guard=ConnectionGuard(s.http_connections_per_ip, self.stats),
            header_timeout=s.http_header_timeout,
            stats=self.stats,
            loop=asyncio.get_running_loop(),
            keepalive_timeout=s.http_keepalive_timeout,
            access_log=None,
        )
        self.lag.start(asyncio.get_running_loop())

    async def stop(self) -> None:
        self.lag.stop()
        if self.server.hardware is not None:
            self.server.hardware.http_handoff = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
