"""The client engine: simulated devices (Blynk binary protocol or MQTT 3.1.1) in worker processes.

Both protocols share one engine (same loop, same pacing, same measurement), so a comparison between
the Blynk server and an MQTT broker measures the servers, not two different load generators. A
device is a plain ``asyncio.Protocol`` (no streams, no tasks per device): thousands fit in one
process. Workers are ``multiprocessing`` processes talking to the orchestrator over a ``Pipe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import time
from typing import Any

from blynk_server.cpuslice import DEFAULT_SLICE_US, request_slice
from protocol import Command, Decoder, encode_frame, encode_response
from protocol.body import join_fields

PAYLOAD = b"1234"  # the value every write carries; the MQTT payload is padded to the same body size
BLYNK_BODY = join_fields("vw", 1, PAYLOAD)  # b"vw\0" b"1\0" b"1234": 9 bytes, a 14-byte frame
INFO = join_fields("mcu", "1.0.0", "blynk", "1.4.0", "h-beat", "40", "buff-in", "1024", "dev", "bench")
LOGIN_MSG_ID = 1  # the login frame's msg id (telegen.c waits for the RESPONSE with this id)
MQTT_TOPIC = b"v1"
MQTT_PAYLOAD = BLYNK_BODY  # the same 9 bytes as the Blynk body
PINGREQ = b"\xc0\x00"
COMMAND_TOPIC = b"cmd/"  # + the device's client id: the MQTT command probe's topics
INSTRUMENTS = ("probe", "command")  # the workers that time answers: pings, fresh logins, commands
INSTRUMENT_FIFO_PRIORITY = 1  # SCHED_FIFO's lowest: above every ordinary thread, and nothing else
MAX_PUMP_WRITES = 8  # writes per device per loop turn in flood mode: bounded, then yield to the loop


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (thousands of sockets per process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- MQTT 3.1.1 wire (the few packets we need) -------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _mqtt_str(s: bytes) -> bytes:
    return len(s).to_bytes(2, "big") + s


def mqtt_connect(client_id: bytes, keepalive: int = 60) -> bytes:
    var = _mqtt_str(b"MQTT") + b"\x04\x02" + keepalive.to_bytes(2, "big")  # level 4, clean session
    body = var + _mqtt_str(client_id)
    return b"\x10" + _varint(len(body)) + body


def mqtt_publish(topic: bytes, payload: bytes) -> bytes:
    body = _mqtt_str(topic) + payload
    return b"\x30" + _varint(len(body)) + body


def mqtt_subscribe(packet_id: int, topic: bytes) -> bytes:
    body = packet_id.to_bytes(2, "big") + _mqtt_str(topic) + b"\x00"
    return b"\x82" + _varint(len(body)) + body


# --- the wire bytes of a simulated device (one definition: the Python devices and telegen.c send these) --


def login_packet(kind: str, ident: str) -> bytes:
    """The first packet a device sends: HW_LOGIN with its token, or MQTT CONNECT with its client id."""
    if kind == "blynk":
        return encode_frame(Command.HW_LOGIN, LOGIN_MSG_ID, ident.encode())
    return mqtt_connect(ident.encode())


def info_frame() -> bytes:
    """The info message a Blynk device sends once its login is accepted."""
    return encode_frame(Command.INTERNAL, 2, INFO)


PING_MSG_ID = 3  # never the login's (1) or the info's (2); telegen.c reads it from the frame


def ping_frame(kind: str) -> bytes:
    """telegen's ping-pong ping: a Blynk PING with msg id ``PING_MSG_ID``, or an MQTT PINGREQ."""
    return encode_frame(Command.PING, PING_MSG_ID) if kind == "blynk" else PINGREQ


