"""The legacy blynk-server token API, ``/{token}/...`` (reference protocol.md §10.1).

Errors are ``text/plain`` with the legacy messages (the device app's error middleware renders
``ApiError`` as plain text for these paths). Each request spends one of the device's request rate
(``http_request_rate``), as on ``/external/api``. The path holds the token: logs name the route
pattern. Any pin may be written, with or without a datastream: the legacy server had none (the one
door where the datastream rule of ``Domain.write_pin`` is relaxed).

The legacy server's other calls, mapped to this server's parts: ``notify`` logs the event ``notify``
(as the binary NOTIFY does), ``email`` queues an e-mail through the mailer (as the binary EMAIL, with
its per-device interval; ``No email widget.`` when e-mail is off), ``rtc`` answers the device time
zone's wall-clock time, ``data/{pin}`` redirects to a gzipped CSV of the pin's last 30 days by minute
(the export store's file). ``isAppConnected`` is always false: this server has no app sessions.
``qr`` and ``project`` (the mobile app's project) have no equivalent and answer 404.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from aiohttp import web

from blynk_server.domain import DeviceState, Domain, InvalidValue
from blynk_server.export import ExportBusy, Exports, write_gzip
from blynk_server.hardware.session import MAX_NOTIFY
from blynk_server.history import PERIODS_MS, HistoryQuery
from blynk_server.http.common import MAX_BATCH, ApiError, json_timestamp, json_to_raw, parse_pin_name
from blynk_server.http.limits import token_device
from blynk_server.hub import Hub
from blynk_server.mailer import Mailer, MailOff, MailRefused
from blynk_server.model import now_ms
from blynk_server.timeutil import rtc_seconds, zone
from protocol.body import SEP, Pin

CSV_STEP_MS = 60_000  # data/{pin}: minute averages, as the legacy export

JSON_UTF8 = "application/json"


def _json(value: object) -> web.Response:
    return web.Response(text=json.dumps(value), content_type=JSON_UTF8, charset="utf-8")


def _text(value: object) -> str:
    """A value from a JSON body as text: numbers as ``json_to_raw`` gives them (range-checked), the
    rest as ``str()`` (the legacy server's Jackson took any scalar)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return json_to_raw(value).decode()
        except ValueError as exc:
            raise ApiError(str(exc)) from None
    return str(value)


def legacy_csv(device_id: int, rows: list[tuple[int, object]]) -> bytes:
    """The legacy export's lines: ``value,ts,deviceId`` (value as a Java double prints it), no header."""
    return "".join(f"{float(v)!r},{ts},{device_id}\n" for ts, v in rows).encode()  # type: ignore[arg-type]


def add_routes(
    app: web.Application,
    domain: Domain,
    hub: Hub,
    mailer: Mailer | None = None,
    exports: Exports | None = None,
    max_points: int = 10_000,
) -> None:

    def device(request: web.Request) -> DeviceState:
        return token_device(domain, request, request.match_info.get("token"))

    def pin(request: web.Request) -> Pin:
        p = parse_pin_name(request.match_info["pin"])
        if p is None:
            raise ApiError("Wrong pin format.")
        return p

    def write(dev: DeviceState, p: Pin, values: list[str], ts: int | None = None) -> None:
        try:
            domain.write_pin(dev, p, SEP.join(v.encode() for v in values), ts, deliver=True, needs_datastream=False)
        except InvalidValue as exc:
            raise ApiError(str(exc)) from None

    async def json_body(request: web.Request) -> object:
        if request.content_type != "application/json":
            raise ApiError("Unexpected content type. Expecting application/json.", 500)
        try:
            return json.loads(await request.read())
        except (ValueError, UnicodeDecodeError, RecursionError):  # also numbers over 4,300 digits
            raise ApiError("Wrong request format.") from None

    async def get_pin(request: web.Request) -> web.Response:
        dev = device(request)
        p = pin(request)
        value = domain.read_pin(dev, p.key)
        if value is None:
            # The legacy answer for a widget's pin with no value yet is ``[]`` (apiary.apib); a
            # datastream is this server's widget.
            if p.key in dev.template.datastreams:
                return _json([])
            raise ApiError("Requested pin doesn't exist in the app.")
        return _json([v.decode("utf-8", "replace") for v in value.split(SEP)])

    async def update_get(request: web.Request) -> web.Response:
        dev = device(request)
        p = pin(request)
        q = request.query
        if "value" in q:
            write(dev, p, q.getall("value"))
            return web.Response()
        names = list(dict.fromkeys(q.keys()))
        if not names:
            raise ApiError("Wrong request format.")
        try:
            for name in names:
                domain.set_property(dev, [p], name, [v.encode() for v in q.getall(name)])
        except InvalidValue as exc:  # the domain's caps on property names, sizes and counts
            raise ApiError(str(exc)) from None
        return web.Response()

    async def update_put(request: web.Request) -> web.Response:
        dev = device(request)
        p = pin(request)
        body = await json_body(request)
        if not isinstance(body, list) or not body:
            raise ApiError("No pin for update provided.")
        write(dev, p, [_text(v) for v in body])
        return web.Response()

    async def extra_put(request: web.Request) -> web.Response:
        dev = device(request)
        p = pin(request)
        body = await json_body(request)
        if not isinstance(body, list) or not body:
            raise ApiError("No pin for update provided.")
        if len(body) > MAX_BATCH:
            raise ApiError(f"Too much data in batch. Maximum batch size is {MAX_BATCH} points.")
        points = []
        for item in body:
            if not isinstance(item, dict) or "value" not in item or not isinstance(item.get("timestamp"), int):
                raise ApiError("Wrong request format.")
            points.append((json_timestamp(item["timestamp"]), _text(item["value"]).encode()))
        # Every point goes to history once; the first one also becomes the current value and reaches the
        # device (a write that keeps history itself only on a datastream with ``history``).
        ds = dev.template.datastreams.get(p.key)
        try:
            domain.write_history(
                dev, p, points[1:] if ds is not None and ds.history else points, needs_datastream=False
            )
        except InvalidValue as exc:
            raise ApiError(str(exc)) from None
        write(dev, p, [points[0][1].decode()], points[0][0])
        return web.Response()

    async def is_hw_connected(request: web.Request) -> web.Response:
        dev = device(request)
        return _json(hub.is_online(dev.id))

    async def is_app_connected(request: web.Request) -> web.Response:
        device(request)
        return _json(False)  # no mobile-app connections on this server

    async def notify(request: web.Request) -> web.Response:
        dev = device(request)
        body = await json_body(request)
        text = body.get("body") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text or len(text) > MAX_NOTIFY:
            raise ApiError("Body is empty or larger than 255 chars.")
        try:
            domain.log_event(dev, "notify", text)
        except InvalidValue as exc:  # a limit of events (rate, per day)
            raise ApiError(str(exc)) from None
        return web.Response()

    async def email(request: web.Request) -> web.Response:
        dev = device(request)
        body = await json_body(request)
        fields = body if isinstance(body, dict) else {}
        to, subj, title = fields.get("to"), fields.get("subj"), fields.get("title") or ""
        if mailer is None or not mailer.enabled:
            raise ApiError("No email widget.")
        if not (isinstance(to, str) and to and isinstance(subj, str) and subj and isinstance(title, str)):
            raise ApiError("Email body is wrong. Missing or empty fields 'to', 'subj'.")
        try:
            mailer.send_from_device(dev.id, "\0".join((to, subj, title)).encode())
        except MailOff:
            raise ApiError("No email widget.") from None
        except MailRefused as exc:  # a bad address, the device's interval
            raise ApiError(f"Email refused: {exc}") from None
        return web.Response()

    async def rtc(request: web.Request) -> web.Response:
        dev = device(request)
        return web.Response(text=f"[{rtc_seconds(dev.record.timezone)}]", content_type=JSON_UTF8, charset="utf-8")

    async def data(request: web.Request) -> web.Response:
        dev = device(request)
        p = pin(request)
        if exports is None:
            raise ApiError("Error getting pin data.")
        until = now_ms()
        query = HistoryQuery(
            dev.id,
            p.key,
            dev.template.datastreams.get(p.key),
            until - PERIODS_MS["MONTH"],
            until,
            CSV_STEP_MS,
            "AVG",
            "TS",
            zone(None),
            max(1, max_points),
        )
        (_, rows, _), *_ = await domain.history_fetch([query], max_points)
        if not rows:
            raise ApiError("No data for pin.")
        stamp = datetime.fromtimestamp(until / 1000, UTC).strftime("%Y%m%d%H%M%S")
        name = exports.new_name(f"{dev.id}_{p.key}_{stamp}", "csv.gz")
        try:
            await exports.build(name, lambda fh: write_gzip(fh, legacy_csv(dev.id, rows)))
        except ExportBusy as exc:
            raise ApiError(str(exc), 429) from None
        raise web.HTTPMovedPermanently("/" + name)

    r = app.router
    r.add_get("/{token}/get/{pin}", get_pin)
    r.add_get("/{token}/update/{pin}", update_get)
    r.add_put("/{token}/update/{pin}", update_put)
    r.add_put("/{token}/pin/{pin}", update_put)
    r.add_put("/{token}/extra/pin/{pin}", extra_put)
    r.add_get("/{token}/isHardwareConnected", is_hw_connected)
    r.add_get("/{token}/isAppConnected", is_app_connected)
    r.add_post("/{token}/notify", notify)
    r.add_post("/{token}/email", email)
    r.add_get("/{token}/rtc", rtc)
    r.add_get("/{token}/data/{pin}", data)
