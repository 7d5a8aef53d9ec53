"""``python -m benchmarks.fuzz --frames 1000000``: random and mutated frame sequences against a live server.

Many connections at once (each from a random 127.0.0.x source, so per-IP budgets do not end the run)
play *sessions*: mostly a valid login, the info message and up to a few hundred frames of every
command the server knows (HARDWARE vw/vr/dw/pm, HARDWARE_SYNC, INTERNAL info/utc/rtc/meta/ota,
PROPERTY, EVENT_LOG, EVENT_CLEAR, GROUP, BRIDGE, LOGIN again, ...) with bodies built to be almost
right and then mutated (huge digit strings, NULs, non-UTF-8, truncation, lying length fields, unknown
command codes); sometimes garbage before any login, or an HTTP-looking request on the same port.

Meanwhile a control device on 127.0.0.1 pings every 50 ms, the server's RSS is sampled and its log is
watched for "Traceback". A traceback is replayed session by session to find the one that causes it,
which is then shrunk frame by frame; the reproducer (hex) and the traceback go to the findings file.
At the end the control device writes a value, the server is stopped with SIGTERM and started again,
and the value must be read back.

This module imports only ``protocol``, ``blynk_server.testing`` and the standard library so the tests
can load it by path (``tests/reliability/test_fuzz.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from blynk_server.testing import rss_bytes
from protocol import Command, Decoder, Status, encode_frame
from protocol.body import join_fields

# --- generation --------------------------------------------------------------------------------------

KNOWN = [int(c) for c in Command]
UNKNOWN = [c for c in range(256) if c not in KNOWN]
FUZZ_TEMPLATE = "TMPLfuzz01"
FUZZ_DATASTREAMS = (
    "pin=V0,name=Switch,type=int,min=0,max=1,sync",
    "pin=V1,name=Temp,type=double,min=-40,max=85,history,sync",
    "pin=V2,name=Text,type=string",
    "pin=V3,name=Level,type=int,min=0,max=100",
    "pin=V4,name=Where,type=location",
    "pin=V5,name=Mode,type=enum,enum=0|1|2",
    "pin=V6,name=Counter,type=int,min=0,max=1e15",
)
UTC_ARGS = [b"time", b"iso", b"tz", b"tz_name", b"tz_rule", b"dst_next", b"", b"bogus"]
MAX_BODY = 32768  # the server's default max_frame: larger bodies close the connection
INFO_KEYS = [b"mcu", b"fw-type", b"build", b"blynk", b"h-beat", b"buff-in", b"dev", b"tmpl", b"fw", b"con", b"ncp"]
HTTP_PATHS = [
    "/external/api/update?token={t}&v1={n}",
    "/external/api/update?token={t}&pin=v{p}&value={n}",
    "/external/api/get?token={t}&v{p}",
    "/external/api/getAll?token={t}",
    "/external/api/batch/update?token={t}&v1={n}&v2={s}",
    "/external/api/update/property?token={t}&pin=v{p}&label={s}",
    "/external/api/logEvent?token={t}&code={s}&description={s}",
    "/external/api/isHardwareConnected?token={t}",
    "/external/api/data/get?token={t}&dataStreamId={p}&period=MONTH&granularityType={g}&output=JSON",
    "/external/api/device/meta?token={t}&metaFieldId={s}",
    "/{t}/update/V{p}?value={n}",
    "/{t}/get/V{p}",
    "/{t}/isHardwareConnected",
    "/websocket",
    "/",
    "/{s}",
]


BODY_PATHS = [  # routes whose handlers read a JSON body
    "/external/api/batch/update?token={t}&pin=v{p}",
    "/{t}/update/V{p}",
    "/{t}/extra/pin/V{p}",
]


def raw_frame(cmd: int, msg_id: int, body: bytes) -> bytes:
    """A frame with any msg id (0 included) and the body's true length: encode_frame refuses some."""
    return bytes([cmd & 0xFF]) + (msg_id & 0xFFFF).to_bytes(2, "big") + len(body).to_bytes(2, "big") + body


def raw_response(msg_id: int, status: int) -> bytes:
    return b"\0" + (msg_id & 0xFFFF).to_bytes(2, "big") + (status & 0xFFFF).to_bytes(2, "big")


