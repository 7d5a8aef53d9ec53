"""Limits of the HTTP door on the device port (issue 10): header-read and keep-alive timeouts,
concurrent connections per IP, and the per-device request rate of the device API.

The hardware listener hands an HTTP connection to a protocol made by ``HttpFrontend``'s factory;
that protocol is ``GuardedHandler``, aiohttp's ``RequestHandler`` with these additions:

* a connection over the per-IP cap is answered ``429`` at once and closed (the request is not read);
* a timer runs from the first byte of each request (the connection's start for the first one) until
  its headers are parsed; when it fires the connection is closed, so a slow client cannot hold a
  connection by trickling headers (aiohttp itself has no header-read timeout);
* a request body must then come at ``MIN_BODY_RATE`` bytes/s on average, after a grace of the same
  timeout (checked every such period), or the connection is closed: a stalled body is closed within
  two periods, and trickling costs the sender real bandwidth;
* aiohttp's own keep-alive timer, given ``http_keepalive_timeout``, closes idle connections;
* each chunk is first offered to the short path of plain ``update`` requests (``shortpath.py``) until
  one is not its kind (or the client stops reading its answers): from then on aiohttp reads them all.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Protocol, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from blynk_server.domain import DeviceState, Domain
from blynk_server.http.common import ApiError, LogBudget, error_body

if TYPE_CHECKING:
    from aiohttp.web_server import Server

    from blynk_server.http.stats import HttpStats

log = logging.getLogger(__name__)
_bad_request_log = LogBudget()  # malformed requests: at most 20 lines per 10 s

MIN_BODY_RATE = 1024  # bytes/s a request body must average once the grace period is over

_REFUSED_BODY = error_body("Too many connections from this address.")
REFUSED_RESPONSE = (
    b"HTTP/1.1 429 Too Many Requests\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Access-Control-Allow-Origin: *\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_REFUSED_BODY)).encode() + b"\r\n\r\n" + _REFUSED_BODY
)


class ShortPath(Protocol):
    """What answers some requests before aiohttp (``shortpath.UpdateShortPath``)."""

    def answer(self, data: bytes) -> bytes | None:
        """The answer to the request ``data`` holds, given; None: aiohttp's to answer."""


class ConnectionGuard:
    """Open HTTP connections per IP on the device port; ``acquire`` refuses the one over the cap."""

    def __init__(self, per_ip: int, stats: HttpStats) -> None:
        self.per_ip = per_ip
        self.stats = stats
        self._open: dict[str, int] = {}  # only IPs with an open connection: bounded by open sockets

    def acquire(self, ip: str) -> bool:
        n = self._open.get(ip, 0)
        if self.per_ip > 0 and n >= self.per_ip:
            self.stats.connections_refused += 1
            return False
        self._open[ip] = n + 1
        self.stats.connections_open += 1
        return True

    def release(self, ip: str) -> None:
        n = self._open.get(ip, 0) - 1
        if n > 0:
            self._open[ip] = n
        else:
            self._open.pop(ip, None)
        self.stats.connections_open -= 1


