"""Creating shipments and changing their state: shared by the CLI and the admin API.

Both only write the database; the running server picks changes up through the shipment's ``rev``
(and the admin API also pokes the service so it acts at once).
"""

from __future__ import annotations

import csv
import io
import math
import sqlite3

from blynk_server.ota import status as st
from blynk_server.ota.db import OtaDB, Shipment
from blynk_server.store import SqliteStore

MAX_NAME = 40


class ShipmentError(ValueError):
    """A request that cannot be applied; the message is shown as-is (CLI exit 2, HTTP 400/404/409)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def create(
    db: OtaDB,
    store: SqliteStore,
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
    """Validate and store a live shipment."""
    name = (name or "").strip()
    if not name or len(name) > MAX_NAME:
        raise ShipmentError(f"a shipment name is 1..{MAX_NAME} characters")
    fw = db.firmware(int(firmware))
    if fw is None:
        raise ShipmentError(f"no firmware {firmware}", 404)
    if store.get_template(template) is None:
        raise ShipmentError(f"no template {template!r}", 404)
    if condition not in st.CONDITIONS:
        raise ShipmentError(f"condition must be one of {', '.join(st.CONDITIONS)}")
    if window not in st.WINDOWS:
        raise ShipmentError(f"time window must be one of {', '.join(st.WINDOWS)}")
    if attempts < 1:
        raise ShipmentError("attempts limit must be at least 1")
    try:
        reset_s = st.parse_duration(reset)
    except ValueError as exc:
        raise ShipmentError(str(exc)) from None
    if reset_s <= 0 or rate < 0 or max_in_flight < 0:
        raise ShipmentError("reset period must be positive; rate and max in flight must not be negative")
    if not 0 < first_wave <= 100:
        raise ShipmentError("first wave is a percentage in (0, 100]")
    if not 0 <= max_failure_ratio <= 1:
        raise ShipmentError("max failure ratio is between 0 and 1")
    if host_url and not host_url.startswith(("http://", "https://")):
        raise ShipmentError("host URL must start with http:// or https://")
    targets = None
    if devices:
        targets = sorted(set(devices))
        for did in targets:
            rec = store.get_device(did)
            if rec is None:
                raise ShipmentError(f"no device {did}", 404)
            if rec.template_id != template:
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


def find(db: OtaDB, ref: str | int) -> Shipment:
    ship = db.shipment(ref)
    if ship is None:
        raise ShipmentError(f"no shipment {ref!r}", 404)
    return ship


def control(db: OtaDB, ref: str | int, action: str) -> Shipment:
    """pause / resume / cancel. Resuming a shipment whose first wave paused it moves on to the rest."""
    ship = find(db, ref)
    allowed = {"pause": (st.LIVE,), "resume": (st.PAUSED,), "cancel": (st.LIVE, st.PAUSED)}
    if action not in allowed:
        raise ShipmentError(f"unknown action {action!r}")
    if ship.state not in allowed[action]:
        raise ShipmentError(f"shipment {ship.id} is {ship.state}; cannot {action} it", 409)
    if action == "pause":
        db.set_state(ship.id, st.PAUSED, "paused by operator")
    elif action == "resume":
        # After the first wave paused itself, resuming is the operator's go-ahead for the rest.
        db.set_state(ship.id, st.LIVE, None, wave=2 if (ship.reason or "").startswith("first wave") else None)
    else:
        db.set_state(ship.id, st.CANCELLED, "cancelled by operator")
    return find(db, ship.id)


def approve(db: OtaDB, store: SqliteStore, ref: str | int, device: int) -> Shipment:
    ship = find(db, ref)
    if ship.state not in (st.LIVE, st.PAUSED):
        raise ShipmentError(f"shipment {ship.id} is {ship.state}", 409)
    rec = store.get_device(device)
    if rec is None or rec.template_id != ship.template_id or (ship.targets and device not in ship.targets):
        raise ShipmentError(f"device {device} is not a target of shipment {ship.id}", 404)
    db.approve(ship.id, device)
    return ship


def report(db: OtaDB, store: SqliteStore, ref: str | int) -> dict:
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