class Gen:
    """A seeded generator of frames and sessions (``tokens`` valid, for logins and bridges)."""

    def __init__(self, rnd: random.Random, tokens: list[str]) -> None:
        self.r = rnd
        self.tokens = tokens

    # small pieces
    def number(self) -> bytes:
        r = self.r
        k = r.random()
        if k < 0.5:
            return str(r.choice([0, 1, -1, 42, 100, 255, 256, 65535, 2**31, 2**63 - 1])).encode()
        if k < 0.7:
            return r.choice([b"1.5", b"-0.0", b"1e308", b"1e309", b"nan", b"inf", b"-inf", b"0x10", b" 1", b"1,5", b""])
        if k < 0.85:
            return str(r.choice([2**63, 2**64, -(2**63) - 1, 10**30])).encode()
        return r.choice([b"", b"-"]) + b"9" * r.choice([19, 20, 300, 4300, 4301, 5000, 20000])

    def pin(self) -> bytes:
        r = self.r
        k = r.random()
        if k < 0.7:
            return str(r.randint(0, 8)).encode()
        if k < 0.85:
            return r.choice([b"255", b"256", b"-1", b"V1", b"v1", b"A0", b"D13", b"x", b"", b"1 ", b"\xff"])
        return self.number()

    def text(self, n: int | None = None) -> bytes:
        r = self.r
        n = r.choice([0, 1, 5, 30, 300, 1100, 30000]) if n is None else n
        k = r.random()
        if k < 0.6:
            return bytes(r.choice(b"abcxyz019_-. ") for _ in range(min(n, 64))) * max(1, n // 64)
        if k < 0.8:
            return r.randbytes(min(n, 4096))
        return "é€😀".encode() * max(1, n // 9) + b"\xff\xfe\xc3"

    def value(self) -> bytes:
        return self.number() if self.r.random() < 0.6 else self.text()

    def token(self) -> bytes:
        r = self.r
        k = r.random()
        if k < 0.6 and self.tokens:
            return r.choice(self.tokens).encode()
        if k < 0.8:
            return os.urandom(16).hex().encode() if r.random() < 0.5 else r.randbytes(32).hex().encode()
        return r.choice([b"", b" ", b"\0" * 32, self.text(), b"x" * 40000])

    # bodies per command
    def body(self, cmd: int) -> bytes:
        r = self.r
        C = Command
        if cmd == C.HARDWARE:
            op = r.choice([b"vw", b"vw", b"vw", b"vr", b"dw", b"dr", b"aw", b"ar", b"pm", b"Vw", b"xx", b"v", b""])
            if op == b"pm":
                pairs = [
                    x for _ in range(r.randint(0, 20)) for x in (self.pin(), r.choice([b"in", b"out", b"pu", b"x"]))
                ]
                return join_fields(op, *pairs)
            return join_fields(op, self.pin(), *[self.value() for _ in range(r.choice([0, 1, 1, 1, 2, 5]))])
        if cmd == C.HARDWARE_SYNC:
            if r.random() < 0.15:
                return b""
            op = r.choice([b"vr", b"vr", b"dr", b"ar", b"vw", b"xr"])
            return join_fields(op, *[self.pin() for _ in range(r.choice([1, 2, 5, 100, 3000]))])
        if cmd == C.INTERNAL:
            sub = r.choice(["info", "utc", "utc", "rtc", "meta", "meta", "ota", "dbg", "acon", "vfs", "x", ""])
            if sub == "info":
                keys = r.sample(INFO_KEYS, r.randint(1, len(INFO_KEYS)))
                vals = [self.number() if k in (b"h-beat", b"buff-in") else self.text(r.choice([3, 20])) for k in keys]
                return join_fields(*[x for kv in zip(keys, vals, strict=True) for x in kv])
            if sub == "utc":
                return join_fields("utc", *[r.choice(UTC_ARGS) for _ in range(r.choice([0, 1, 2, 50]))])
            if sub == "meta":
                act = r.choice([b"get", b"set", b"del", b""])
                return join_fields("meta", act, *[self.text(r.choice([0, 5, 300])) for _ in range(r.randint(0, 3))])
            if sub == "ota":
                return join_fields("ota", *[self.text(10) for _ in range(r.randint(0, 3))])
            return join_fields(sub, *[self.value() for _ in range(r.randint(0, 3))])
        if cmd == C.PROPERTY:
            pins = [self.pin() for _ in range(r.choice([1, 1, 2, 10]))]
            name = r.choice([b"label", b"color", b"min", b"max", b"isHidden", b""]) + (
                self.text(r.choice([0, 3, 100])) if r.random() < 0.3 else b""
            )
            return join_fields(*pins, name, *[self.value() for _ in range(r.choice([0, 1, 1, 3]))])
        if cmd == C.EVENT_LOG:
            return join_fields(self.text(r.choice([1, 10, 64, 65, 1000])), *([self.text()] if r.random() < 0.7 else []))
        if cmd == C.EVENT_CLEAR:
            return join_fields(self.text(r.choice([0, 1, 10, 100])), *([b"all"] if r.random() < 0.4 else []))
        if cmd == C.GROUP:
            return r.choice([b"b", b"e", join_fields("t", self.number()), b"t", b"x", join_fields("b", "1")])
        if cmd == C.BRIDGE:
            if r.random() < 0.4:
                return join_fields(self.pin(), "i", self.token())
            return join_fields(self.pin(), r.choice([b"vw", b"dw", b"vr", b"aw"]), self.pin(), self.value())
        if cmd in (C.LOGIN, C.HW_LOGIN):
            return self.token()
        if cmd == C.PING:
            return b"" if r.random() < 0.8 else self.text(5)
        return self.text(r.choice([0, 5, 100, 1000]))

    def mutate(self, data: bytes) -> bytes:
        r = self.r
        b = bytearray(data)
        for _ in range(r.choice([1, 1, 2, 3])):
            k = r.randrange(8)
            pos = r.randint(0, len(b))
            if k == 0 and b:
                b[min(pos, len(b) - 1)] ^= 1 << r.randrange(8)
            elif k == 1:
                b[pos:pos] = b"\0" * r.choice([1, 1, 2, 50])
            elif k == 2 and b:
                del b[pos : pos + r.randint(1, 20)]
            elif k == 3:
                b[pos:pos] = r.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00\xff", b"%", b"\\"])
            elif k == 4:
                b[pos:pos] = b"9" * r.choice([20, 4301, 10000])
            elif k == 5 and b:
                end = min(len(b), pos + r.randint(1, 64))
                b[pos:pos] = b[pos:end] * r.choice([2, 10, 100])
            elif k == 6:
                del b[pos:]
            else:
                b[pos:pos] = r.randbytes(r.randint(1, 8))
        return bytes(b[:65535])

    def command(self) -> int:
        r = self.r
        k = r.random()
        if k < 0.3:
            return Command.HARDWARE
        if k < 0.9:
            return r.choice(
                [
                    Command.HARDWARE_SYNC,
                    Command.INTERNAL,
                    Command.INTERNAL,
                    Command.PROPERTY,
                    Command.EVENT_LOG,
                    Command.EVENT_CLEAR,
                    Command.GROUP,
                    Command.GROUP,
                    Command.BRIDGE,
                    Command.BRIDGE,
                    Command.LOGIN,
                    Command.HW_LOGIN,
                    Command.PING,
                    Command.RESPONSE,
                    Command.REDIRECT,
                    Command.DEBUG_PRINT,
                    Command.TWEET,
                    Command.EMAIL,
                    Command.NOTIFY,
                    Command.SMS,
                    Command.REGISTER,
                ]
            )
        return r.choice(UNKNOWN)

    def frame(self, fatal: bool = False) -> bytes:
        """One frame (or something shaped like one). Bodies stay within the server's default frame limit
        unless ``fatal``: then the length field lies or the body is over the limit, which ends a session."""
        r = self.r
        cmd = self.command()
        msg_id = r.choice([0, 1, r.randint(1, 0xFFFF), 0xFFFF])
        if cmd == Command.RESPONSE:
            return raw_response(msg_id, r.choice([0, 1, 2, 9, 200, 0xFFFF, r.randint(0, 0xFFFF)]))
        body = self.body(cmd)
        if r.random() < 0.3:
            body = self.mutate(body)
        if not fatal:
            return raw_frame(cmd, msg_id, body[:MAX_BODY])
        if r.random() < 0.5:  # a length field that lies (longer or shorter than the body that follows)
            n = r.choice([0, 1, len(body) + r.randint(1, 100), 0xFFFF, max(0, len(body) - 3)])
            return bytes([cmd]) + msg_id.to_bytes(2, "big") + min(n, 0xFFFF).to_bytes(2, "big") + body[:65535]
        return raw_frame(cmd, msg_id, (body * (1 + 65535 // max(1, len(body))))[: r.randint(MAX_BODY + 1, 65535)])

    def http(self) -> bytes:
        r = self.r
        method = r.choice(["GET", "GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "PATCH", "TRACE", "CONNECT"])
        routes = BODY_PATHS if method in ("POST", "PUT") and r.random() < 0.5 else HTTP_PATHS
        path = r.choice(routes).format(
            t=self.token().decode("latin-1")[:100],
            n=self.number().decode("latin-1")[:5000],
            p=self.pin().decode("latin-1")[:50],
            s=self.text(r.choice([1, 10, 300])).decode("latin-1")[:300].replace(" ", "%20"),
            g=r.choice(["RAW_DATA", "MINUTE", "HOURLY", "DAILY", "X"]),
        )
        body = b""
        headers = [b"Host: 127.0.0.1"]
        if method in ("POST", "PUT"):
            body = json.dumps([[r.choice([int(time.time() * 1000), 2**63, -1, 10**30]), 1]]).encode()
            headers.append(b"Content-Type: application/json")
            k = r.random()  # exact; longer than what follows (the client then hangs up mid-body); any number
            length = str(len(body) + (r.randint(1, 100) if 0.7 <= k < 0.85 else 0)).encode() if k < 0.85 else None
            headers.append(b"Content-Length: " + (length or self.number()))
        if r.random() < 0.2:
            headers.append(b"Range: bytes=" + self.number() + b"-" + self.number())
        if r.random() < 0.1:
            headers.append(b"Upgrade: websocket")
            headers.append(b"Connection: Upgrade")
        req = f"{method} {path} HTTP/1.1\r\n".encode("latin-1") + b"\r\n".join(headers) + b"\r\n\r\n" + body
        return self.mutate(req) if r.random() < 0.3 else req

    def session(self) -> tuple[str, Iterator[bytes]]:
        """(kind, frames): what one connection sends, generated lazily (a session the server closes
        early costs no generation for the frames it never gets)."""
        r = self.r
        k = r.random()
        if k < 0.05:
            return "prelogin", (self.frame(fatal=r.random() < 0.2) for _ in range(r.randint(1, 5)))
        if k < 0.08:
            return "garbage", iter([r.randbytes(r.randint(1, 2000))])
        if k < 0.15:
            return "http", (self.http() for _ in range(r.choice([1, 1, 2, 5])))
        if k < 0.18:
            login = raw_frame(r.choice([Command.LOGIN, Command.HW_LOGIN]), r.randint(0, 0xFFFF), self.token())
            return "badlogin", itertools.chain([self.mutate(login)], (self.frame() for _ in range(r.randint(0, 10))))
        return "device", self._device()

    def _device(self) -> Iterator[bytes]:
        r = self.r
        token = r.choice(self.tokens).encode() if self.tokens else self.token()
        yield raw_frame(r.choice([Command.HW_LOGIN, Command.HW_LOGIN, Command.LOGIN]), 1, token)
        if r.random() < 0.8:
            yield raw_frame(Command.INTERNAL, 2, self.body(Command.INTERNAL) if r.random() < 0.3 else INFO)
        for _ in range(r.choice([1, 10, 50, 100, 300])):
            yield self.frame()
        k = r.random()
        if k < 0.05:  # end mid-frame
            last = self.frame()
            yield last[: r.randint(1, max(1, len(last) - 1))]
        elif k < 0.1:
            yield self.frame(fatal=True)


INFO = join_fields("mcu", "1.0.0", "fw-type", "TMPL", "blynk", "1.4.0", "h-beat", "40", "buff-in", "1024", "dev", "fz")


# --- the run -----------------------------------------------------------------------------------------


@dataclass
class Played:
    kind: str
    frames: list[bytes]
    src: str
    t0: float
    t1: float = 0.0


@dataclass
class Result:
    frames: int = 0  # written whole to a socket
    generated: int = 0  # generated (the server may close a connection before all of its frames are written)
    sessions: int = 0
    elapsed: float = 0.0
    kinds: collections.Counter = field(default_factory=collections.Counter)
    tracebacks: list[dict] = field(default_factory=list)
    rss_start_mb: float = 0.0
    rss_max_mb: float = 0.0
    rss_end_mb: float = 0.0
    control_pings: int = 0
    control_p50_ms: float | None = None
    control_p99_ms: float | None = None
    control_max_ms: float | None = None
    control_failures: list[str] = field(default_factory=list)
    server_alive: bool = True

    def summary(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("tracebacks", "kinds", "control_failures")}
        d["kinds"] = dict(self.kinds)
        d["tracebacks_found"] = len(self.tracebacks)
        d["control_failures"] = self.control_failures[:5]
        d["elapsed"] = round(self.elapsed, 1)
        return d


TB_START = "Traceback (most recent call last)"


def split_tracebacks(text: str) -> list[str]:
    """Each traceback in a log chunk: from its first line through the exception line."""
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if TB_START in lines[i]:
            j = i + 1
            while j < len(lines) and (lines[j].startswith((" ", "\t")) or not lines[j].strip() or "^" in lines[j]):
                j += 1
            if j < len(lines) and (
                lines[j].startswith(("During handling", "The above exception")) or TB_START in lines[j]
            ):
                j += 1
                while j < len(lines) and not re.match(r"^\w[\w.]*(Error|Exception|Exit|Interrupt)\b", lines[j]):
                    j += 1
            out.append("\n".join(lines[max(0, i - 1) : j + 1]))
            i = j + 1
        else:
            i += 1
    return out


def signature(tb: str) -> str:
    """Innermost frame and exception type: the same bug found twice is one finding."""
    files = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', tb)
    last = tb.strip().splitlines()[-1] if tb.strip() else ""
    exc = last.split(":", 1)[0]
    inner = f"{Path(files[-1][0]).name}:{files[-1][1]} {files[-1][2]}" if files else "?"
    return f"{exc} at {inner}"


class LogWatch:
    """Reads what the server appended to its stderr since the last look."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = self._size()

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def new(self) -> str:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return ""
        self.offset += len(data)
        return data.decode("utf-8", "replace")


PING_ANSWER = raw_response(0xFFFE, Status.SUCCESS)  # the answer to the PING a session may end with


async def play(
    host: str, port: int, played: Played, frames: Iterator[bytes], rnd: random.Random, read: bool = True
) -> int:
    """Send one session's frames over a fresh connection, in batches of 1-50 frames (a batch sometimes
    split at random points), appending each to ``played.frames``; returns how many were written whole
    before the server closed the connection (or all of them)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(played.src, 0), limit=1 << 16), 5
        )
    except (TimeoutError, OSError):
        return 0
    answered = asyncio.Event()

    async def drain_reader() -> None:
        tail = b""
        with contextlib.suppress(Exception):
            while data := await reader.read(1 << 16):
                if PING_ANSWER in tail + data[:8] or PING_ANSWER in data:
                    answered.set()
                tail = data[-4:]

    reading = asyncio.ensure_future(drain_reader()) if read else None
    written = 0
    try:
        while not writer.transport.is_closing():
            batch = list(itertools.islice(frames, rnd.choice([1, 5, 20, 50])))
            if not batch:
                break
            played.frames.extend(batch)
            data = b"".join(batch)
            if rnd.random() < 0.1 and len(data) > 1:  # split at random points
                cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.randint(1, 4))))
                for a, b in itertools.pairwise([0, *cuts, len(data)]):
                    writer.write(data[a:b])
                    await asyncio.wait_for(writer.drain(), 5)
            else:
                writer.write(data)
                await asyncio.wait_for(writer.drain(), 5)
            written += len(batch)
            if reading is not None and reading.done():
                break  # the server closed the connection
        if reading is not None and rnd.random() < 0.5:  # sometimes wait for the answers, else hang up at once
            writer.write(encode_frame(Command.PING, 0xFFFE))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(answered.wait(), 2)
    except (TimeoutError, OSError, ConnectionError, RuntimeError):  # RuntimeError: uvloop, closed transport
        pass
    finally:
        if rnd.random() < 0.2:
            writer.transport.abort()  # RST instead of FIN
        else:
            writer.close()
        if reading is not None:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
    return written


class Control:
    """The control device: logged in from 127.0.0.1, pings every ``interval`` s, one ping at a time."""

    def __init__(self, host: str, port: int, token: str, interval: float = 0.05) -> None:
        self.host, self.port, self.token, self.interval = host, port, token, interval
        self.rtts: list[float] = []
        self.failures: list[str] = []
        self.stop = asyncio.Event()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Decoder]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        dec = Decoder()
        writer.write(encode_frame(Command.HW_LOGIN, 1, self.token.encode()) + encode_frame(Command.INTERNAL, 2, INFO))
        await self.expect(reader, dec, 2)
        return reader, writer, dec

    @staticmethod
    async def expect(reader: asyncio.StreamReader, dec: Decoder, msg_id: int, timeout: float = 5) -> tuple:
        async def go() -> tuple:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    raise ConnectionError("control connection closed")
                for f in dec.feed(data):
                    if f[0] == Command.RESPONSE and f[2] != Status.SUCCESS and f[1] in (1, 2):
                        raise ConnectionError(f"control login answered {f[2]}")
                    if f[1] == msg_id:
                        return f

        return await asyncio.wait_for(go(), timeout)

    async def run(self) -> None:
        msg_id = 10
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = await self.connect()
                reader, writer, dec = conn
                msg_id = msg_id % 60000 + 10
                t0 = time.perf_counter()
                writer.write(encode_frame(Command.PING, msg_id))
                f = await self.expect(reader, dec, msg_id)
                if f[0] != Command.RESPONSE or f[2] != Status.SUCCESS:
                    self.failures.append(f"ping answered {f}")
                self.rtts.append(time.perf_counter() - t0)
            except (TimeoutError, OSError, ConnectionError) as exc:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}"[:200])
                if conn is not None:
                    conn[1].close()
                conn = None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.interval)
        if conn is not None:
            conn[1].close()


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] * 1000, 3)