def telemetry_frame(kind: str) -> bytes:
    """One write: a 14-byte Blynk ``vw`` frame or a 15-byte MQTT QoS0 PUBLISH with the same 9-byte payload."""
    return encode_frame(Command.HARDWARE, 3, BLYNK_BODY) if kind == "blynk" else mqtt_publish(MQTT_TOPIC, MQTT_PAYLOAD)


class MqttDecoder:
    """Incremental MQTT packet splitter: yields (first byte, body)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf + data if self._buf else data
        out = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            first = buf[pos]
            length, mult, i = 0, 1, pos + 1
            while True:
                if i >= end:
                    self._buf = buf[pos:]
                    return out
                b = buf[i]
                length += (b & 0x7F) * mult
                mult *= 128
                i += 1
                if not b & 0x80:
                    break
            if i + length > end:
                break
            out.append((first, buf[i : i + length]))
            pos = i + length
        self._buf = buf[pos:]
        return out


# --- devices ------------------------------------------------------------------------------------


class Device(asyncio.Protocol):
    """One simulated device. ``kind`` is "blynk" or "mqtt"; the rest is the same for both."""

    def __init__(self, worker: Worker, ident: str) -> None:
        self.w = worker
        self.ident = ident
        self.blynk = worker.kind == "blynk"
        self.decoder: Any = Decoder() if self.blynk else MqttDecoder()
        self.transport: asyncio.Transport | None = None
        self.t_start = time.perf_counter()
        self.logged_in = asyncio.get_running_loop().create_future()
        self.paused = False
        self.closed = False
        self.ping_t = 0.0
        self.ping_id = 0
        self.sent = 0
        self.value = 0  # "others" mode: the last value written to V1, and the last one acknowledged
        self.pending = 0
        self.acked = 0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.set_write_buffer_limits(high=64 * 1024)
        sndbuf = self.w.spec.get("sndbuf")
        if sndbuf:  # a flooding device's kernel queue stays small, like a microcontroller's TCP stack
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        transport.write(login_packet(self.w.kind, self.ident))

    def connection_lost(self, exc) -> None:
        self.closed = True
        if not self.logged_in.done():
            self.logged_in.set_exception(ConnectionError(f"connection lost before login: {exc}"))
        elif not self.w.closing:
            self.w.dropped += 1

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def data_received(self, data: bytes) -> None:
        if self.blynk:
            for cmd, msg_id, payload in self.decoder.feed(data):
                if cmd == 0:
                    if msg_id == LOGIN_MSG_ID and not self.logged_in.done():
                        if payload == 200:
                            self.transport.write(info_frame())
                            self.logged_in.set_result(time.perf_counter() - self.t_start)
                        else:
                            self.logged_in.set_exception(ConnectionError(f"login status {payload}"))
                    elif msg_id == self.ping_id and self.ping_t:
                        self._pong()
                    elif payload != 200:
                        self.w.bad_status[payload] = self.w.bad_status.get(payload, 0) + 1
                elif cmd == Command.PING:  # answer like a real device (the server may ping us)
                    self.transport.write(encode_response(msg_id, 200))
                elif cmd == Command.HARDWARE:
                    self.w.on_hardware(self, payload)
        else:
            for first, body in self.decoder.feed(data):
                kind = first >> 4
                if kind == 13:  # PINGRESP
                    if self.ping_t:
                        self._pong()
                elif kind == 2:  # CONNACK
                    if not self.logged_in.done():
                        if body[1:2] == b"\x00":
                            self.logged_in.set_result(time.perf_counter() - self.t_start)
                        else:
                            self.logged_in.set_exception(ConnectionError(f"CONNACK {body!r}"))
                elif kind == 3:  # PUBLISH (a subscriber)
                    self.w.on_publish(self, body)

    def ping(self) -> None:
        if self.closed:
            return
        self.ping_t = time.perf_counter()
        if self.blynk:
            self.ping_id = self.ping_id % 0xFFF0 + 3  # never 1 or 2 (login, info)
            self.transport.write(encode_frame(Command.PING, self.ping_id))
        else:
            self.transport.write(PINGREQ)

    def _pong(self) -> None:
        rtt = time.perf_counter() - self.ping_t
        self.ping_t = 0.0
        if self.pending:  # the server handles a connection's frames in order: the write before this ping is applied
            self.acked, self.pending = self.pending, 0
        self.w.on_pong(self, rtt)


# --- worker -------------------------------------------------------------------------------------


class Worker:
    """All the devices of one process and the workload they run."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.kind = spec["kind"]
        self.host = spec["host"]
        self.port = spec["port"]
        self.devices: list[Device] = []
        self.login_lat: list[float] = []
        self.login_errors: list[str] = []
        self.rtts: list[float] = []
        self.pongs = 0
        self.dropped = 0
        self.bad_status: dict[int, int] = {}
        self.closing = False
        self.measuring = False
        self.hw_received = 0
        self.cmd_lat: list[float] = []
        self.cmd_sent: dict[bytes, float] = {}
        self.sys_samples: list[tuple[float, str, float]] = []
        self.new_login_lat: list[float] = []
        self.new_login_errors = 0
        self.new_ids = list(spec.get("new_ids", ()))  # the fresh logins not made yet
        self.skipped = 0
        self.measured_pongs = 0
        self.running = False

    # callbacks from devices
    def on_pong(self, dev: Device, rtt: float) -> None:
        self.pongs += 1
        mode = self.spec["mode"]
        if mode == "others":  # every ping of an "others" run was sent inside the window: keep late answers too
            self.rtts.append(rtt)
        elif self.measuring:
            self.measured_pongs += 1
            if mode == "probe" or (mode == "pingpong" and len(self.rtts) < 200_000):  # RTTs: the first 200k
                self.rtts.append(rtt)
        if mode == "pingpong" and not self.closing and self.running:
            dev.ping()

    def on_hardware(self, dev: Device, body: bytes) -> None:
        self.hw_received += 1
        parts = body.split(b"\0")
        if len(parts) >= 3:
            t = self.cmd_sent.pop(parts[2], None)
            if t is not None and self.measuring:
                self.cmd_lat.append(time.perf_counter() - t)

    def on_publish(self, dev: Device, body: bytes) -> None:
        n = int.from_bytes(body[:2], "big")
        if body[2:6] == COMMAND_TOPIC:  # the command probe's publish reached its subscriber
            t = self.cmd_sent.pop(body[2 + n :], None)
            if t is not None and self.measuring:
                self.cmd_lat.append(time.perf_counter() - t)
            return
        topic = body[2 : 2 + n].decode("utf-8", "replace")
        with contextlib.suppress(ValueError):
            self.sys_samples.append((time.time(), topic, float(body[2 + n :])))

    async def connect_one(self, ident: str) -> Device | None:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            _, dev = await loop.create_connection(lambda: Device(self, ident), self.host, self.port)
            dev.t_start = t0
            await asyncio.wait_for(dev.logged_in, self.spec.get("login_timeout", 30))
        except (TimeoutError, OSError, ConnectionError) as exc:
            self.login_errors.append(f"{type(exc).__name__}: {exc}"[:200])
            return None
        self.login_lat.append(time.perf_counter() - t0)
        return dev

    async def connect_all(self) -> dict:
        ids = self.spec["ids"]
        limit = self.spec.get("concurrency") or len(ids) or 1
        sem = asyncio.Semaphore(limit)

        async def one(ident: str) -> Device | None:
            async with sem:
                return await self.connect_one(ident)

        t0 = time.time()
        devs = await asyncio.gather(*(one(i) for i in ids))
        t1 = time.time()
        self.devices = [d for d in devs if d is not None]
        if self.spec.get("subscribe"):
            for i, dev in enumerate(self.devices):
                dev.transport.write(mqtt_subscribe(i + 1, self.spec["subscribe"].encode()))
        return {
            "logged_in": len(self.devices),
            "errors": len(self.login_errors),
            "error_samples": self.login_errors[:5],
            "login_lat": self.login_lat,
            "t_connect": t0,
            "t_all": t1,
            "scheduling": self.spec.get("scheduling"),
        }

    # workloads
    async def run(self, duration: float) -> dict:
        mode = self.spec["mode"]
        # Per run (a worker may run several windows): what it measured in this one.
        self.rtts, self.measured_pongs, self.cmd_lat = [], 0, []
        self.new_login_lat, self.new_login_errors = [], 0
        self.running = True
        self.measuring = True
        t0 = time.perf_counter()
        deadline = t0 + duration
        sent = 0
        if mode == "flood":
            sent = await self._flood(deadline)
        elif mode == "telemetry":
            sent = await self._telemetry(deadline, self.spec["rate"])
        elif mode == "pingpong":
            for dev in self.devices:
                dev.ping()
            await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
        elif mode == "probe":
            sent = await self._probe(deadline)
        elif mode == "idle":
            await self._idle(deadline)
        elif mode == "command":
            sent = await self._command(deadline)
        elif mode == "others":
            sent = await self._others(deadline)
        elif mode == "sys":
            await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
        self.running = False
        elapsed = time.perf_counter() - t0
        self.measuring = False
        await asyncio.sleep(self.spec.get("drain", 1.0))  # let the last pings/commands come back
        out = {
            "sent": sent,
            "elapsed": elapsed,
            "pongs": self.measured_pongs,
            "rtts": self.rtts,
            "dropped": self.dropped,
            "bad_status": self.bad_status,
            "cmd_lat": self.cmd_lat,
            "hw_received": self.hw_received,
            "sys_samples": self.sys_samples,
            "new_login_lat": self.new_login_lat,
            "new_login_errors": self.new_login_errors,
            "skipped": self.skipped,
            "alive": sum(not d.closed for d in self.devices),
        }
        if mode == "others":
            now = time.perf_counter()  # pings still unanswered count with their age so far (a lower bound)
            self.rtts.extend(now - d.ping_t for d in self.devices if d.ping_t and not d.closed)
            out["acked"] = {d.ident: d.acked for d in self.devices if d.acked}
            out["unanswered"] = sum(1 for d in self.devices if d.ping_t and not d.closed)
            out["writes"] = sum(d.value for d in self.devices)
        return out

    async def _flood(self, deadline: float) -> int:
        """Every device writes batches of frames as fast as its socket takes them (write-buffer bounded)."""
        per_write = self.spec.get("batch", 32)
        chunk = telemetry_frame(self.kind) * per_write
        sent = 0
        devices = self.devices
        while time.perf_counter() < deadline:
            wrote = False
            for dev in devices:
                if dev.paused or dev.closed:
                    continue
                tr = dev.transport
                for _ in range(MAX_PUMP_WRITES):
                    tr.write(chunk)
                    sent += per_write
                    wrote = True
                    if dev.paused:
                        break
            await asyncio.sleep(0 if wrote else 0.001)
        return sent

    async def _telemetry(self, deadline: float, rate: float) -> int:
        """Each device writes one frame every 1/rate s, spread evenly over the period."""
        frame = telemetry_frame(self.kind)
        tick = 0.01
        devices = self.devices
        n = len(devices)
        per_sec = n * rate
        sent = 0
        issued = 0
        start = time.perf_counter()
        idx = 0
        while True:
            now = time.perf_counter()
            if now >= deadline:
                break
            due = int((now - start) * per_sec) - issued
            issued += due
            k = min(due, n * 2)  # fell behind by more than two rounds: skip rather than burst
            self.skipped += due - k
            for _ in range(k):
                dev = devices[idx]
                idx = idx + 1 if idx + 1 < n else 0
                if not dev.closed:
                    dev.transport.write(frame)
                    sent += 1
            await asyncio.sleep(tick)
        return sent

    async def _probe(self, deadline: float) -> int:
        """Quiet probes: one ping every ``interval`` s per probe, staggered; plus fresh logins."""
        interval = self.spec.get("interval", 0.1)
        n = len(self.devices)
        new_ids = self.new_ids  # each logs in once, whichever window it falls in
        login_every = self.spec.get("login_every", 0.25)
        next_login = time.perf_counter()
        start = time.perf_counter()
        sent = 0
        while time.perf_counter() < deadline:
            now = time.perf_counter()
            target = int((now - start) / interval * n)
            while sent < target:
                dev = self.devices[sent % n]
                if not dev.ping_t:  # one outstanding ping per probe
                    dev.ping()
                sent += 1
            if new_ids and now >= next_login:
                next_login = now + login_every
                asyncio.ensure_future(self._fresh_login(new_ids.pop()))
            await asyncio.sleep(0.002)
        return sent

    async def _fresh_login(self, ident: str) -> None:
        before = len(self.login_lat)
        dev = await self.connect_one(ident)
        if dev is None:
            self.new_login_errors += 1
        else:
            self.new_login_lat.append(self.login_lat.pop(before))
            self.devices_extra = getattr(self, "devices_extra", [])
            self.devices_extra.append(dev)

    async def _others(self, deadline: float) -> int:
        """Well-behaved devices beside an attack: each pings every ``interval`` s (staggered, at most one
        outstanding) and every ``write_every``-th time writes an increasing counter to V1 just before the
        ping; the ping's answer acknowledges that write (``Device.acked``)."""
        interval = self.spec.get("interval", 1.0)
        write_every = self.spec.get("write_every", 5)
        base = self.spec.get("value_base", 0)  # counters continue above what earlier runs stored
        for dev in self.devices:
            dev.value = max(dev.value, base)
        n = len(self.devices)
        start = time.perf_counter()
        done = 0
        late = 0
        while time.perf_counter() < deadline and n:
            target = int((time.perf_counter() - start) / interval * n)
            while done < target:
                dev = self.devices[done % n]
                done += 1
                if dev.closed:
                    continue
                if dev.ping_t:  # the previous ping is still unanswered
                    late += 1
                    continue
                if write_every and (done // n) % write_every == (done % n) % write_every:
                    dev.value += 1
                    dev.pending = dev.value
                    dev.transport.write(encode_frame(Command.HARDWARE, 3, join_fields("vw", 1, dev.value)))
                dev.ping()
            await asyncio.sleep(0.005)
        self.skipped = late
        return done

    async def _idle(self, deadline: float) -> None:
        """Hold the sessions; each pings at its heartbeat (40 s), staggered."""
        hb = self.spec.get("heartbeat", 40.0)
        n = len(self.devices)
        start = time.perf_counter()
        done = 0
        while time.perf_counter() < deadline:
            target = int((time.perf_counter() - start) / hb * n)
            while done < target:
                self.devices[done % n].ping()
                done += 1
            await asyncio.sleep(0.05)

    async def _command(self, deadline: float) -> int:
        """HTTP ``/external/api/update`` on the device port, timed until the device gets the vw; for an
        MQTT broker, its equivalent (``_mqtt_command``)."""
        if self.kind == "mqtt":
            return await self._mqtt_command(deadline)
        loop = asyncio.get_running_loop()
        interval = self.spec.get("interval", 0.02)
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            return 0
        tokens = [d.ident for d in self.devices]
        seq = 0
        self.http_errors = 0
        while time.perf_counter() < deadline and tokens:
            token = tokens[seq % len(tokens)]
            seq += 1
            value = str(100000 + seq).encode()
            self.cmd_sent[value] = time.perf_counter()
            writer.write(
                b"GET /external/api/update?token="
                + token.encode()
                + b"&v1="
                + value
                + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            )
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length:
                    await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200"):
                    self.http_errors += 1
                    self.bad_status[-int(head[9:12] or 0)] = self.bad_status.get(-int(head[9:12] or 0), 0) + 1
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
                self.http_errors += 1
                break
            await asyncio.sleep(interval)
        writer.close()
        del loop
        return seq

    async def _mqtt_command(self, deadline: float) -> int:
        """A publish to ``cmd/<device>`` from another client, timed until that device, subscribed to
        it, gets the message: what an HTTP command to a Blynk device is on an MQTT broker."""
        for i, dev in enumerate(self.devices):
            dev.transport.write(mqtt_subscribe(i + 1, COMMAND_TOPIC + dev.ident.encode()))
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            writer.write(mqtt_connect(b"command-probe"))
            await asyncio.wait_for(reader.readexactly(4), 5)  # CONNACK
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return 0
        await asyncio.sleep(0.5)  # the SUBACKs (QoS 0 subscriptions: nothing to wait for per message)
        interval = self.spec.get("interval", 0.02)
        tokens = [d.ident.encode() for d in self.devices]
        seq = 0
        while time.perf_counter() < deadline and tokens:
            token = tokens[seq % len(tokens)]
            seq += 1
            value = str(100000 + seq).encode()
            self.cmd_sent[value] = time.perf_counter()
            writer.write(mqtt_publish(COMMAND_TOPIC + token, value))
            await asyncio.sleep(interval)
        writer.close()
        return seq

    def close(self) -> None:
        self.closing = True
        for dev in self.devices + getattr(self, "devices_extra", []):
            if dev.transport is not None:
                dev.transport.close()


async def _worker(conn, spec: dict) -> None:
    loop = asyncio.get_running_loop()
    worker = Worker(spec)
    start_at = spec.get("connect_at")
    if start_at:
        await asyncio.sleep(max(0.0, start_at - time.time()))
    conn.send(await worker.connect_all())
    msg = await loop.run_in_executor(None, conn.recv)  # ("run", duration) or ("close",)
    while msg[0] == "run":  # one run per message until "close"
        conn.send(await worker.run(msg[1]))
        msg = await loop.run_in_executor(None, conn.recv)
    worker.close()
    await asyncio.sleep(0.2)
    conn.send("closed")


def instrument_scheduling() -> str:
    """Let a worker that times answers run the moment one wakes it; returns how ("fifo", "slice 100 us"
    or "default: <why>"), which the run's output shows.

    Its core also runs the load's generator, the other workers and the kernel's own work: with only a
    short slice the probe worker, busy with its 1,000 pings a second, still waited up to 23.7 ms for its
    core with the server's answer already in its socket (``perf sched``, benchmarks/RESULTS.md, issue 12
    step 15), and that wait was counted as the server's latency. At the lowest real-time priority it
    preempts every ordinary thread at once; it sleeps between its few sends, so it cannot starve them.
    Without the privilege (CAP_SYS_NICE or an RLIMIT_RTPRIO), the 100 µs slice of Linux 6.12+."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(INSTRUMENT_FIFO_PRIORITY))
        return "fifo"
    except (AttributeError, OSError) as exc:  # not Linux, or not permitted
        fifo = f"{type(exc).__name__}: {exc}"
    why = request_slice(DEFAULT_SLICE_US)  # the server's event loop asks for the same
    return f"slice {DEFAULT_SLICE_US} us" if why is None else f"default: no SCHED_FIFO ({fifo}), {why}"


def worker_main(conn, spec: dict) -> None:
    """Entry point of a worker process."""
    raise_nofile()
    if spec.get("mode") in INSTRUMENTS:
        spec = {**spec, "scheduling": instrument_scheduling()}
    try:
        import uvloop

        uvloop.run(_worker(conn, spec))
    except ImportError:  # pragma: no cover
        asyncio.run(_worker(conn, spec))
