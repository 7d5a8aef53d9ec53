"""The short path of ``GET /external/api/update`` (``http/shortpath.py``): the same answers, rules and
counts as the aiohttp route it stands in front of, and aiohttp for everything it does not take.

Two servers on this loop, one with the short path and one without (``http_short_path``), get the same
raw requests; what each answers (the ``Date`` header aside) and stores must be the same."""

from __future__ import annotations

import asyncio

import pytest

from blynk_server.devclient import DeviceClient
from blynk_server.model import Datastream
from protocol import Command
from tests.integration.conftest import running

OK = b"HTTP/1.1 200 OK"
DATASTREAMS = [Datastream("v1", "Value", "int", 0, 100), Datastream("v2", "Text", "string")]


async def _device(server):
    template = await server.provisioning.create_template("Test", DATASTREAMS)
    return await server.provisioning.create_device(template.id, "dev")


async def _answer(reader: asyncio.StreamReader) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """One HTTP answer: its status line, its headers but ``Date`` in order, its body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status, *lines = head[:-4].split(b"\r\n")
    headers = [tuple(line.split(b": ", 1)) for line in lines]
    length = next(int(v) for k, v in headers if k.lower() == b"content-length")
    body = await asyncio.wait_for(reader.readexactly(length), 5)
    return status, [(k, v) for k, v in headers if k != b"Date"], body


async def _exchange(server, requests: list[bytes]) -> list[tuple]:
    """Each request written on one keep-alive connection once the answer before it has come."""
    reader, writer = await asyncio.open_connection(*server.hardware.address)
    try:
        out = []
        for request in requests:
            writer.write(request)
            out.append(await _answer(reader))
        return out
    finally:
        writer.close()


def _get(query: str, headers: str = "Host: 127.0.0.1\r\n", path: str = "/external/api/update") -> bytes:
    return f"GET {path}?{query} HTTP/1.1\r\n{headers}\r\n".encode()


QUERIES = [
    "token={token}&v1=42",
    "token={token}&V1=7&v2=a%20b+c",  # percent and plus decoding as aiohttp's
    "token={token}&pin=V2&value=x&value=y",  # two values
    "token={token}&dataStreamId=1&value=5",
    "token={token}&v1=abc",  # the datastream's type refuses it
    "token={token}&v1=1000",  # clamped to the max
    "token=nosuchtoken&v1=1",
    "token={token}",  # no pin
    "token={token}&q1=1",
    "token={token}&dataStreamId=one&value=1",
    "token={token}&pin=V1",  # no value
    "v1=1",  # no token
    "token={token}&" + "&".join(f"v{i}=1" for i in range(70)),  # over the pins of one request
]


async def test_answers_and_values_match_aiohttps(tmp_path):
    async with (
        running(tmp_path / "short") as short,
        running(tmp_path / "plain", http_short_path=False) as plain,
    ):
        answers, values = [], []
        for srv in (short, plain):
            dev = await _device(srv)
            requests = [_get(q.format(token=dev.token)) for q in QUERIES]
            requests.append(_get(f"token={dev.token}&v1=3", path="/external/api/update/"))  # widget pages' form
            requests.append(_get(f"token={dev.token}&v1=4", "Host: x\r\nUser-Agent: curl/8\r\nAccept: */*\r\n"))
            answers.append(await _exchange(srv, requests))
            values.append(dict(srv.domain.device_by_token(dev.token).values))
        assert answers[0] == answers[1]
        assert [a[0] for a in answers[0]].count(OK) == 7
        assert {k: v for k, (v, _) in values[0].items()} == {k: v for k, (v, _) in values[1].items()}
        assert values[0]["v2"][0] == b"x\0y"
        assert short.http.stats.short_path == len(QUERIES) + 2
        assert plain.http.stats.short_path == 0
        assert short.http.stats.requests == plain.http.stats.requests  # same route, method and status counts


async def test_throttled_answer_matches_aiohttps(tmp_path):
    limits = {"http_request_rate": 0.001, "http_request_burst": 1}
    async with (
        running(tmp_path / "short", **limits) as short,
        running(tmp_path / "plain", http_short_path=False, **limits) as plain,
    ):
        answers = []
        for srv in (short, plain):
            dev = await _device(srv)
            answers.append(await _exchange(srv, [_get(f"token={dev.token}&v1=1")] * 2))
        assert answers[0] == answers[1]
        status, headers, body = answers[0][1]
        assert status == b"HTTP/1.1 429 Too Many Requests"
        assert (b"Retry-After", b"1000") in headers
        assert body == b'{"error": {"message": "Too many requests: at most 0.001 per second per device."}}'
        assert short.http.stats.throttled == plain.http.stats.throttled == 1


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (_get("token={token}&v1=9", "Host: x\r\nConnection: close\r\n"), OK),
        (_get("token={token}&v1=9", "Host: x\r\nContent-Length: 0\r\n"), OK),
        (_get("token={token}&v1=9").replace(b"HTTP/1.1", b"HTTP/1.0"), b"HTTP/1.0 200 OK"),
        (_get("token={token}&v1=9#frag"), OK),
        (_get("token={token}&v1=9", "Host: x\r\nX-Odd : y\r\n"), b"HTTP/1.0 400 Bad Request"),
        (_get("token={token}&v1=9", "Accept: */*\r\n"), b"HTTP/1.0 400 Bad Request"),
        (_get("token={token}&v1=9", "Host: x\r\nHost: y\r\n"), b"HTTP/1.0 400 Bad Request"),
    ],
    ids=["connection-close", "content-length", "http-1.0", "fragment", "malformed-header", "no-host", "two-hosts"],
)
async def test_what_the_short_path_does_not_take_aiohttp_answers(tmp_path, request_, status):
    async with running(tmp_path / "short") as srv:
        dev = await _device(srv)
        reader, writer = await asyncio.open_connection(*srv.hardware.address)
        writer.write(request_.replace(b"{token}", dev.token.encode()))
        assert (await _answer(reader))[0] == status
        writer.close()
        assert srv.http.stats.short_path == 0
        values = srv.domain.device_by_token(dev.token).values
        if status.endswith(b"200 OK"):
            assert values["v1"][0] == b"9"
        else:
            assert "v1" not in values


async def test_after_aiohttp_has_read_a_connection_it_reads_the_rest(tmp_path):
    """Pipelined requests, a request split over two writes, then the short path's kind: every answer in
    order, all from aiohttp (its parser may hold part of a request, so the connection stays with it)."""
    async with running(tmp_path / "short") as srv:
        dev = await _device(srv)
        reader, writer = await asyncio.open_connection(*srv.hardware.address)
        first = _get(f"token={dev.token}&v1=1")
        writer.write(_get(f"token={dev.token}&v1=2") + first)
        assert [(await _answer(reader))[0] for _ in range(2)] == [OK, OK]
        split = _get(f"token={dev.token}&v1=3")
        writer.write(split[:20])
        await writer.drain()
        writer.write(split[20:])
        assert (await _answer(reader))[0] == OK
        writer.write(_get(f"token={dev.token}&v1=4"))
        assert (await _answer(reader))[0] == OK
        writer.close()
        assert srv.domain.device_by_token(dev.token).values["v1"][0] == b"4"
        assert srv.http.stats.short_path == 0


async def test_a_client_that_does_not_read_its_answers_is_aiohttps(tmp_path):
    """With the connection's writing paused (its answers not read), the next request goes to aiohttp,
    whose answer waits for the client to read: the short path never writes past the transport's limit."""
    async with running(tmp_path / "short") as srv:
        dev = await _device(srv)
        client = await DeviceClient.connect(*srv.hardware.address, dev.token)
        reader, writer = await asyncio.open_connection(*srv.hardware.address)
        try:
            writer.write(_get(f"token={dev.token}&v1=1"))
            assert (await _answer(reader))[0] == OK
            (handler,) = srv.http._runner.server.connections
            handler.pause_writing()  # what the transport does over its high-water mark
            writer.write(_get(f"token={dev.token}&v1=2"))
            await client.expect(lambda f: f[0] == Command.HARDWARE and f[-1] == b"vw\x001\x002")  # handled
            handler.resume_writing()
            assert (await _answer(reader))[0] == OK
            assert srv.http.stats.short_path == 1
        finally:
            writer.close()
            await client.close()


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(tmp_path):
    async with running(tmp_path / "short", http_keepalive_timeout=0.2) as srv:
        dev = await _device(srv)
        reader, writer = await asyncio.open_connection(*srv.hardware.address)
        for value in (1, 2):
            writer.write(_get(f"token={dev.token}&v1={value}"))
            assert (await _answer(reader))[0] == OK
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
        writer.close()
        assert srv.http.stats.short_path == 2


async def test_the_device_gets_the_value(tmp_path):
    """The write is delivered to the logged-in device, as through aiohttp."""
    async with running(tmp_path / "short") as srv:
        dev = await _device(srv)
        client = await DeviceClient.connect(*srv.hardware.address, dev.token)
        try:
            assert (await _exchange(srv, [_get(f"token={dev.token}&v1=17")]))[0][0] == OK
            assert srv.http.stats.short_path == 1
            frame = await client.expect(lambda f: f[0] == Command.HARDWARE)
            assert frame[-1] == b"vw\x001\x0017"
        finally:
            await client.close()