async def fuzz(
    host: str,
    port: int,
    tokens: list[str],
    control_token: str,
    *,
    frames: int,
    seed: int,
    log_path: Path,
    pid: int,
    connections: int = 16,
    findings: Path | None = None,
    minimize: bool = True,
    reproduce_budget: float = 20.0,
    progress: float = 0.0,
) -> Result:
    """Play sessions over ``connections`` parallel connections until ``frames`` frames were sent."""
    res = Result(rss_start_mb=round(rss_bytes(pid) / 2**20, 1))
    watch = LogWatch(log_path)
    recent: collections.deque[Played] = collections.deque(maxlen=600)
    seen: dict[str, dict] = {}
    suspects: list[tuple[str, str, list[Played]]] = []
    control = Control(host, port, control_token)
    control_task = asyncio.ensure_future(control.run())
    rss_max = rss_bytes(pid)
    t_start = time.monotonic()
    next_progress = t_start + progress if progress else float("inf")

    def check_log() -> None:
        for tb in split_tracebacks(watch.new()):
            sig = signature(tb)
            if sig not in seen:
                now = time.time()  # the sessions that may have caused it: open within the last 3 s
                recent_now = [p for p in recent if p.t1 == 0.0 or p.t1 >= now - 3]
                seen[sig] = {"signature": sig, "traceback": tb, "count": 0}
                suspects.append((sig, tb, recent_now))
            seen[sig]["count"] += 1

    async def worker(wid: int) -> None:
        wr = random.Random(seed * 1000 + wid)
        gen = Gen(random.Random(seed * 1000 + wid + 500), tokens)
        while res.frames < frames:
            kind, fr = gen.session()
            p = Played(kind, [], f"127.0.{wr.randint(0, 3)}.{wr.randint(2, 254)}", time.time())
            recent.append(p)
            n = await play(host, port, p, fr, wr, read=wr.random() > 0.05)  # not "+= await": that loses counts
            res.frames += n
            res.generated += len(p.frames)
            p.t1 = time.time()
            res.sessions += 1
            res.kinds[kind] += 1

    async def monitor(stop: asyncio.Event) -> None:
        nonlocal rss_max, next_progress
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            rss_max = max(rss_max, rss_bytes(pid))
            check_log()
            if time.monotonic() >= next_progress:
                next_progress += progress
                print(
                    f"# {time.monotonic() - t_start:.0f}s frames={res.frames} sessions={res.sessions}"
                    f" rss={rss_bytes(pid) / 2**20:.0f}MB tracebacks={len(seen)}"
                    f" control_p99={_pct(control.rtts, 99)}ms failures={len(control.failures)}",
                    flush=True,
                )

    stop = asyncio.Event()
    mon = asyncio.ensure_future(monitor(stop))
    try:
        await asyncio.gather(*(worker(i) for i in range(connections)))
        res.elapsed = time.monotonic() - t_start
        await asyncio.sleep(0.5)  # let the last sessions' work and log lines land
    finally:
        stop.set()
        await mon
        control.stop.set()
        await control_task
    check_log()
    res.rss_max_mb = round(max(rss_max, rss_bytes(pid)) / 2**20, 1)
    res.rss_end_mb = round(rss_bytes(pid) / 2**20, 1)
    res.server_alive = _alive(pid)
    res.control_pings = len(control.rtts)
    res.control_p50_ms, res.control_p99_ms = _pct(control.rtts, 50), _pct(control.rtts, 99)
    res.control_max_ms = round(max(control.rtts) * 1000, 3) if control.rtts else None
    res.control_failures = control.failures
    for sig, tb, candidates in suspects:
        finding = {"signature": sig, "traceback": tb, "count": seen[sig]["count"], "reproducer": None}
        if minimize and _alive(pid):
            http = "aiohttp" in tb or "blynk_server/http/" in tb
            finding["reproducer"] = await reproduce(host, port, sig, candidates, watch, reproduce_budget, http)
        res.tracebacks.append(finding)
        if findings is not None:
            write_finding(findings, finding, seed)
    return res


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    return True


