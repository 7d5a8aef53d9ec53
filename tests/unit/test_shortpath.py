"""``shortpath.parse_head``: which requests the short path takes; everything else is aiohttp's."""

from __future__ import annotations

import pytest

from blynk_server.http.shortpath import MAX_HEAD, MAX_HEADERS, parse_head

PLAIN = b"GET /external/api/update?token=abc&v1=1 HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "head"),
    [
        (PLAIN, ("/external/api/update", "token=abc&v1=1")),
        (
            b"GET /external/api/update/?token=a&V1=%20+ HTTP/1.1\r\nhost: x\r\n\r\n",
            ("/external/api/update/", "token=a&V1=%20+"),
        ),
        (
            b"GET /external/api/update?token=a&v1=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: curl/8.5\r\nAccept: */*\r\n\r\n",
            ("/external/api/update", "token=a&v1=1"),
        ),
        (
            b"GET /external/api/update?token=a HTTP/1.1\r\nHost: x\r\nAccept:\t*/* \r\nX: 1\r\nX: 2\r\n\r\n",
            ("/external/api/update", "token=a"),
        ),
    ],
    ids=["plain", "trailing-slash-lowercase-host", "curl", "tab-trailing-space-repeated-header"],
)
def test_taken(data, head):
    assert parse_head(data) == head


def test_as_many_headers_as_aiohttp_takes():
    assert parse_head(PLAIN.replace(b"Host: x", b"\r\n".join([b"Host: x"] + [b"X: 1"] * (MAX_HEADERS - 1)))) is not None


@pytest.mark.parametrize(
    "data",
    [
        PLAIN[:-2],  # the head not complete yet
        PLAIN + PLAIN,  # two requests
        PLAIN + b"x",  # a body, or the start of the next request
        PLAIN.replace(b"GET", b"POST"),
        PLAIN.replace(b"GET", b"HEAD"),
        PLAIN.replace(b"HTTP/1.1", b"HTTP/1.0"),
        PLAIN.replace(b"/update?", b"/get?"),
        PLAIN.replace(b"/update?", b"/updates?"),
        PLAIN.replace(b"/update?", b"/%75pdate?"),
        PLAIN.replace(b"update?token=abc&v1=1", b"update"),  # no query: aiohttp's "No token provided."
        PLAIN.replace(b"v1=1", b"v1=1#x"),
        PLAIN.replace(b"v1=1", b"v1=\xc3\xa9"),
        PLAIN.replace(b"v1=1", b'v1="1"'),
        PLAIN.replace(b"\r\nHost", b"\nHost"),  # a bare line feed
        PLAIN.replace(b"Host: x", b"Host : x"),
        PLAIN.replace(b"Host: x", b"Host: x\r\n y"),  # obs-fold
        PLAIN.replace(b"Host: x", b"Host: \xe9"),  # obs-text
        PLAIN.replace(b"Host: x", b"Host: x\x00"),
        PLAIN.replace(b"Host: x", b"Content-Length: 0"),
        PLAIN.replace(b"Host: x", b"Transfer-Encoding: chunked"),
        PLAIN.replace(b"Host: x", b"connection: close"),
        PLAIN.replace(b"Host: x", b"Connection: keep-alive"),
        PLAIN.replace(b"Host: x", b"Expect: 100-continue"),
        PLAIN.replace(b"Host: x", b"Upgrade: websocket"),
        PLAIN.replace(b"Host: x", b"Accept: */*"),  # no Host: aiohttp's 400
        PLAIN.replace(b"Host: x", b"Host: x\r\nHOST: y"),  # two: aiohttp's 400
        PLAIN.replace(b"Host: x", b"Host: x\r\nUser-Agent: a\r\nUser-Agent: b"),
        PLAIN.replace(b"v1=1", b"v1=" + b"1" * MAX_HEAD),  # aiohttp's limit of a line
        PLAIN.replace(b"Host: x", b"\r\n".join([b"Host: x"] + [b"X: 1"] * MAX_HEADERS)),  # over aiohttp's limit
    ],
)
def test_handed_to_aiohttp(data):
    assert parse_head(data) is None
