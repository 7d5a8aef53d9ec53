"""Creating shipments and changing their state: the rules, shared by the running server
(``OtaService``, for the admin API) and the CLI when no server runs.

The functions taking an ``OtaDB`` are synchronous database work (the server runs them on the store's
writer thread); ``transition``, ``check_active`` and ``check_target`` are pure, so the server applies
them to the shipment it holds in memory.
"""

from __future__ import annotations

import csv
import io
import math
import sqlite3
from typing import Protocol

from blynk_server.model import DeviceRecord
from blynk_server.ota import status as st
from blynk_server.ota.db import OtaDB, Shipment
from protocol.body import BodyError, parse_uint

MAX_NAME = 40
MAX_ID = 2**63 - 1  # SQLite's INTEGER: larger ids cannot exist, and would overflow in a query
MAX_TEMPLATE = 256
MAX_TARGETS = 10_000  # devices in an explicit list; "every device of the template" has no list
MAX_ATTEMPTS = 1000
MAX_RESET = 365 * 86400.0  # seconds
MIN_RATE, MAX_RATE = 512, 10**9  # bytes/s: below ~512 B/s a 512-byte chunk leaves Edgent idle too long
MAX_IN_FLIGHT = 1_000_000
MAX_URL = 256  # a host URL has to fit the ota command in the device's buff-in with path and token


class ShipmentError(ValueError):
    """A request that cannot be applied; the message is shown as-is (CLI exit 2, HTTP 400/404/409)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Catalog(Protocol):
    """What shipments need to know of templates and devices (the store answers it)."""

    def get_template(self, template_id: str) -> object | None: ...

    def get_device(self, device_id: int) -> DeviceRecord | None: ...

    def list_devices(self, template_id: str | None = None) -> list[DeviceRecord]: ...


def parse_id(value: object, what: str) -> int:
    """An id from the CLI or JSON (an int, or a string of digits) of any length: 1..MAX_ID, else
    ShipmentError, without ``int()`` ever seeing thousands of digits."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ShipmentError(f"{what} must be a number")
    try:
        n = parse_uint(value, MAX_ID) if isinstance(value, str) else value
    except BodyError:
        raise ShipmentError(f"{what} must be a number in 1..{MAX_ID}") from None
    if not 1 <= n <= MAX_ID:
        raise ShipmentError(f"{what} must be a number in 1..{MAX_ID}")
    return n


