"""Counters of the HTTP doors (requests, latency, connection limits): plain numbers the middleware and
the limits bump, read by the metrics collector at scrape time."""

from __future__ import annotations

import bisect

HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HttpStats:
    """Requests by (app, route, method, status) and a latency histogram by (app, route): plain numbers."""

    __slots__ = (
        "requests",
        "latency",
        "connections_open",
        "connections_refused",
        "header_timeouts",
        "body_timeouts",
        "bad_requests",
        "throttled",
        "short_path",
    )

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str, int], int] = {}
        # (app, route) -> [bucket counts (non-cumulative, last = +Inf), sum of seconds]
        self.latency: dict[tuple[str, str], list] = {}
        # The device port's HTTP limits (blynk_server/http/limits.py).
        self.connections_open = 0
        self.connections_refused = 0  # over http_connections_per_ip
        self.header_timeouts = 0  # closed for not sending a request's headers within http_header_timeout
        self.body_timeouts = 0  # closed for sending a request body slower than limits.MIN_BODY_RATE
        self.bad_requests = 0  # requests aiohttp could not parse (answered 4xx by aiohttp, then closed)
        self.throttled = 0  # device API requests answered 429 (over http_request_rate)
        self.short_path = 0  # requests answered by http/shortpath.py, not aiohttp (counted in requests too)

    def observe(self, app: str, route: str, method: str, status: int, seconds: float) -> None:
        key = (app, route, method, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        entry = self.latency.get((app, route))
        if entry is None:
            entry = self.latency[(app, route)] = [[0] * (len(HTTP_BUCKETS) + 1), 0.0]
        entry[0][bisect.bisect_left(HTTP_BUCKETS, seconds)] += 1
        entry[1] += seconds
