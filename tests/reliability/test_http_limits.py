"""The HTTP door on the device port against hostile clients (issue 10, findings 3, 5, 10, 11).

Each attack gets its answer (a close, a 429, a 400 with a short message, a capped ``data/get``), the
server logs no traceback and no token, and a normal device still works afterwards: an HTTP update
then a get of its value, and a device on the binary protocol answers pings throughout.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import aiohttp
import pytest

from protocol import Command, Decoder, Status, encode_frame
from protocol.body import join_fields
from tests.conftest import ServerProcess

from .conftest import assert_no_traceback, connect, ping_rtt, read_pin, rss_bytes, write_acked

# Multi-second runs (attacks on the device port's HTTP limits, each waiting out a timeout or a cap): in the slow step of .ci/run, not the default run.
pytestmark = pytest.mark.slow

SPEC = ("pin=V1,type=int,min=0,max=100", "pin=V2,type=string", "pin=V5,type=int,history")
CLOSE_WAIT = 10.0  # generous bound for a close the server owes us


class Site:
    """A server with one template, its devices and HTTP helpers."""

    def __init__(self, srv) -> None:
        self.srv = srv
        srv.new_template("TMPLhttp", *SPEC)
        self.base = f"http://127.0.0.1:{srv.port}"
        self.admin = f"http://127.0.0.1:{srv.admin_port}"
        self._normal: tuple[str, str] | None = None  # (HTTP device, binary-protocol device), made once

    def token(self) -> str:
        return self.srv.new_device("TMPLhttp")

    def ext(self, token: str, path: str, query: str = "") -> str:
        return f"{self.base}/external/api/{path}?token={token}" + (f"&{query}" if query else "")

    async def metric(self, name: str) -> float:
        """The sum of a metric's samples on ``/metrics``."""
        async with aiohttp.ClientSession() as s, s.get(f"{self.admin}/metrics") as resp:
            text = await resp.text()
        return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))

    async def device_still_works(self) -> None:
        """A normal device: HTTP update then get of its value (from another source address than the
        attacks, which all come from 127.0.0.1); on the binary protocol, a ping, a write and a read."""
        if self._normal is None:
            self._normal = (self.token(), self.token())
        http_token, binary_token = self._normal
        value = str(time.monotonic_ns() % 100)
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector) as s:
            async with s.get(self.ext(http_token, "update", f"v1={value}")) as resp:
                assert resp.status == 200, await resp.text()
            async with s.get(self.ext(http_token, "get", "v1")) as resp:
                assert (resp.status, await resp.text()) == (200, value)
        dev = await connect(self.srv, binary_token)
        try:
            await ping_rtt(dev)
            await write_acked(dev, 1, value)
            assert await read_pin(dev, 1) == value.encode()
        finally:
            await dev.close()


@pytest.fixture
def site(make_server):
    def make(**env: str) -> Site:
        return Site(make_server(env={f"BLYNK_{k.upper()}": v for k, v in env.items()}))

    return make


async def _open(site: Site, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", site.srv.port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def _closed_by_server(reader: asyncio.StreamReader, wait: float = CLOSE_WAIT) -> bytes:
    """Everything the server sends until it closes; fails (TimeoutError) if it does not close within
    ``wait``. A reset is a close too: the kernel answers with one when the server closes a socket
    holding bytes it did not read (a trickled byte that came just before the deadline)."""
    try:
        return await asyncio.wait_for(reader.read(), wait)
    except ConnectionResetError:
        return b""


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSE_WAIT)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), CLOSE_WAIT)
    return int(lines[0].split()[1]), headers, body


def _get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


