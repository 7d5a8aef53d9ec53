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
import hmac
import logging
import mmap
import re
import socket
from typing import TYPE_CHECKING

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from blynk_server.ota import shipments as ships
from blynk_server.ota import status as st
from blynk_server.ota.registry import FirmwareError, FirmwareTooLarge, Upload, register, sha256_b64

if TYPE_CHECKING:
    from blynk_server.app import BlynkServer
    from blynk_server.ota.service import OtaService

log = logging.getLogger(__name__)

FW_PATH = re.compile(r"^fw_(\d{1,19})_([A-Za-z0-9_-]{1,64})\.bin$")
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
HUGE = 1 << 63  # a Range number with more digits than any file size: past every end
MAX_CHUNK = 16384
UPLOAD_CHUNK = 65536
MAX_PARTS = 16  # multipart parts looked at for the file
MULTIPART_SLACK = 65536  # boundaries and part headers around the file in a multipart body
TICK = 0.1  # seconds of the rate per chunk: small chunks keep the gaps between bytes short


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status)


def _service(server: BlynkServer) -> OtaService | None:
    return getattr(server, "ota", None)


def add_device_routes(app: web.Application, server: BlynkServer) -> None:
    """Mount the firmware download on the device-port HTTP app."""

    async def download(request: web.Request) -> web.StreamResponse:
        ota = _service(server)
        if ota is None:
            return _error("OTA is not running.", 503)
        resp = await _download(ota, request)
        if resp.status in (403, 404, 409):
            ota.stats.refusals += 1
        return resp

    app.router.add_get("/static/{name}", download)


