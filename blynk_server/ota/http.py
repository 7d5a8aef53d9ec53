"""OTA over HTTP: the firmware download on the device port, and the admin API.

Download: ``GET /static/fw_<shipment>_<secret>.bin?token=<device token>[&mobile=1]``. The secret is
the shipment's own (128 random bits, compared in constant time), so the URL cannot be guessed; the
token must be a device that is a live target of that shipment (its template, and its device list if
it has one). The ``mobile=1`` variant is the phone fetching the image on the device's behalf (Blynk's
"uploaded to mobile"): the same bytes and headers, but the delivered status is *Firmware uploaded to
mobile*.

The response is what Edgent clients check (reference ota.md §1.4, §7): 200 (206 for a Range), an
exact Content-Length, identity encoding, ``x-MD5`` (hex), ``x-sha256`` (base64), ``x-fw-type``,
``x-fw-ver``, ``x-fw-build``. Bytes go out in small chunks paced per device (``rate`` bytes/s) and only
while the socket drains; a download that makes no progress for ``ota_stall_timeout`` seconds fails.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from blynk_server.ota import shipments as ships
from blynk_server.ota.registry import FirmwareError, FirmwareTooLarge, Upload, sha256_b64
from blynk_server.ota.service import Download, OtaService, Refusal

log = logging.getLogger(__name__)

RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
HUGE = 1 << 63  # a Range number with more digits than any file size: past every end
MAX_CHUNK = 16384
UPLOAD_CHUNK = 65536
MAX_PARTS = 16  # multipart parts looked at for the file
MULTIPART_SLACK = 65536  # boundaries and part headers around the file in a multipart body
TICK = 0.1  # seconds of the rate per chunk: small chunks keep the gaps between bytes short


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status)


def add_device_routes(app: web.Application, ota: OtaService) -> None:
    """Mount the firmware download on the device-port HTTP app."""

    async def download(request: web.Request) -> web.StreamResponse:
        return await _download(ota, request)

    app.router.add_get("/static/{name}", download)


def _range_number(digits: str) -> int:
    """A Range bound of any length without ``int()`` on thousands of digits: beyond 19 significant
    digits it is larger than any file, which is all the arithmetic below needs to know."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 19 else HUGE


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of one ``bytes=A-B`` range of a ``size``-byte file, the last clipped to its
    end (first > last or first >= size: not satisfiable); None for any other form."""
    rm = RANGE.match(header.strip())
    if rm is None or (rm.group(1) == "" and rm.group(2) == ""):
        return None
    start, end = 0, size - 1
    if rm.group(1) == "":
        start = max(0, size - _range_number(rm.group(2)))
    else:
        start = _range_number(rm.group(1))
        if rm.group(2):
            end = min(size - 1, _range_number(rm.group(2)))
    return start, end


async def _download(ota: OtaService, request: web.Request) -> web.StreamResponse:
    """Who may fetch and what it changes is the service's (``admit``, ``begin_download``,
    ``end_download``); this is the HTTP around it: Range, headers and the paced stream."""
    grant = ota.admit(request.match_info["name"], request.query.get("token", ""))
    if isinstance(grant, Refusal):
        return _error(grant.message, grant.status)
    fw = grant.fw
    size = fw.size
    start, end = 0, size - 1
    rng = request.headers.get("Range")
    if rng:
        span = byte_range(rng, size)
        if span is None:
            return _error("Unsupported Range.", 416)
        start, end = span
        if start >= size or start > end:
            resp = _error("Range not satisfiable.", 416)
            resp.headers["Content-Range"] = f"bytes */{size}"
            return resp
    headers = {
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
        "x-MD5": fw.md5,
        "x-sha256": sha256_b64(fw),
        "x-fw-type": fw.type or "",
        "x-fw-ver": fw.version or "",
        "x-fw-build": fw.build or "",
        "Cache-Control": "no-store",
    }
    if request.method == "HEAD":  # no attempt, no status change
        resp = web.StreamResponse(status=206 if rng else 200, headers=headers)
        if rng:
            resp.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        resp.content_length = end - start + 1
        await resp.prepare(request)
        return resp
    dl = ota.begin_download(grant, start, end, request.query.get("mobile") in ("1", "true", "yes"))
    if isinstance(dl, Refusal):
        return _error(dl.message, dl.status)
    resp = web.StreamResponse(status=206 if rng else 200, headers=headers)
    if rng:
        resp.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    resp.content_length = end - start + 1
    try:
        await _stream(ota, request, resp, dl)
    except (ConnectionError, TimeoutError, asyncio.CancelledError, RuntimeError) as exc:
        ota.end_download(
            dl, "stalled" if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) else "connection closed"
        )
        if isinstance(exc, asyncio.CancelledError):
            raise
        request.transport and request.transport.close()
        return resp
    except BaseException:
        ota.end_download(dl, "server error")
        raise
    ota.end_download(dl)
    return resp


async def _stream(ota: OtaService, request: web.Request, resp: web.StreamResponse, dl: Download) -> None:
    """Send the download's bytes paced at the shipment's rate (bytes/s), in chunks of about TICK
    seconds' worth, each only after the socket has taken the previous ones (back-pressure), failing
    after a stall."""
    loop = asyncio.get_running_loop()
    data, pos, stop, rate = dl.data, dl.start, dl.end + 1, dl.grant.ship.rate
    stall = ota.settings.ota_stall_timeout
    chunk = min(MAX_CHUNK, max(512, int(rate * TICK))) if rate else MAX_CHUNK
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away")
    high = max(2 * chunk, 8192)
    transport.set_write_buffer_limits(high=high, low=high // 2)
    sock = transport.get_extra_info("socket")
    if sock is not None and rate:
        try:  # a small kernel buffer keeps "sent" close to "received", and stalls visible
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(4 * chunk, 16384))
        except OSError:
            pass
    await resp.prepare(request)
    t0 = loop.time()
    first = pos
    last_write = t0
    timeout_cm = _timeout(loop.time() + stall)
    async with timeout_cm as cm:
        while pos < stop:
            if rate:
                due = t0 + (pos - first) / rate
                delay = due - loop.time()
                if delay > 0:
                    cm.reschedule(due + stall)
                    await asyncio.sleep(delay)
            piece = data[pos : min(stop, pos + chunk)]
            now = loop.time()
            gap = now - last_write if pos != first else 0.0
            last_write = now
            await resp.write(piece)
            await _drained(transport, high, loop, stall)
            pos += len(piece)
            ota.progress(dl, pos, len(piece), gap)
            cm.reschedule(loop.time() + stall)
        await resp.write_eof()
        await _drained(transport, 0, loop, stall)


def _timeout(when: float):
    return asyncio.timeout_at(when)


async def _drained(transport, limit: int, loop, stall: float) -> None:
    """Wait until the transport's buffer is at most ``limit`` bytes; a buffer that does not shrink for
    ``stall`` seconds means the client stopped reading."""
    size = transport.get_write_buffer_size()
    last_progress = loop.time()
    while size > limit:
        if transport.is_closing():
            raise ConnectionResetError("client closed the connection")
        await asyncio.sleep(0.02)
        now_size = transport.get_write_buffer_size()
        now = loop.time()
        if now_size < size:
            last_progress = now
        elif now - last_progress > stall:
            raise TimeoutError("no progress")
        size = now_size


# --- admin API ------------------------------------------------------------------------------------


async def _json_body(request: web.Request) -> dict:
    """The request's JSON object; anything else (including numbers too long for Python) is a 400."""
    try:
        body = await request.json()
    except web.HTTPRequestEntityTooLarge:
        raise ships.ShipmentError(f"Body larger than {request.client_max_size} bytes.", 413) from None
    except (ValueError, UnicodeDecodeError):
        raise ships.ShipmentError("Body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise ships.ShipmentError("Body must be a JSON object.")
    return body


async def _receive(request: web.Request, up: Upload) -> str | None:
    """Copy the upload's body (raw, or the first file part of a multipart form) into ``up`` chunk by
    chunk; returns the part's file name."""
    if not request.content_type.startswith("multipart/"):
        async for chunk in request.content.iter_chunked(UPLOAD_CHUNK):
            up.write(chunk)
        return None
    reader = await request.multipart()
    for _ in range(MAX_PARTS):
        part = await reader.next()
        if part is None:
            break
        if isinstance(part, BodyPartReader) and part.filename:
            while chunk := await part.read_chunk(UPLOAD_CHUNK):
                up.write(chunk)
            return part.filename
    raise FirmwareError("no file part in the multipart body")


SHIPMENT_FIELDS = frozenset(
    {
        "name",
        "firmware",
        "template",
        "devices",
        "condition",
        "window",
        "attempts",
        "reset",
        "rate",
        "max_in_flight",
        "user_control",
        "first_wave",
        "max_failure_ratio",
        "host_url",
    }
)


def add_admin_routes(app: web.Application, ota: OtaService) -> None:
    """Firmware and shipments under /api/ota (JSON; errors as {"error": {"message": ...}}). Every
    change goes through the service, which holds the active shipments."""

    def guarded(fn):
        # The API key is checked by the admin app's middleware, for these routes as for the others.
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                return await fn(request)
            except ships.ShipmentError as exc:
                return _error(str(exc), exc.status)
            except FirmwareError as exc:
                return _error(str(exc), exc.status)

        return handler

    async def upload(request: web.Request) -> web.Response:
        """Streamed to a temp file in the data dir (not through aiohttp's 1 MiB ``client_max_size``,
        which applies only to ``read()``), up to ``ota_max_firmware``."""
        limit = ota.settings.ota_max_firmware
        multipart = request.content_type.startswith("multipart/")
        declared = request.content_length
        if declared is not None and declared > limit + (MULTIPART_SLACK if multipart else 0):
            raise FirmwareTooLarge(f"the firmware file is larger than {limit} bytes (ota_max_firmware)")
        q = request.query
        with Upload(ota.settings.data_dir, limit) as up:
            try:
                part_name = await _receive(request, up)
            except FirmwareError:
                raise
            except (ConnectionError, HttpProcessingError, ValueError) as exc:
                # The client went away mid-body, or sent a broken chunked or multipart body.
                log.info("firmware upload not received peer=%s error=%s", request.remote, type(exc).__name__)
                raise FirmwareError("the upload was cut short or is not a well-formed body") from None
            fw, created = await ota.add_firmware(
                up, q.get("name") or part_name, q.get("type"), q.get("version"), q.get("build")
            )
        return web.json_response(fw.as_dict(), status=201 if created else 200)

    async def list_firmware(request: web.Request) -> web.Response:
        return web.json_response([f.as_dict() for f in await ota.list_firmware()])

    async def create(request: web.Request) -> web.Response:
        body = await _json_body(request)
        unknown = set(body) - SHIPMENT_FIELDS
        if unknown:
            raise ships.ShipmentError(f"unknown field(s): {', '.join(sorted(u[:40] for u in unknown))[:400]}")
        missing = {"name", "firmware", "template"} - set(body)
        if missing:
            raise ships.ShipmentError(f"missing field(s): {', '.join(sorted(missing))}")
        ship = await ota.create_shipment(body)
        return web.json_response(ship.as_dict(), status=201)

    async def list_shipments(request: web.Request) -> web.Response:
        return web.json_response([s.as_dict() for s in await ota.list_shipments(request.query.get("state"))])

    async def show(request: web.Request) -> web.StreamResponse:
        rep = await ota.report(request.match_info["id"])
        if request.query.get("format") == "csv":
            return web.Response(text=ships.report_csv(rep), content_type="text/csv")
        return web.json_response(rep)

    async def action(request: web.Request) -> web.Response:
        act = request.match_info["action"]
        ref = request.match_info["id"]
        if act == "approve":
            body = await _json_body(request)
            if "device" not in body:
                raise ships.ShipmentError('approve needs {"device": ID}')
            ship = await ota.approve(ref, body["device"])
        else:
            ship = await ota.control(ref, act)
        return web.json_response(ship.as_dict())

    app.router.add_post("/api/ota/firmware", guarded(upload))
    app.router.add_get("/api/ota/firmware", guarded(list_firmware))
    app.router.add_post("/api/ota/shipments", guarded(create))
    app.router.add_get("/api/ota/shipments", guarded(list_shipments))
    app.router.add_get("/api/ota/shipments/{id}", guarded(show))
    app.router.add_post("/api/ota/shipments/{id}/{action:pause|resume|cancel|approve}", guarded(action))
