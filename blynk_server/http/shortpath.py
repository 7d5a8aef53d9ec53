"""The short path of ``GET /external/api/update``: a command to a device, answered without aiohttp.

A dashboard, a script or an automation drives a device with ``update`` requests, usually many on one
keep-alive connection. Through aiohttp each costs about 0.6 ms of CPU in a loaded server (its request,
task and response objects, run with little of them in the caches when requests are paced), more than
the device's own telemetry around it (benchmarks/RESULTS.md, issue 12). ``GuardedHandler`` offers each
chunk a connection receives to ``UpdateShortPath.answer`` first. A chunk that is exactly one such
request in its plainest form is answered here: the same rules (``rated_device``, ``update_pins``), the
same bytes as aiohttp's answer, counted and logged the same way. Anything else (another path or method,
a request split over two reads or two in one, a header that changes how a request is read or answered,
anything aiohttp might refuse) returns None, and from then on aiohttp reads that connection as before;
so does a chunk that comes while the client is not reading its answers (``GuardedHandler``).
"""

from __future__ import annotations

import logging
import re
import time
from http import HTTPStatus

from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_parser import SINGLETON_HEADERS
from yarl import URL

from blynk_server.domain import Domain
from blynk_server.http.common import INTERNAL_ERROR, ApiError, error_body, log_refused
from blynk_server.http.device_api import update_pins
from blynk_server.http.limits import RequestRate, Throttled, rated_device
from blynk_server.http.stats import HttpStats

log = logging.getLogger(__name__)

MAX_HEAD = 8190  # aiohttp's limit of a request line: a longer head is aiohttp's to answer
MAX_HEADERS = 128  # aiohttp's limit of header lines: more are aiohttp's to refuse
# The request line: a target of RFC 3986 characters only (no fragment), HTTP/1.1 (1.0 is not kept alive).
_REQUEST_LINE = re.compile(rb"GET (/external/api/update/?)\?([A-Za-z0-9._~!$&'()*+,;=:@/?%-]*) HTTP/1\.1")
# A header line: a token, a colon, visible ASCII, spaces and tabs (no obs-fold, no obs-text).
_HEADER = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[\t\x20-\x7e]*")
# Headers that change how a request is read or how the connection goes on: aiohttp's to handle.
HANDED_OVER = frozenset(
    {b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect", b"te", b"keep-alive"}
)
_SINGLETONS = frozenset(name.encode() for name in SINGLETON_HEADERS)  # aiohttp refuses two of one (400)


def parse_head(data: bytes) -> tuple[str, str] | None:
    """The route and the query string of ``data`` when it is exactly one ``update`` request the short
    path takes (its head and nothing more, one ``Host``, no header aiohttp allows once given twice),
    else None."""
    if len(data) > MAX_HEAD or not data.endswith(b"\r\n\r\n"):
        return None
    lines = data[:-4].split(b"\r\n")  # a second request in ``data`` leaves an empty line: no header
    request = _REQUEST_LINE.fullmatch(lines[0])
    if request is None or len(lines) > MAX_HEADERS + 1:
        return None
    seen = set()
    for line in lines[1:]:
        header = _HEADER.fullmatch(line)
        if header is None:
            return None
        name = header[1].lower()
        if name in HANDED_OVER or (name in seen and name in _SINGLETONS):
            return None
        seen.add(name)
    if b"host" not in seen:  # aiohttp refuses an HTTP/1.1 request without one
        return None
    return request[1].decode(), request[2].decode()


class UpdateShortPath:
    """Answers ``parse_head``'s requests as the device app's ``update`` route and ``device_handler``
    would: the device of ``token`` at its request rate, the pins written and delivered, ``200`` with
    an empty body, or Blynk's JSON error; CORS ``*``; counted in ``stats`` under the route's pattern."""

    def __init__(self, domain: Domain, rate: RequestRate, stats: HttpStats) -> None:
        self.domain = domain
        self.rate = rate
        self.stats = stats

    def answer(self, data: bytes) -> bytes | None:
        """The answer to ``data``, the request answered; None: not the short path's (nothing done)."""
        head = parse_head(data)
        if head is None:
            return None
        route, query = head
        start = time.perf_counter()
        status, body, retry_after = 200, b"", None
        try:
            q = URL.build(path=route, query_string=query, encoded=True).query  # as aiohttp's parser builds it
            update_pins(self.domain, rated_device(self.domain, self.rate, q.get("token")), q)
        except ApiError as exc:
            status, body = exc.status, error_body(exc.message)
            if isinstance(exc, Throttled):
                retry_after = exc.retry_after  # counted in metrics, not logged
            else:
                log_refused(route, exc)
        except Exception:
            log.exception("http handler failed route=%s", route)
            status, body = 500, error_body(INTERNAL_ERROR)
        self.stats.observe("device", route, "GET", status, time.perf_counter() - start)
        self.stats.short_path += 1
        return _response(status, body, retry_after)


def _response(status: int, body: bytes, retry_after: int | None) -> bytes:
    """aiohttp's answer with the device handler's headers, in aiohttp's order."""
    kind = "application/json" if body else "text/plain"
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Content-Type: {kind}; charset=utf-8"]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    head += [
        "Access-Control-Allow-Origin: *",
        f"Content-Length: {len(body)}",
        f"Date: {rfc822_formatted_time()}",
        f"Server: {SERVER_SOFTWARE}",
        "\r\n",
    ]
    return "\r\n".join(head).encode() + body