async def send_alone(host: str, port: int, frames: list[bytes]) -> None:
    """Send ``frames`` on a fresh connection in one write, then a PING; wait for its answer or the close."""
    try:
        reader, writer = await asyncio.open_connection(host, port, local_addr=("127.0.9.9", 0))
    except OSError:
        return
    writer.write(b"".join(frames) + encode_frame(Command.PING, 0xFFFD))
    dec = Decoder()
    with contextlib.suppress(Exception):

        async def until_answer() -> None:
            while data := await reader.read(1 << 16):
                with contextlib.suppress(Exception):
                    if any(f[1] == 0xFFFD for f in dec.feed(data)):
                        return

        await asyncio.wait_for(until_answer(), 1)
    writer.close()
    await asyncio.sleep(0.2)  # the log line of an error raised while closing


async def _replay_causes(host: str, port: int, sig: str, frames: list[bytes], watch: LogWatch) -> bool:
    """Does playing ``frames`` alone log a traceback with signature ``sig``?"""
    watch.new()
    await send_alone(host, port, frames)
    return any(signature(tb) == sig for tb in split_tracebacks(watch.new()))


async def reproduce(
    host: str,
    port: int,
    sig: str,
    candidates: list[Played],
    watch: LogWatch,
    budget: float = 20.0,
    http: bool = False,
) -> dict | None:
    """The first candidate session that causes ``sig`` alone, shrunk frame by frame (greedy), within
    ``budget`` seconds. ``http``: the traceback came from the HTTP side, so only HTTP sessions are tried."""
    deadline = time.monotonic() + budget
    pool = [p for p in candidates if (p.kind == "http") == http] or candidates
    for p in reversed(pool[-80:]):
        if time.monotonic() > deadline:
            return None
        if not await _replay_causes(host, port, sig, p.frames, watch):
            continue
        frames = list(p.frames)
        i = len(frames) - 1
        while i >= 0 and len(frames) > 1 and time.monotonic() < deadline + budget:
            trial = frames[:i] + frames[i + 1 :]
            if await _replay_causes(host, port, sig, trial, watch):
                frames = trial
            i -= 1
        return {"kind": p.kind, "frames_hex": [f.hex() for f in frames], "python": repr(b"".join(frames))[:4000]}
    return None