def _int(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ShipmentError(f"{what} must be a whole number in {low}..{high}")
    return value


def _real(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ShipmentError(f"{what} must be a number")
    return float(value)


def _text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ShipmentError(f"{what} must be a string of 1..{limit} characters")
    return value


def create(
    db: OtaDB,
    store: Catalog,
    *,
    name: str,
    firmware: int,
    template: str,
    devices: list[int] | None = None,
    condition: str = "lower-version",
    window: str = "any",
    attempts: int = 3,
    reset: float | str = "24h",
    rate: int = 0,
    max_in_flight: int = 0,
    user_control: bool = False,
    first_wave: float = 100.0,
    max_failure_ratio: float = 1.0,
    host_url: str | None = None,
) -> Shipment:
    """Validate and store a live shipment. Every field is checked for type and range here, as the
    admin API hands over whatever JSON it got."""
    name = name.strip() if isinstance(name, str) else ""
    if not name or len(name) > MAX_NAME:
        raise ShipmentError(f"a shipment name is 1..{MAX_NAME} characters")
    if name.isdigit():
        raise ShipmentError("a shipment name must not be only digits (those are read as a shipment id)")
    fw = db.firmware(parse_id(firmware, "firmware"))
    if fw is None:
        raise ShipmentError(f"no firmware {firmware}", 404)
    template = _text(template, "template", MAX_TEMPLATE)
    if store.get_template(template) is None:
        raise ShipmentError(f"no template {template!r}", 404)
    if not isinstance(condition, str) or condition not in st.CONDITIONS:
        raise ShipmentError(f"condition must be one of {', '.join(st.CONDITIONS)}")
    if not isinstance(window, str) or window not in st.WINDOWS:
        raise ShipmentError(f"time window must be one of {', '.join(st.WINDOWS)}")
    attempts = _int(attempts, "attempts limit", 1, MAX_ATTEMPTS)
    if isinstance(reset, bool) or not isinstance(reset, (str, int, float)) or len(str(reset)) > 32:
        raise ShipmentError("reset period is a duration such as 24h, 30m or 10s")
    try:
        reset_s = st.parse_duration(reset)
    except ValueError as exc:
        raise ShipmentError(str(exc)) from None
    if not 0 < reset_s <= MAX_RESET:  # also false for NaN
        raise ShipmentError(f"reset period must be positive and at most {MAX_RESET / 86400:g} days")
    rate = _int(rate, "rate", 0, MAX_RATE)
    if 0 < rate < MIN_RATE:
        raise ShipmentError(f"rate is 0 (unlimited) or {MIN_RATE}..{MAX_RATE} bytes/s")
    max_in_flight = _int(max_in_flight, "max in flight", 0, MAX_IN_FLIGHT)
    if not isinstance(user_control, bool):
        raise ShipmentError("user_control must be true or false")
    first_wave = _real(first_wave, "first wave")
    if not 0 < first_wave <= 100:
        raise ShipmentError("first wave is a percentage in (0, 100]")
    max_failure_ratio = _real(max_failure_ratio, "max failure ratio")
    if not 0 <= max_failure_ratio <= 1:
        raise ShipmentError("max failure ratio is between 0 and 1")
    if host_url is not None:
        host_url = _text(host_url, "host URL", MAX_URL)
        if not host_url.startswith(("http://", "https://")) or not host_url.isascii() or not host_url.isprintable():
            raise ShipmentError("host URL must start with http:// or https:// and be printable ASCII")
        if " " in host_url:
            raise ShipmentError("host URL must not contain spaces")
    if devices is not None and (not isinstance(devices, list) or len(devices) > MAX_TARGETS):
        raise ShipmentError(f"devices is a list of at most {MAX_TARGETS} device ids")
    targets = None
    if devices:
        targets = sorted({parse_id(d, "device") for d in devices})
        known = {d.id for d in store.list_devices(template)}  # one query, not one per listed device
        for did in targets:
            if did not in known:
                rec = store.get_device(did)
                if rec is None:
                    raise ShipmentError(f"no device {did}", 404)
                raise ShipmentError(f"device {did} belongs to template {rec.template_id}, not {template}")
    wave1 = None
    if first_wave < 100:
        ids = targets if targets is not None else sorted(d.id for d in store.list_devices(template))
        wave1 = ids[: max(1, math.ceil(len(ids) * first_wave / 100))] if ids else []
    try:
        return db.add_shipment(
            {
                "name": name,
                "firmware_id": fw.id,
                "template_id": template,
                "targets": targets,
                "condition": condition,
                "time_window": window,
                "attempts_limit": attempts,
                "reset_period": reset_s,
                "rate": rate,
                "max_in_flight": max_in_flight,
                "user_control": user_control,
                "first_wave_percent": first_wave,
                "max_failure_ratio": max_failure_ratio,
                "host_url": host_url,
                "wave": 1 if wave1 is not None else 2,
                "wave1": wave1,
            }
        )
    except sqlite3.IntegrityError:
        raise ShipmentError(f"a shipment named {name!r} already exists", 409) from None


def parse_ref(ref: str | int) -> int | str:
    """A shipment reference: an id (an int or a string of digits, of any length) or a name;
    ShipmentError 404 for one no shipment can have."""
    if isinstance(ref, int) or (ref.isascii() and ref.isdigit()):
        try:
            return parse_id(ref, "shipment id")
        except ShipmentError:
            raise ShipmentError(f"no shipment {str(ref)[:24]!r}", 404) from None
    if len(ref) > MAX_NAME:
        raise ShipmentError(f"no shipment {ref[:24]!r}...", 404)
    return ref


def find(db: OtaDB, ref: str | int) -> Shipment:
    """A shipment by id or by name (``parse_ref``)."""
    ship = db.shipment(parse_ref(ref))
    if ship is None:
        raise ShipmentError(f"no shipment {str(ref)!r}", 404)
    return ship


ACTIONS = {"pause": (st.LIVE,), "resume": (st.PAUSED,), "cancel": (st.LIVE, st.PAUSED)}


def transition(ship: Shipment, action: str) -> tuple[str, str | None, int | None]:
    """What pause / resume / cancel does to ``ship``: (new state, reason, new wave or None);
    ShipmentError when the action is unknown or not allowed in the shipment's state. Resuming a
    shipment whose first wave paused it moves on to the rest."""
    if action not in ACTIONS:
        raise ShipmentError(f"unknown action {action!r}")
    if ship.state not in ACTIONS[action]:
        raise ShipmentError(f"shipment {ship.id} is {ship.state}; cannot {action} it", 409)
    if action == "pause":
        return st.PAUSED, "paused by operator", None
    if action == "resume":
        # After the first wave paused itself, resuming is the operator's go-ahead for the rest.
        return st.LIVE, None, 2 if (ship.reason or "").startswith("first wave") else None
    return st.CANCELLED, "cancelled by operator", None


def control(db: OtaDB, ref: str | int, action: str) -> Shipment:
    """pause / resume / cancel in the database (the CLI with no server running)."""
    ship = find(db, ref)
    state, reason, wave = transition(ship, action)
    db.set_state(ship.id, state, reason, wave)
    return find(db, ship.id)


def check_active(ship: Shipment) -> None:
    if ship.state not in (st.LIVE, st.PAUSED):
        raise ShipmentError(f"shipment {ship.id} is {ship.state}", 409)


def check_target(ship: Shipment, device_id: int, rec: DeviceRecord | None) -> None:
    """``rec`` (the device ``device_id``, None if there is none) is a target of ``ship``."""
    if rec is None or rec.template_id != ship.template_id or (ship.targets and device_id not in ship.targets):
        raise ShipmentError(f"device {device_id} is not a target of shipment {ship.id}", 404)


def approve(db: OtaDB, store: Catalog, ref: str | int, device: object) -> Shipment:
    """Approve one device in the database (the CLI with no server running)."""
    ship = find(db, ref)
    device = parse_id(device, "device")
    check_active(ship)
    check_target(ship, device, store.get_device(device))
    db.approve(ship.id, device)
    return ship


def report(db: OtaDB, store: Catalog, ref: str | int) -> dict:
    """Everything about a shipment: settings, firmware, counts by status, each device and its timeline."""
    ship = find(db, ref)
    fw = db.firmware(ship.firmware_id)
    entries = {d.device_id: d for d in db.devices(ship.id)}
    ids = ship.targets if ship.targets is not None else [d.id for d in store.list_devices(ship.template_id)]
    ids = sorted(set(ids) | set(entries))
    events = db.events(ship.id)
    timeline: dict[int, list] = {}
    for ev in events:
        timeline.setdefault(ev["device_id"], []).append(
            {"ts": ev["ts"], "status": ev["status"], "detail": ev["detail"]}
        )
    counts = dict.fromkeys(st.ALL_STATUSES, 0)
    counts["Pending"] = 0
    devices = []
    for did in ids:
        e = entries.get(did)
        rec = store.get_device(did)
        status = e.status if e is not None and timeline.get(did) else "Pending"
        counts[status] = counts.get(status, 0) + 1
        info = (rec.info or {}) if rec else {}
        devices.append(
            {
                "device_id": did,
                "name": rec.name if rec else None,
                "status": status,
                "firmware_version": info.get("firmware_version"),
                "attempts": e.attempts if e else 0,
                "bytes": e.bytes if e else 0,
                "wave": e.wave if e else None,
                "updated_at": e.updated_at if e else None,
                "timeline": timeline.get(did, []),
            }
        )
    return {"shipment": ship.as_dict(), "firmware": fw.as_dict() if fw else None, "counts": counts, "devices": devices}


def report_csv(rep: dict) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(
        [
            "shipment_id",
            "device_id",
            "name",
            "status",
            "firmware_version",
            "attempts",
            "bytes",
            "updated_at",
            "timeline",
        ]
    )
    sid = rep["shipment"]["id"]
    for d in rep["devices"]:
        tl = "; ".join(f"{e['ts']} {e['status']}" + (f" ({e['detail']})" if e["detail"] else "") for e in d["timeline"])
        w.writerow(
            [
                sid,
                d["device_id"],
                d["name"],
                d["status"],
                d["firmware_version"] or "",
                d["attempts"],
                d["bytes"],
                d["updated_at"] or "",
                tl,
            ]
        )
    return out.getvalue()