async def test_slow_headers_are_closed(site):
    s = site(http_header_timeout="0.3")
    token = s.token()
    # Many connections that never finish their headers: each is closed by the server.
    partial = [await _open(s, f"GET /external/api/get?token={token}&v1 HTTP/1.1\r\nHost:".encode()) for _ in range(20)]
    # One that trickles a byte at a time: data does not extend its deadline.
    reader, writer = await _open(s, b"GET /")
    trickled = b""
    while True:
        try:
            trickled = await _closed_by_server(reader, 0.05)
            break
        except TimeoutError:
            writer.write(b"a")  # the attacker's pace
    assert trickled == b""
    # A keep-alive connection: the first request is answered, the next one's slow headers are timed too.
    ka_reader, ka_writer = await _open(s, _get(f"/external/api/isHardwareConnected?token={token}"))
    assert (await _response(ka_reader))[0] == 200
    ka_writer.write(b"GET /external/api/get?")
    assert await _closed_by_server(ka_reader) == b""
    for r, w in partial:
        assert await _closed_by_server(r) == b""
        w.close()
    writer.close()
    ka_writer.close()
    assert await s.metric("blynk_http_header_timeouts_total") >= 22
    await s.device_still_works()
    assert_no_traceback(s.srv)


async def test_stalled_body_is_closed_and_a_normal_body_is_not(site):
    s = site(http_header_timeout="0.3")
    token = s.token()
    head = f"POST /external/api/batch/update?token={token}&pin=v5 HTTP/1.1\r\nHost: x\r\n"
    head += "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    reader, writer = await _open(s, head.encode() + b"[[1,")  # then nothing more: a stalled body
    assert await _closed_by_server(reader) == b""
    writer.close()
    assert await s.metric("blynk_http_body_timeouts_total") == 1
    # A body that comes at once is not affected, nor is a WebSocket session (no body: never watched)
    # that outlives several checking periods.
    async with aiohttp.ClientSession() as session:
        points = [[_now() - i, i] for i in range(2000)]
        async with session.post(s.ext(token, "batch/update", "pin=v5"), json=points) as resp:
            assert (resp.status, await resp.text()) == (200, "OK")
        async with session.ws_connect(f"{s.base}/websocket") as ws:
            await ws.send_bytes(encode_frame(Command.HW_LOGIN, 1, s.token().encode()))
            assert (await _ws_answer(ws, 1))[2] == Status.SUCCESS
            await asyncio.sleep(1.0)  # three checking periods with nothing sent: the session must live on
            await ws.send_bytes(encode_frame(Command.PING, 2, b""))
            assert (await _ws_answer(ws, 2))[2] == Status.SUCCESS
    await s.device_still_works()


async def _ws_answer(ws: aiohttp.ClientWebSocketResponse, msg_id: int) -> tuple[int, int, object]:
    decoder = Decoder()
    while True:
        msg = await asyncio.wait_for(ws.receive(), CLOSE_WAIT)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        for frame in decoder.feed(msg.data):
            if frame[1] == msg_id:
                return frame


async def test_websocket_device_that_does_not_read_is_bounded_then_closed(site):
    """A WebSocket device asks for a 1 KB value 100,000 times (100 MB of replies) and reads none: the
    bytes queued toward it pause its session (``write_buffer_high``), and once output has been blocked
    past its heartbeat timeout the session is closed. Server memory stays within 60 MB of its start."""
    s = site(write_buffer_high="8192", message_rate="1000000")
    token, bystander = s.token(), s.token()
    rss_before = rss_bytes(s.srv.proc.pid)
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{s.base}/websocket") as ws:
        await ws.send_bytes(encode_frame(Command.HW_LOGIN, 1, token.encode()))
        assert (await _ws_answer(ws, 1))[2] == Status.SUCCESS
        info = join_fields("h-beat", "1", "buff-in", "2048")  # read timeout ceil(1 × 2.3) = 3 s
        await ws.send_bytes(encode_frame(Command.INTERNAL, 2, info) + encode_frame(Command.PING, 3, b""))
        assert (await _ws_answer(ws, 3))[2] == Status.SUCCESS
        await ws.send_bytes(encode_frame(Command.HARDWARE, 4, b"vw\x002\x00" + b"x" * 1000))
        sync = encode_frame(Command.HARDWARE_SYNC, 5, b"vr\x002") * 3000

        async def flood() -> None:
            for _ in range(33):  # blocks once the server stops reading us: that is the point
                await ws.send_bytes(sync)

        sender = asyncio.create_task(flood())
        try:
            online = "true"
            for _ in range(300):  # the close is the server's; it shows as the device going offline
                async with session.get(s.ext(bystander, "isHardwareConnected")) as resp:
                    assert resp.status == 200  # the server answers others meanwhile
                async with session.get(s.ext(token, "isHardwareConnected")) as resp:
                    online = await resp.text()
                if online == "false":
                    break
                await asyncio.sleep(0.05)
            assert online == "false"
        finally:
            sender.cancel()
            await asyncio.wait([sender])
    assert rss_bytes(s.srv.proc.pid) - rss_before < 60 * 2**20
    await s.device_still_works()
    assert_no_traceback(s.srv)


async def test_idle_keep_alive_is_closed(site):
    s = site(http_keepalive_timeout="0.3")
    reader, writer = await _open(s, _get(f"/external/api/isHardwareConnected?token={s.token()}"))
    status, headers, _ = await _response(reader)
    assert status == 200 and headers.get("connection", "").lower() != "close"
    assert await _closed_by_server(reader) == b""
    writer.close()
    await s.device_still_works()


async def test_connections_per_ip_over_the_cap_get_429(site):
    s = site(http_connections_per_ip="3")
    token = s.token()
    held = []
    for _ in range(3):  # three keep-alive connections, idle after one request each
        reader, writer = await _open(s, _get(f"/external/api/isHardwareConnected?token={token}"))
        assert (await _response(reader))[0] == 200
        held.append((reader, writer))
    reader, writer = await _open(s, _get(f"/external/api/isHardwareConnected?token={token}"))
    status, headers, body = await _response(reader)
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert json.loads(body) == {"error": {"message": "Too many connections from this address."}}
    assert await _closed_by_server(reader) == b""
    writer.close()
    assert await s.metric("blynk_http_connections_refused_total") == 1
    await s.device_still_works()  # another address is not limited by this one's connections
    # When one of the three ends (the server closes it after a "Connection: close" request), the address
    # may connect again.
    reader, writer = held.pop()
    writer.write(_get(f"/external/api/isHardwareConnected?token={token}", "Connection: close\r\n"))
    assert (await _response(reader))[0] == 200 and await _closed_by_server(reader) == b""
    for _ in range(100):  # the server's bookkeeping of that close may trail the client's EOF slightly
        async with aiohttp.ClientSession() as session, session.get(s.ext(token, "isHardwareConnected")) as resp:
            if resp.status == 200:
                break
        await asyncio.sleep(0.02)
    assert resp.status == 200
    for _, w in held:
        w.close()


async def test_request_rate_per_device_is_429_with_retry_after(site):
    s = site(http_request_rate="0.1", http_request_burst="3")
    hot, other = s.token(), s.token()
    async with aiohttp.ClientSession() as session:
        for i in range(3):
            async with session.get(s.ext(hot, "update", f"v1={i}")) as resp:
                assert resp.status == 200
        async with session.get(s.ext(hot, "get", "v1")) as resp:
            assert resp.status == 429
            assert int(resp.headers["Retry-After"]) >= 1
            assert (await resp.json())["error"]["message"].startswith("Too many requests")
        async with session.get(f"{s.base}/{hot}/get/V1") as resp:  # the legacy API shares the budget
            assert resp.status == 429 and resp.content_type == "text/plain"
            assert int(resp.headers["Retry-After"]) >= 1
            assert (await resp.text()).startswith("Too many requests")
        async with session.get(s.ext(other, "update", "v1=7")) as resp:  # another device has its own
            assert resp.status == 200
    assert await s.metric("blynk_http_throttled_total") == 2
    assert hot not in s.srv.stderr()
    await s.device_still_works()


async def _flush(s: Site, token: str) -> None:
    """Wait until the write-behind store has written what is pending (the admin events call flushes)."""
    headers = {"X-API-Key": s.srv.api_key}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(f"{s.admin}/api/devices") as resp:
            did = next(d["id"] for d in await resp.json() if d["token"] == token)
        async with session.get(f"{s.admin}/api/devices/{did}/events") as resp:
            assert resp.status == 200


async def test_data_get_is_capped(site):
    s = site(data_get_max_points="100")
    token = s.token()
    minute = (time.time_ns() // 1_000_000 - 3600_000) // 60_000 * 60_000
    points = [[minute + i * 10_000, i] for i in range(250)]  # every 10 s: 250 points in 42 minutes
    async with aiohttp.ClientSession() as session:
        async with session.post(s.ext(token, "batch/update", "pin=v5"), json=points) as resp:
            assert (resp.status, await resp.text()) == (200, "OK")
        await _flush(s, token)
        async with session.get(s.ext(token, "data/get", "pin=v5&period=DAY&output=JSON")) as resp:
            raw = await resp.json()
        assert raw["rows"] == len(raw["data"]) == 100 < raw["rows_before_limit_at_least"]
        assert [r["value"] for r in raw["data"]] == list(range(100))  # the oldest points of the period
        q = "pin=v5&period=DAY&granularityType=MINUTE&sourceType=COUNT&output=JSON"
        async with session.get(s.ext(token, "data/get", q)) as resp:
            per_minute = await resp.json()
        # 42 one-minute buckets (6 points each, 4 in the last): fewer than the cap, all of them
        assert per_minute["rows"] == per_minute["rows_before_limit_at_least"] == 42
        assert sum(r["value"] for r in per_minute["data"]) == 250
    await s.device_still_works()
    assert_no_traceback(s.srv)


HUGE = "9" * 5000  # over Python's 4,300-digit int() limit
BIG = "9" * 4000  # under it, far over 64 bits
TS_OVER = 9_223_372_036_854_775_808  # 2^63: used to kill the store's writer


def _now() -> int:
    return time.time_ns() // 1_000_000


# (method, path template, JSON body or None, expected status); {t} is a token, {d} the device id.
HOSTILE = {
    "dataStreamId huge (get)": ("GET", "/external/api/get?token={t}&dataStreamId=" + HUGE, None, 400),
    "dataStreamId big (update)": ("GET", "/external/api/update?token={t}&dataStreamId=" + BIG + "&value=1", None, 400),
    "dataStreamId unicode digits": ("GET", "/external/api/get?token={t}&dataStreamId=%D9%A1", None, 400),
    "dataStreamId (data/get)": ("GET", "/external/api/data/get?token={t}&output=JSON&dataStreamId=" + HUGE, None, 400),
    "pin huge": ("GET", "/external/api/update?token={t}&pin=v" + HUGE + "&value=1", None, 400),
    "bare pin huge": ("GET", "/external/api/get?token={t}&v" + HUGE, None, 400),
    "value huge": ("GET", "/external/api/update?token={t}&v1=" + HUGE, None, 400),
    "value 1e999": ("GET", "/external/api/update?token={t}&v1=1e999", None, 400),
    "too many bare pins": ("GET", "/external/api/update?token={t}&" + "&".join(f"v{i}=1" for i in range(200)), None, 400),
    "batch ts 2^63": ("POST", "/external/api/batch/update?token={t}&pin=v5", [[TS_OVER, 3]], 400),
    "batch ts huge": ("POST", "/external/api/batch/update?token={t}&pin=v5", "[[" + HUGE + ",3]]", 400),
    "batch ts negative": ("POST", "/external/api/batch/update?token={t}&pin=v5", [[-1, 3]], 400),
    "batch value 2^63": ("POST", "/external/api/batch/update?token={t}&pin=v2", [[_now(), TS_OVER]], 400),
    "batch value big": ("POST", "/external/api/batch/update?token={t}&pin=v2", f"[[{_now()},{BIG}]]", 400),
    "batch value 1e999": ("POST", "/external/api/batch/update?token={t}&pin=v5", f"[[{_now()},1e999]]", 400),
    "batch value NaN": ("POST", "/external/api/batch/update?token={t}&pin=v5", f"[[{_now()},NaN]]", 400),
    "batch nested deep": ("POST", "/external/api/batch/update?token={t}&pin=v5", "[" * 100_000, 400),
    "legacy pin huge": ("GET", "/{t}/get/V" + HUGE, None, 400),
    "legacy extra ts 2^63": ("PUT", "/{t}/extra/pin/V5", [{"timestamp": TS_OVER, "value": 1}], 400),
    "legacy extra ts huge": ("PUT", "/{t}/extra/pin/V5", '[{"timestamp":' + HUGE + ',"value":1}]', 400),
    "legacy update huge": ("PUT", "/{t}/update/V1", "[" + HUGE + "]", 400),
    "legacy update big": ("PUT", "/{t}/update/V2", "[" + BIG + "]", 400),
    "legacy update 1e999": ("PUT", "/{t}/update/V1", "[1e999]", 400),
    "admin id huge": ("GET", "admin:/api/devices/" + HUGE, None, 404),
    "admin id big": ("GET", "admin:/api/devices/" + BIG + "/values", None, 404),
    "admin id 2^63": ("DELETE", "admin:/api/devices/" + str(TS_OVER), None, 404),
    "admin events limit": ("GET", "admin:/api/devices/{d}/events?limit=" + HUGE, None, 400),
    "admin value big": ("PUT", "admin:/api/devices/{d}/values/V2", '{"value":' + BIG + "}", 400),
    "admin value huge": ("PUT", "admin:/api/devices/{d}/values/V2", '{"value":' + HUGE + "}", 400),
    "admin min 1e999": ("PUT", "admin:/api/templates/TMPLhttp/datastreams/V9", '{"type":"int","min":1e999}', 400),
    "admin min big": ("PUT", "admin:/api/templates/TMPLhttp/datastreams/V9", '{"type":"int","min":' + BIG + "}", 400),
    "admin enum big": ("PUT", "admin:/api/templates/TMPLhttp/datastreams/V9", '{"type":"enum","enum_values":[' + BIG + "]}", 400),
}  # fmt: skip


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("hostile") / "data").start()
    s = Site(srv)
    token = s.token()
    did = json.loads(srv.cli("device", "show", token).stdout)["id"]
    yield s, token, did
    srv.kill()


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
async def test_numbers_of_any_length_get_400(hostile_site, case):
    s, token, did = hostile_site
    method, path, body, expected = HOSTILE[case]
    base, headers = s.base, {}
    if path.startswith("admin:"):
        base, path, headers = s.admin, path[len("admin:") :], {"X-API-Key": s.srv.api_key}
    url = base + path.replace("{t}", token).replace("{d}", str(did))
    kw: dict = {"headers": headers}
    if body is not None:
        kw["data"] = body if isinstance(body, str) else json.dumps(body)
        headers["Content-Type"] = "application/json"
    async with aiohttp.ClientSession() as session, session.request(method, url, **kw) as resp:
        status, text = resp.status, await resp.text()
    assert status == expected, text[:300]
    message = json.loads(text)["error"]["message"] if text.startswith("{") else text
    assert 0 < len(message) < 120 and "digits" not in message and "Traceback" not in message, message
    assert_no_traceback(s.srv)
    await s.device_still_works()


async def test_store_keeps_flushing_after_hostile_numbers(hostile_site):
    """After every case above, the store still writes: a point sent now is in data/get."""
    s, token, _ = hostile_site
    async with aiohttp.ClientSession() as session:
        async with session.post(s.ext(token, "batch/update", "pin=v5"), json=[[_now() - 1000, 77]]) as resp:
            assert resp.status == 200
        await _flush(s, token)
        async with session.get(s.ext(token, "data/get", "pin=v5&period=HOUR&output=JSON")) as resp:
            assert [r["value"] for r in (await resp.json())["data"]] == [77]


async def test_no_token_in_the_log(hostile_site):
    """Error lines of the legacy API (whose paths hold the token) and of the device API name routes."""
    s, token, _ = hostile_site
    async with aiohttp.ClientSession() as session:
        for url in (
            f"{s.base}/{token}/get/X1",
            f"{s.base}/{token}/update/V1?value=abc",
            f"{s.base}/{token}/get/V77",
            s.ext(token, "update", "v1=abc"),
            s.ext(token, "data/get", "pin=v1&output=JSON"),
        ):
            async with session.get(url) as resp:
                assert resp.status in (400, 500)
    log = s.srv.stderr()
    assert "route=/{token}/get/{pin}" in log
    assert token not in log


async def test_request_floods_do_not_flood_the_log_or_the_metrics(hostile_site):
    """Invalid tokens at full speed: at most 20 error lines per 10 s. Made-up methods never become metric
    labels (aiohttp's C parser refuses them; its Python parser does not, and they count as "other")."""
    s, _, _ = hostile_site
    before = s.srv.stderr().count("http error")
    async with aiohttp.ClientSession() as session:
        for i in range(300):
            async with session.get(s.ext(f"bad{i}", "get", "v1")) as resp:
                assert resp.status == 400
    assert s.srv.stderr().count("http error") - before <= 20
    for i in range(30):
        reader, writer = await _open(s, f"POSTX{i} /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        status, _, _ = await _response(reader)
        assert 400 <= status < 500
        writer.close()
    async with aiohttp.ClientSession() as session, session.get(f"{s.admin}/metrics") as resp:
        text = await resp.text()
    assert "POSTX" not in text, [line for line in text.splitlines() if "POSTX" in line][:3]
    await s.device_still_works()


async def test_malformed_requests_get_400_without_traceback_or_token(hostile_site):
    """What aiohttp cannot parse (an over-long URL holding a token, a bad URL, a bad version, a bad method
    on a kept-alive connection) is answered 4xx by aiohttp and closed, counted, and logged as one short line."""
    s, token, _ = hostile_site
    before = await s.metric("blynk_http_bad_requests_total")
    cases = [
        f"GET /external/api/get?token={token}&v1={'9' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"GET /{token}/get/V1\x01 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"GET /{token}/get/V1 HTTP/9.Z\r\nHost: x\r\n\r\n".encode(),
        _get(f"/external/api/isHardwareConnected?token={token}") + b"\x00\x01\x02 / HTTP/1.1\r\n\r\n",
    ]
    for raw in cases:
        reader, writer = await _open(s, raw)
        answers = []
        while True:
            try:
                answers.append((await _response(reader))[0])
            except asyncio.IncompleteReadError:
                break  # closed by the server after its answer
        assert answers[-1] in (400, 414, 431), answers
        writer.close()
    assert await s.metric("blynk_http_bad_requests_total") - before == len(cases)
    log = s.srv.stderr()
    assert token not in log
    assert_no_traceback(s.srv)
    await s.device_still_works()


async def test_a_client_that_hangs_up_mid_body_leaves_no_traceback(hostile_site):
    """A body cut short by the client closing (found by the fuzzer): the handler's read fails with
    ConnectionResetError, which is the client's doing, not an error of the server."""
    s, token, _ = hostile_site
    for path in (f"/external/api/batch/update?token={token}&pin=v1", f"/{token}/update/V1"):
        method = "POST" if "batch" in path else "PUT"
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 65535\r\n\r\n"
        reader, writer = await _open(s, head.encode() + b"[[-1, 1]]")
        writer.close()
        await writer.wait_closed()
    await s.device_still_works()  # by then the server has seen both closes
    assert_no_traceback(s.srv)
    assert token not in s.srv.stderr()