def write_finding(path: Path, finding: dict, seed: int) -> None:
    rep = finding.get("reproducer")
    with open(path, "a") as fh:
        fh.write(f"\n## {finding['signature']} (seen {finding['count']}x, fuzz seed {seed}, {time.ctime()})\n\n")
        if rep:
            fh.write(f"Reproducer ({rep['kind']} session, one write to the device port, after a fresh connect):\n\n")
            fh.write("```python\n" + rep["python"] + "\n```\n\nframes (hex):\n\n```\n")
            fh.write("\n".join(rep["frames_hex"]) + "\n```\n\n")
        else:
            fh.write("No single session reproduced it alone (an interaction, or the server went down).\n\n")
        fh.write("```\n" + finding["traceback"][:6000] + "\n```\n")


# --- a server of our own -----------------------------------------------------------------------------


def _cli(data_dir: Path, *args: str) -> str:
    from blynk_server.testing import run_cli

    return run_cli(data_dir, *args).stdout


def provision(data_dir: Path, n: int) -> list[str]:
    """The fuzz template and ``n + 1`` devices (the last is the control device)."""
    _cli(data_dir, "template", "create", "--id", FUZZ_TEMPLATE, "--name", "fuzz",
         *[x for ds in FUZZ_DATASTREAMS for x in ("--datastream", ds)])  # fmt: skip
    csv = data_dir.parent / "fuzz-devices.csv"
    tokens = [os.urandom(16).hex() for _ in range(n + 1)]
    csv.write_text("token,name,template\n" + "".join(f"{t},fz{i},{FUZZ_TEMPLATE}\n" for i, t in enumerate(tokens)))
    _cli(data_dir, "device", "import", str(csv))
    return tokens