def _range_number(digits: str) -> int:
    """A Range bound of any length without ``int()`` on thousands of digits: beyond 19 significant
    digits it is larger than any file, which is all the arithmetic below needs to know."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 19 else HUGE


async def _download(ota: OtaService, request: web.Request) -> web.StreamResponse:
    m = FW_PATH.match(request.match_info["name"])
    if m is None:
        return _error("Not found.", 404)
    token = request.query.get("token", "")
    if not token:
        return _error("A device token is required (?token=).", 403)
    dev = ota.server.domain.device_by_token(token)
    if dev is None:
        return _error("Invalid token.", 403)
    ship = ota.shipments.get(int(m.group(1)))
    fw = ota.firmware.get(ship.firmware_id) if ship is not None else None
    if ship is None or fw is None or not hmac.compare_digest(ship.secret.encode(), m.group(2).encode()):
        return _error("No such firmware shipment, or it is no longer active.", 404)
    sid = ship.id
    if ship.state != st.LIVE:
        return _error(f"The shipment is {ship.state}.", 409)
    if not ota.is_target(ship, dev):
        return _error("This device is not a target of the shipment.", 403)
    if ship.wave == 1 and ship.wave1 is not None and dev.id not in ship.wave1:
        return _error("Not yet: this device is in the shipment's second wave.", 409)
    e = ota.entry(sid, dev.id, create=True)
    matches, dev_type = ota.type_matches(fw, dev)
    if not matches and e.status != st.TYPE_MISMATCH:
        ota.set_status(e, st.TYPE_MISMATCH, f"device type {dev_type}, firmware type {fw.type}")
    if e.status in (st.TYPE_MISMATCH, st.SUCCESS):
        return _error(f"No update for this device: {e.status}.", 409)
    mobile = request.query.get("mobile") in ("1", "true", "yes")
    size = fw.size
    start, end = 0, size - 1
    rng = request.headers.get("Range")
    if rng:
        rm = RANGE.match(rng.strip())
        if rm is None or (rm.group(1) == "" and rm.group(2) == ""):
            return _error("Unsupported Range.", 416)
        if rm.group(1) == "":
            start = max(0, size - _range_number(rm.group(2)))
        else:
            start = _range_number(rm.group(1))
            if rm.group(2):
                end = min(size - 1, _range_number(rm.group(2)))
        if start >= size or start > end:
            resp = _error("Range not satisfiable.", 416)
            resp.headers["Content-Range"] = f"bytes */{size}"
            return resp
    resume = start > 0 and e.attempt_open
    head = request.method == "HEAD"
    if not resume and not head:
        if not ota._attempts_left(ship, e):
            ota.stats.limit_refusals += 1
            if e.status != st.DOWNLOAD_LIMIT:
                ota.set_status(e, st.DOWNLOAD_LIMIT, f"{e.attempts} attempts of {ship.attempts_limit}")
            return _error(f"Download limit reached: {ship.attempts_limit} attempts per {ship.reset_period:g} s.", 429)
        if e.attempts == 0:
            e.attempts_since = _now_ms()
        e.attempts += 1
        e.attempt_open = True
        e.bytes = 0
        if e.old_version is None:
            e.old_version = (dev.record.info or {}).get("firmware_version")
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
    length = end - start + 1
    resp = web.StreamResponse(status=206 if rng else 200, headers=headers)
    if rng:
        resp.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    resp.content_length = length
    if head:
        await resp.prepare(request)
        return resp
    try:
        data = ota.open_image(fw)
    except (OSError, ValueError) as exc:  # removed from the data dir, or truncated to nothing
        log.error("ota firmware file unreadable firmware=%d error=%s", fw.id, type(exc).__name__)
        ota.set_status(e, st.UPLOAD_FAILURE, "the firmware file cannot be read on the server")
        return _error("The firmware file cannot be read on the server.", 503)
    detail = f"bytes {start}-{end}" + (" (mobile)" if mobile else "") + (" resume" if resume else "")
    if e.status != st.FIRMWARE_REQUESTED or resume:
        ota.set_status(e, st.FIRMWARE_REQUESTED, detail)
    else:
        ota.save(e)
    e.downloading += 1
    ota.stats.downloads_in_flight += 1
    ota.stats.downloads_started += 1
    try:
        await _stream(ota, request, resp, data, start, end + 1, ship.rate, e)
    except (ConnectionError, TimeoutError, asyncio.CancelledError, RuntimeError) as exc:
        ota.stats.downloads_failed += 1
        reason = "stalled" if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) else "connection closed"
        ota.save(e)
        if e.status not in st.SETTLED:
            ota.set_status(e, st.UPLOAD_FAILURE, f"{reason} after {e.bytes} of {size} bytes")
        log.info("ota download failed shipment=%d device=%d reason=%s bytes=%d", sid, dev.id, reason, e.bytes)
        if isinstance(exc, asyncio.CancelledError):
            raise
        request.transport and request.transport.close()
        return resp
    finally:
        e.downloading -= 1
        ota.stats.downloads_in_flight -= 1
        data.close()
    ota.stats.downloads_completed += 1
    if end + 1 == size:
        e.attempt_open = False
        ota.set_status(e, st.UPLOADED_TO_MOBILE if mobile else st.FIRMWARE_UPLOADED, f"{e.bytes} bytes")
    else:
        ota.save(e)
    return resp


def _now_ms() -> int:
    from blynk_server.model import now_ms

    return now_ms()


async def _stream(
    ota: OtaService,
    request: web.Request,
    resp: web.StreamResponse,
    data: mmap.mmap,
    pos: int,
    stop: int,
    rate: int,
    e,
) -> None:
    """Send data[pos:stop] paced at ``rate`` bytes/s, in chunks of about TICK seconds' worth, each
    only after the socket has taken the previous ones (back-pressure), failing after a stall."""
    loop = asyncio.get_running_loop()
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
    stats = ota.stats
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
            if pos != first and now - last_write > stats.max_send_gap:
                stats.max_send_gap = now - last_write
            last_write = now
            await resp.write(piece)
            await _drained(transport, high, loop, stall)
            pos += len(piece)
            e.bytes = pos
            stats.bytes_served += len(piece)
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


def add_admin_routes(app: web.Application, server: BlynkServer) -> None:
    """Firmware and shipments under /api/ota (JSON; errors as {"error": {"message": ...}})."""

    def guarded(fn):
        # The API key is checked by the admin app's middleware, for these routes as for the others.
        async def handler(request: web.Request) -> web.StreamResponse:
            ota = _service(server)
            if ota is None:
                return _error("OTA is not running.", 503)
            try:
                return await fn(request, ota)
            except ships.ShipmentError as exc:
                return _error(str(exc), exc.status)
            except FirmwareError as exc:
                return _error(str(exc), exc.status)

        return handler

    async def upload(request: web.Request, ota: OtaService) -> web.Response:
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
            fw, created = await asyncio.to_thread(
                register,
                ota.db,
                ota.settings.data_dir,
                up,
                q.get("name") or part_name,
                q.get("type"),
                q.get("version"),
                q.get("build"),
            )
        return web.json_response(fw.as_dict(), status=201 if created else 200)

    async def list_firmware(request: web.Request, ota: OtaService) -> web.Response:
        return web.json_response([f.as_dict() for f in ota.db.list_firmware()])

    async def create(request: web.Request, ota: OtaService) -> web.Response:
        body = await _json_body(request)
        allowed = {
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
        unknown = set(body) - allowed
        if unknown:
            raise ships.ShipmentError(f"unknown field(s): {', '.join(sorted(u[:40] for u in unknown))[:400]}")
        missing = {"name", "firmware", "template"} - set(body)
        if missing:
            raise ships.ShipmentError(f"missing field(s): {', '.join(sorted(missing))}")
        ship = ships.create(ota.db, server.store, **body)
        ota.reload(ship.id)
        return web.json_response(ship.as_dict(), status=201)

    async def list_shipments(request: web.Request, ota: OtaService) -> web.Response:
        return web.json_response([s.as_dict() for s in ota.db.list_shipments(request.query.get("state"))])

    async def show(request: web.Request, ota: OtaService) -> web.StreamResponse:
        rep = ships.report(ota.db, server.store, request.match_info["id"])
        if request.query.get("format") == "csv":
            return web.Response(text=ships.report_csv(rep), content_type="text/csv")
        return web.json_response(rep)

    async def action(request: web.Request, ota: OtaService) -> web.Response:
        act = request.match_info["action"]
        ref = request.match_info["id"]
        if act == "approve":
            body = await _json_body(request)
            if "device" not in body:
                raise ships.ShipmentError('approve needs {"device": ID}')
            ship = ships.approve(ota.db, server.store, ref, body["device"])
        else:
            ship = ships.control(ota.db, ref, act)
        ota.reload(ship.id)
        return web.json_response(ships.find(ota.db, ship.id).as_dict())

    app.router.add_post("/api/ota/firmware", guarded(upload))
    app.router.add_get("/api/ota/firmware", guarded(list_firmware))
    app.router.add_post("/api/ota/shipments", guarded(create))
    app.router.add_get("/api/ota/shipments", guarded(list_shipments))
    app.router.add_get("/api/ota/shipments/{id}", guarded(show))
    app.router.add_post("/api/ota/shipments/{id}/{action:pause|resume|cancel|approve}", guarded(action))