class GuardedHandler(RequestHandler):
    """aiohttp's per-connection protocol with the per-IP cap, the header-read timeout and the body rate."""

    __slots__ = (
        "_body",
        "_body_since",
        "_body_timer",
        "_guard",
        "_handled",
        "_header_timeout",
        "_header_timer",
        "_ip",
        "_short",
        "_stats",
    )

    def __init__(
        self,
        manager: Server,
        *,
        guard: ConnectionGuard,
        header_timeout: float,
        stats: HttpStats,
        short: ShortPath | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._short = short  # offered each chunk until aiohttp has read one: then aiohttp reads them all
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._ip: str | None = None  # set once admitted: a refused connection never reaches aiohttp
        self._stats = stats
        self._handled = 0  # requests answered; equal to aiohttp's _request_count (parsed) when idle
        self._body: StreamReader | None = None  # the body being received, while it is watched
        self._body_since = 0.0
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if peer else "unknown"
        if not self._guard.acquire(ip):
            tcp = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
            tcp.write(REFUSED_RESPONSE)
            tcp.close()
            return
        self._ip = ip
        super().connection_made(transport)
        # The header timer starts with the first bytes, which the hand-off passes to ``data_received``
        # at once (the connection's start, to the loop's clock): most hold a whole request, and a timer
        # armed here would be cancelled right away.

    def data_received(self, data: bytes) -> None:
        if self._ip is None:
            return
        if self._short is not None:
            # A client that does not read its answers (writing paused) is aiohttp's, which waits for the
            # answers to drain before it reads the next request: the short path writes and moves on.
            transport = self.transport
            answer = None if self.writing_paused or transport is None else self._short.answer(data)
            if answer is not None:
                transport.write(answer)
                self._idle_again()
                return
            # aiohttp's parser takes this connection from here on: it may hold part of a request now.
            self._short = None
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            self._cancel_header_timer()
            if self._messages:
                self._watch_body(self._messages[-1][1])
        elif self._header_timer is None and self._request_count == self._handled:
            # No request parsed and unanswered (these bytes are no body): they begin a request (the
            # first one, or the next on a keep-alive connection), whose headers are timed.
            self._arm_header_timer()

    async def _handle_request(self, *args: Any, **kwargs: Any) -> Any:
        """aiohttp's per-request step (called by ``start()`` for every parsed request, errors included):
        counted, so ``data_received`` knows whether bytes are a body or a new request."""
        try:
            return await super()._handle_request(*args, **kwargs)
        finally:
            self._handled += 1

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._ip is None:
            return
        self._cancel_header_timer()
        self._watch_body(EMPTY_PAYLOAD)
        self._guard.release(self._ip)
        self._ip = None
        super().connection_lost(exc)

    def _idle_again(self) -> None:
        """After a short-path answer, the keep-alive timeout runs again from now, as after aiohttp's."""
        if self._keepalive_timeout > 0:
            close_time = self._loop.time() + self._keepalive_timeout
            self._next_keepalive_close_time = close_time
            if self._keepalive_handle is None:
                self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)

    def _arm_header_timer(self) -> None:
        if self._header_timeout > 0:
            self._header_timer = self._loop.call_later(self._header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        """A request aiohttp could not parse is the client's fault: counted and logged in one short,
        rate-limited line (the error's class only: its text may hold the URL, and so a token), not
        with aiohttp's ERROR traceback. The client gets aiohttp's answer. Other errors go to aiohttp."""
        if status >= 500 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        self._stats.bad_requests += 1
        if (dropped := _bad_request_log.take(self._loop.time())) is not None:
            more = f" ({dropped} more not logged)" if dropped else ""
            log.info("http bad request peer=%s status=%d error=%s%s", self._ip, status, type(exc).__name__, more)
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        response = web.Response(status=status, text=message, content_type="text/plain")
        response.force_close()
        return response

    def _header_timed_out(self) -> None:
        self._header_timer = None
        self._stats.header_timeouts += 1
        self.force_close()

    def _watch_body(self, payload: StreamReader) -> None:
        """Start watching the body of the request just parsed (HTTP/1.1: the one before is complete)."""
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._body = None
        if payload is not EMPTY_PAYLOAD and not payload.is_eof() and self._header_timeout > 0:
            self._body = payload
            self._body_since = self._loop.time()
            self._body_timer = self._loop.call_later(self._header_timeout, self._check_body)

    def _check_body(self) -> None:
        self._body_timer = None
        body = self._body
        if body is None or body.is_eof():
            self._body = None
            return
        owed = (self._loop.time() - self._body_since - self._header_timeout) * MIN_BODY_RATE
        if body.total_bytes < owed:
            self._body = None
            self._stats.body_timeouts += 1
            self.force_close()
            return
        self._body_timer = self._loop.call_later(self._header_timeout, self._check_body)


class Throttled(ApiError):
    """A device API request over its device's rate: ``429`` with ``Retry-After`` (whole seconds, ≥ 1)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, 429)
        self.retry_after = max(1, math.ceil(retry_after))


class RequestRate:
    """A token bucket per device (keyed by device id, so only valid tokens get one): ``rate`` requests/s,
    ``burst`` at once. Buckets that have refilled are dropped when the table grows, so memory stays
    bounded by the devices active within about ``burst / rate`` seconds. ``rate`` ≤ 0 turns it off."""

    PRUNE_AT = 4096

    def __init__(self, rate: float, burst: int, stats: HttpStats) -> None:
        self.rate = rate
        self.burst = float(max(1, burst))
        self.stats = stats
        self.message = f"Too many requests: at most {rate:g} per second per device."
        self._buckets: dict[int, tuple[float, float]] = {}  # device id -> (tokens, loop time)
        self._prune_at = self.PRUNE_AT

    def check(self, key: int, now: float) -> None:
        """Spend one request of ``key``'s bucket, or raise ``Throttled``."""
        if self.rate <= 0:
            return
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            self.stats.throttled += 1
            raise Throttled(self.message, (1 - tokens) / self.rate)
        self._buckets[key] = (tokens - 1, now)
        if len(self._buckets) > self._prune_at:
            self._prune(now)

    def _prune(self, now: float) -> None:
        full = [k for k, (tokens, at) in self._buckets.items() if tokens + (now - at) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]
        self._prune_at = max(self.PRUNE_AT, 2 * len(self._buckets))


REQUEST_RATE = web.AppKey("request_rate", RequestRate)


def token_device(domain: Domain, request: web.Request, token: str | None) -> DeviceState:
    """The device a request names by ``token`` (query or path): ``rated_device`` with the app's rate."""
    return rated_device(domain, request.app[REQUEST_RATE], token)


def rated_device(domain: Domain, rate: RequestRate, token: str | None) -> DeviceState:
    """The device of ``token``, as a login would find it (an expired provision token opens nothing),
    after spending one request of its rate (``http_request_rate``); ApiError or Throttled otherwise."""
    if not token:
        raise ApiError("No token provided.")
    dev = domain.authenticate(token)
    if dev is None:
        raise ApiError("Invalid token.")
    rate.check(dev.id, time.monotonic())
    return dev