async def restart_check(srv_start, stop, port_of, token: str) -> str:
    """Control device writes a value (acknowledged by a ping), SIGTERM, restart, read it back."""
    value = str(int(time.time() * 1000) % 10**12).encode()
    port = port_of()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    dec = Decoder()
    writer.write(encode_frame(Command.HW_LOGIN, 1, token.encode()) + encode_frame(Command.INTERNAL, 2, INFO))
    await Control.expect(reader, dec, 2)
    writer.write(encode_frame(Command.HARDWARE, 3, join_fields("vw", 6, value)) + encode_frame(Command.PING, 4))
    f = await Control.expect(reader, dec, 4)
    writer.close()
    if f[0] != Command.RESPONSE or f[2] != Status.SUCCESS:
        return f"write not acknowledged: {f}"
    code = stop()
    if code != 0:
        return f"server exited {code} on SIGTERM"
    srv_start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of())
    dec = Decoder()
    writer.write(encode_frame(Command.HW_LOGIN, 1, token.encode()) + encode_frame(Command.INTERNAL, 2, INFO))
    await Control.expect(reader, dec, 2)
    writer.write(encode_frame(Command.HARDWARE_SYNC, 5, join_fields("vr", 6)) + encode_frame(Command.PING, 6))
    got = None
    while True:
        data = await asyncio.wait_for(reader.read(1 << 16), 5)
        if not data:
            break
        fs = dec.feed(data)
        for f in fs:
            if f[0] == Command.HARDWARE and f[1] == 5:
                got = f[2].split(b"\0", 2)[-1]
        if any(f[1] == 6 for f in fs):
            break
    writer.close()
    return "ok" if got == value else f"wrote {value!r}, read back {got!r} after the restart"


