"""``blynk-server ota ...``: upload firmware, ship it, watch and control shipments.

Works on the data dir directly, with or without a running server: the server notices changes within
``ota_poll_interval`` (default 0.5 s) and acts on them (for instance sends ``ota`` to online devices).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from blynk_server.cli import CliError, open_store, settings_from
from blynk_server.ota import shipments as ships
from blynk_server.ota import status as st
from blynk_server.ota.db import OtaDB
from blynk_server.ota.registry import FirmwareError, Upload, register

COPY_CHUNK = 1 << 20


def add_ota_parser(sub, common) -> None:
    ota = sub.add_parser("ota", help="firmware over the air (Blynk.Air shipments)").add_subparsers(dest="action")

    p = ota.add_parser("upload", help="store a firmware file; prints its id and parsed tag as JSON")
    common(p)
    p.add_argument("file", type=Path)
    p.add_argument("--type", help="firmware type (overrides the tag's fw-type; required if the file has no tag)")
    p.add_argument("--version", help="firmware version (overrides the tag's mcu/fw)")
    p.add_argument("--build", help="build date string (overrides the tag's build)")

    p = ota.add_parser("firmware", help="list stored firmware")
    common(p)

    p = ota.add_parser("ship", help="start a shipment")
    common(p)
    p.add_argument("--name", required=True, help=f"unique name, at most {ships.MAX_NAME} characters")
    p.add_argument("--firmware", required=True, type=int, help="firmware id (from ota upload)")
    p.add_argument("--template", required=True)
    p.add_argument(
        "--device",
        type=int,
        action="append",
        help="target device id (repeatable; default: every device of the template, including ones created later)",
    )
    p.add_argument("--condition", default="lower-version", choices=st.CONDITIONS)
    p.add_argument(
        "--window",
        default="any",
        choices=list(st.WINDOWS),
        help="preferred time in each device's time zone: night 00-06, morning 06-12, ...",
    )
    p.add_argument("--attempts", type=int, default=3, help="download attempts per reset period (default 3)")
    p.add_argument("--reset", default="24h", help="attempts reset period: 24h, 30m, 10s (default 24h)")
    p.add_argument("--rate", type=int, default=0, help="per-device download rate in bytes/s (0 = unlimited)")
    p.add_argument("--max-in-flight", type=int, default=0, help="most devices updating at once (0 = no limit)")
    p.add_argument("--user-control", action="store_true", help="each device waits for 'ota approve'")
    p.add_argument(
        "--first-wave",
        type=float,
        default=100.0,
        help="staged rollout: percent of targets in the first wave (default 100 = no waves)",
    )
    p.add_argument(
        "--max-failure-ratio",
        type=float,
        default=1.0,
        help="pause when failures in the first wave exceed this ratio (default 1 = never)",
    )
    p.add_argument("--host-url", help="download base URL for this shipment (default: server's external URL)")

    p = ota.add_parser("list", help="list shipments")
    common(p)
    p.add_argument("--state", choices=st.STATES)
    p.add_argument("--json", action="store_true")

    p = ota.add_parser("show", help="a shipment: counts by status and each device's timeline")
    common(p)
    p.add_argument("shipment", help="id or name")
    p.add_argument("--json", action="store_true")

    for name in ("pause", "resume", "cancel"):
        p = ota.add_parser(name, help=f"{name} a shipment")
        common(p)
        p.add_argument("shipment", help="id or name")

    p = ota.add_parser("approve", help="let a device of a user-controlled shipment update now")
    common(p)
    p.add_argument("shipment", help="id or name")
    p.add_argument("device", type=int)

    p = ota.add_parser("report", help="a shipment report as JSON or CSV")
    common(p)
    p.add_argument("shipment", help="id or name")
    p.add_argument("--format", choices=("json", "csv"), default="json")


def _ts(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def cmd_ota(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    store = open_store(args)
    db = OtaDB(settings.data_dir)
    try:
        return _run(args, settings, store, db)
    except FirmwareError as exc:
        raise CliError(str(exc)) from None
    except ships.ShipmentError as exc:
        raise CliError(str(exc)) from None
    finally:
        db.close()


def _run(args, settings, store, db: OtaDB) -> int:
    act = args.action
    if act == "upload":
        with Upload(settings.data_dir, settings.ota_max_firmware) as up:
            try:
                with open(args.file, "rb") as fh:
                    while chunk := fh.read(COPY_CHUNK):
                        up.write(chunk)
            except OSError as exc:
                raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
            fw, created = register(db, settings.data_dir, up, args.file.name, args.type, args.version, args.build)
        out = fw.as_dict()
        out["created"] = created
        print(json.dumps(out, indent=2))
    elif act == "firmware":
        for fw in db.list_firmware():
            print(f"{fw.id}\t{fw.type}\t{fw.version}\t{fw.build or '-'}\t{fw.size}\t{fw.md5}\t{fw.file_name or ''}")
    elif act == "ship":
        ship = ships.create(
            db,
            store,
            name=args.name,
            firmware=args.firmware,
            template=args.template,
            devices=args.device,
            condition=args.condition,
            window=args.window,
            attempts=args.attempts,
            reset=args.reset,
            rate=args.rate,
            max_in_flight=args.max_in_flight,
            user_control=args.user_control,
            first_wave=args.first_wave,
            max_failure_ratio=args.max_failure_ratio,
            host_url=args.host_url,
        )
        print(json.dumps(ship.as_dict(), indent=2))
    elif act == "list":
        shipments = db.list_shipments(args.state)
        if args.json:
            print(json.dumps([s.as_dict() for s in shipments], indent=2))
        else:
            for s in shipments:
                targets = "all" if s.targets is None else str(len(s.targets))
                print(
                    f"{s.id}\t{s.name}\t{s.state}\tfirmware={s.firmware_id}\ttemplate={s.template_id}"
                    f"\ttargets={targets}\t{s.reason or ''}"
                )
    elif act == "show":
        rep = ships.report(db, store, args.shipment)
        if args.json:
            print(json.dumps(rep, indent=2))
        else:
            _print_show(rep)
    elif act in ("pause", "resume", "cancel"):
        ship = ships.control(db, args.shipment, act)
        print(f"shipment {ship.id} {ship.state}")
    elif act == "approve":
        ship = ships.approve(db, store, args.shipment, args.device)
        print(f"device {args.device} approved in shipment {ship.id}")
    elif act == "report":
        rep = ships.report(db, store, args.shipment)
        sys.stdout.write(json.dumps(rep, indent=2) + "\n" if args.format == "json" else ships.report_csv(rep))
    else:
        raise CliError(
            "ota needs an action: upload, firmware, ship, list, show, pause, resume, cancel, approve, report"
        )
    return 0


def _print_show(rep: dict) -> None:
    s, fw = rep["shipment"], rep["firmware"] or {}
    print(f"Shipment {s['id']} {s['name']!r}: {s['state']}" + (f" ({s['reason']})" if s["reason"] else ""))
    print(
        f"Firmware {fw.get('id')}: type={fw.get('type')} version={fw.get('version')} build={fw.get('build')}"
        f" size={fw.get('size')} md5={fw.get('md5')}"
    )
    print(
        f"Template {s['template_id']}, targets {'all' if s['targets'] is None else len(s['targets'])},"
        f" condition {s['condition']}, window {s['time_window']}, attempts {s['attempts_limit']}"
        f" per {s['reset_period']:g} s, rate {s['rate'] or 'unlimited'} B/s, wave {s['wave']}"
    )
    print()
    print(f"{'Status':<30}Devices")
    for status, n in rep["counts"].items():
        if n:
            print(f"{status:<30}{n}")
    for d in rep["devices"]:
        print()
        print(
            f"Device {d['device_id']} {d['name']!r}: {d['status']} (firmware {d['firmware_version']},"
            f" attempts {d['attempts']})"
        )
        for ev in d["timeline"]:
            print(f"  {_ts(ev['ts'])}  {ev['status']}" + (f"  {ev['detail']}" if ev["detail"] else ""))
