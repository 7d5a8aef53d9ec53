"""The device port's HTTP side: its aiohttp app, reached by hand-off from the hardware listener.

The device app has no listening socket of its own: the hardware listener sniffs the first bytes of
a connection and, for HTTP, swaps in a protocol made by ``http_handoff`` on the same transport. That
factory makes ``limits.GuardedHandler`` (aiohttp's ``RequestHandler`` plus the per-IP connection cap
and the header-read timeout) for the ``AppRunner``'s low-level server, with the keep-alive timeout,
and gives it the short path of ``update`` requests (``shortpath.UpdateShortPath``) when it is on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable

from aiohttp import web

from blynk_server.config import Settings
from blynk_server.device_provisioning import add_device_routes as add_provision_routes
from blynk_server.domain import Domain
from blynk_server.export import Exports
from blynk_server.hardware.hotpath import HardwareSession
from blynk_server.http import device_api, legacy_api, websocket
from blynk_server.http import files as file_routes
from blynk_server.http.common import (
    INTERNAL_ERROR,
    ApiError,
    Handler,
    counted,
    json_error,
    log_refused,
    route_name,
)
from blynk_server.http.limits import REQUEST_RATE, ConnectionGuard, GuardedHandler, RequestRate, Throttled
from blynk_server.http.shortpath import UpdateShortPath
from blynk_server.http.stats import HttpStats
from blynk_server.hub import Hub
from blynk_server.mailer import Mailer
from blynk_server.ota.http import add_device_routes
from blynk_server.ota.service import OtaService
from blynk_server.uploads import Uploads

log = logging.getLogger(__name__)
DEVICE_APP_MAX_BODY = 4 * 1024 * 1024  # a 10,000-point batch fits with room to spare
SHORT_PATH = web.AppKey("short_path", UpdateShortPath)  # set when settings.http_short_path


def device_handler(stats: HttpStats, handle: Handler) -> Handler:
    """The device app's request handler ``handle`` (its routing and routes) with its errors answered
    (``error_response``, CORS ``*`` on every answer not yet sent) and every request counted by
    ``common.counted``, the function the admin app's ``metrics_middleware`` counts with.

    Not an aiohttp middleware: an app with any middleware runs aiohttp's middleware chain on every
    request (a wrapper per middleware and one of its own, found through a cache keyed by the apps),
    about 4 % of the instructions of an ``update`` request. So ``HttpFrontend`` puts this around the
    app's handler instead; so a request aiohttp refuses before the route's handler runs (an ``Expect``
    it does not know, ``417``) is answered and counted like any other error."""

    async def answered(request: web.Request) -> web.StreamResponse:
        try:
            response = await handle(request)
        except Exception as exc:
            response = error_response(request, exc)
        if not response.prepared:
            response.headers.setdefault("Access-Control-Allow-Origin", "*")
        return response

    return functools.partial(counted, stats, "device", answered)


def error_response(request: web.Request, exc: Exception) -> web.StreamResponse:
    """``ApiError`` → JSON for ``/external/api``, text/plain for the legacy paths (``device_handler``
    adds CORS ``*``); an ``HTTPException`` of ``/external/`` → JSON, any other is raised again.

    Logs name the route's pattern (``/{token}/get/{pin}``), never the path: legacy paths hold the token.
    An unexpected exception is logged with its traceback; the client gets only a generic 500."""
    external = request.path.startswith("/external/")
    if isinstance(exc, ApiError):
        if external:
            response = json_error(exc.message, exc.status)
        else:
            response = web.Response(text=exc.message, status=exc.status)
        if isinstance(exc, Throttled):
            response.headers["Retry-After"] = str(exc.retry_after)  # counted in metrics, not logged
        else:
            log_refused(route_name(request), exc)
        return response
    if isinstance(exc, web.HTTPException):
        if exc.status >= 400 and external:
            return json_error(exc.reason, exc.status)
        raise exc
    if isinstance(exc, ConnectionError):
        # The client hung up, e.g. in the middle of its body: nobody to answer, nothing to log loudly.
        log.debug("http client went away route=%s", route_name(request))
        return web.Response(status=400)
    log.exception("http handler failed route=%s", route_name(request))
    return json_error(INTERNAL_ERROR, 500) if external else web.Response(text=INTERNAL_ERROR, status=500)


def build_device_app(
    settings: Settings,
    stats: HttpStats,
    domain: Domain,
    hub: Hub,
    ota: OtaService,
    new_session: Callable[[], HardwareSession],
    mailer: Mailer | None = None,
    exports: Exports | None = None,
    uploads: Uploads | None = None,
    extensions: Iterable[Callable[[web.Application], None]] = (),
) -> web.Application:
    """The device port's HTTP app: WebSocket sessions, the device and legacy token APIs, OTA downloads;
    ``extensions`` add other routes (the Platform API when enabled) before the legacy catch-alls.
    It has no middleware: ``HttpFrontend`` serves it through ``device_handler`` (errors, metrics)."""
    app = web.Application(client_max_size=DEVICE_APP_MAX_BODY)
    app[REQUEST_RATE] = rate = RequestRate(settings.http_request_rate, settings.http_request_burst, stats)
    if settings.http_short_path:
        app[SHORT_PATH] = UpdateShortPath(domain, rate, stats)
    websocket.add_routes(app, new_session, settings.max_frame)
    files = device_api.Files(exports, uploads, settings.external_url)
    device_api.add_routes(app, domain, hub, settings.data_get_max_points, files, settings.batch_points_per_day)
    add_device_routes(app, ota)
    add_provision_routes(app, domain)
    file_routes.add_routes(app, exports, uploads)
    for extend in extensions:
        extend(app)
    # last: its /{token}/... patterns must not shadow the others
    legacy_api.add_routes(app, domain, hub, mailer, exports, settings.data_get_max_points)
    return app


class HttpFrontend:
    """Runs the device HTTP app without a socket of its own, through ``device_handler``: ``start``
    returns the factory the hardware listener calls to hand a sniffed HTTP connection over."""

    def __init__(self, settings: Settings, app: web.Application, stats: HttpStats) -> None:
        self.settings = settings
        self.stats = stats
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> Callable[[], asyncio.Protocol]:
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        server.request_handler = device_handler(self.stats, server.request_handler)
        s = self.settings
        # aiohttp's RequestHandler, made by hand (not by ``Server.__call__``) to add the limits.
        return functools.partial(
            GuardedHandler,
            server,
            guard=ConnectionGuard(s.http_connections_per_ip, self.stats),
            header_timeout=s.http_header_timeout,
            stats=self.stats,
            short=self._runner.app.get(SHORT_PATH),
            loop=asyncio.get_running_loop(),
            keepalive_timeout=s.http_keepalive_timeout,
            access_log=None,
        )

    async def stop(self) -> None:
        await self._runner.cleanup()