def reproducers(text: str) -> list[tuple[str, list[bytes]]]:
    """(title, frames) of each reproducer in a findings file (the "frames (hex):" blocks)."""
    out = []
    title = ""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#"):
            title = line.lstrip("# ").strip()
        if line.strip() == "frames (hex):" and i + 2 < len(lines) and lines[i + 2].startswith("```"):
            frames = []
            for hexline in lines[i + 3 :]:
                if hexline.startswith("```"):
                    break
                with contextlib.suppress(ValueError):
                    frames.append(bytes.fromhex(hexline.strip()))
            out.append((title, frames))
    return out


async def replay_findings(path: Path, port: int, tokens: list[str], log: Path) -> list[dict]:
    """Replay each reproducer of a findings file alone on a fresh connection (the 32-hex-digit tokens of
    the run that found it replaced by valid ones here); returns the tracebacks each one causes now."""
    watch = LogWatch(log)
    out = []
    for n, (title, frames) in enumerate(reproducers(path.read_text(errors="replace"))):
        token = tokens[n % len(tokens)].encode()
        frames = [re.sub(rb"[0-9a-f]{32}", token, f) for f in frames]
        watch.new()
        await send_alone("127.0.0.1", port, frames)
        await asyncio.sleep(0.3)
        now = [signature(tb) for tb in split_tracebacks(watch.new())]
        out.append({"finding": title, "tracebacks_now": now})
        print(f"{'STILL' if now else 'fixed'}: {title}" + (f"  -> {now}" if now else ""), flush=True)
    return out


async def main_async(args) -> int:
    from blynk_server.testing import start_server

    workdir = Path(tempfile.mkdtemp(prefix="blynk-fuzz-"))
    data_dir = workdir / "data"
    log = workdir / "server-stderr.log"
    procs: list = [None]
    extra = ["--message-rate", str(args.message_rate), "--log-level", args.log_level]

    def start() -> None:
        started = start_server(data_dir, *extra, stderr=log, cwd=workdir)
        procs[0] = started

    def stop() -> int:
        proc = procs[0].proc
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()  # our own server
            return proc.wait(10)

    try:
        data_dir.mkdir(parents=True)
        tokens = provision(data_dir, args.devices)
        start()
        port = procs[0].ready.hardware[1]
        print(f"# server pid={procs[0].proc.pid} port={port} log={log}", flush=True)
        if args.replay:
            results = await replay_findings(Path(args.replay), port, tokens[:-1], log)
            still = sum(bool(r["tracebacks_now"]) for r in results)
            print(f"replayed {len(results)} reproducers: {still} still cause a traceback")
            return 1 if still else 0
        res = await fuzz(
            "127.0.0.1",
            port,
            tokens[:-1],
            tokens[-1],
            frames=args.frames,
            seed=args.seed,
            log_path=log,
            pid=procs[0].proc.pid,
            connections=args.connections,
            findings=Path(args.findings) if args.findings else None,
            progress=args.progress,
        )
        out = res.summary()
        out["seed"] = args.seed
        if res.server_alive:
            out["restart_check"] = await restart_check(start, stop, lambda: procs[0].ready.hardware[1], tokens[-1])
        out["tracebacks"] = [{"signature": t["signature"], "count": t["count"]} for t in res.tracebacks]
        print(json.dumps(out))
        print(
            f"frames sent: {res.frames} (generated {res.generated})  sessions: {res.sessions}  elapsed: {res.elapsed:.1f} s"
            f"  ({res.frames / max(res.elapsed, 1e-9):.0f} frames/s)\n"
            f"tracebacks found: {len(res.tracebacks)} distinct"
            + "".join(f"\n  {t['signature']} x{t['count']}" for t in res.tracebacks)
            + f"\nserver RSS: start {res.rss_start_mb} MB, max {res.rss_max_mb} MB, end {res.rss_end_mb} MB"
            f"\ncontrol device: {res.control_pings} pings, p50 {res.control_p50_ms} ms, p99 {res.control_p99_ms} ms,"
            f" max {res.control_max_ms} ms, failures {len(res.control_failures)}"
            f"\nserver alive: {res.server_alive}; write-restart-read: {out.get('restart_check')}"
        )
        grew = res.rss_max_mb - res.rss_start_mb
        if grew > args.rss_growth_mb:
            print(f"server RSS grew by {grew:.0f} MB, more than --rss-growth-mb {args.rss_growth_mb:g}")
        ok = not res.tracebacks and res.server_alive and out.get("restart_check") == "ok"
        return 0 if ok and grew <= args.rss_growth_mb and not res.control_failures else 1
    finally:
        if procs[0] is not None and procs[0].proc.poll() is None:
            stop()
        if os.environ.get("BENCH_KEEP"):
            print(f"# kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=100_000, help="frames to send in all")
    p.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    p.add_argument("--connections", type=int, default=16, help="sessions played at once")
    p.add_argument("--devices", type=int, default=64, help="valid device tokens the sessions log in with")
    p.add_argument("--message-rate", type=float, default=1e6, help="the server's --message-rate (high: more coverage)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--findings", default="/tmp/fuzz-findings.md", help="append tracebacks and reproducers here")
    p.add_argument("--progress", type=float, default=30.0, help="seconds between progress lines (0: none)")
    p.add_argument("--rss-growth-mb", type=float, default=200.0, help="fail when the server grows more than this")
    p.add_argument("--replay", help="instead of fuzzing: replay each reproducer of this findings file")
    args = p.parse_args(argv)
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} nproc={os.cpu_count()} {' '.join(sys.argv)}")
    try:
        import uvloop

        return uvloop.run(main_async(args))
    except ImportError:  # pragma: no cover
        return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
