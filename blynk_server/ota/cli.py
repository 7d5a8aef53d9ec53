"""``blynk-server ota ...``: upload firmware, ship it, watch and control shipments.

While a server runs on the data dir, every subcommand goes to it (its ``/api/ota`` routes, over the
control socket), so it acts at once (for instance sends ``ota`` to online devices); with no server
running, the command holds the data dir's lock and works on the OTA tables itself. Each subcommand is
written once against :class:`DirectOta` and :class:`OtaViaServer`.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlencode

from blynk_server.cli_common import CliError, Local, Remote, add_common, open_data_dir
from blynk_server.ota import shipments as ships
from blynk_server.ota import status as st
from blynk_server.ota.db import OtaDB
from blynk_server.ota.registry import FirmwareError, Upload, register

COPY_CHUNK = 1 << 20


def add_ota_parser(sub) -> None:
    ota = sub.add_parser("ota", help="firmware over the air (Blynk.Air shipments)").add_subparsers(dest="action")

    p = ota.add_parser("upload", help="store a firmware file; prints its id and parsed tag as JSON")
    add_common(p)
    p.add_argument("file", type=Path)
    p.add_argument("--type", help="firmware type (overrides the tag's fw-type; required if the file has no tag)")
    p.add_argument("--version", help="firmware version (overrides the tag's mcu/fw)")
    p.add_argument("--build", help="build date string (overrides the tag's build)")

    p = ota.add_parser("firmware", help="list stored firmware")
    add_common(p)

    p = ota.add_parser("ship", help="start a shipment")
    add_common(p)
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
    add_common(p)
    p.add_argument("--state", choices=st.STATES)
    p.add_argument("--json", action="store_true")

    p = ota.add_parser("show", help="a shipment: counts by status and each device's timeline")
    add_common(p)
    p.add_argument("shipment", help="id or name")
    p.add_argument("--json", action="store_true")

    for name in ("pause", "resume", "cancel"):
        p = ota.add_parser(name, help=f"{name} a shipment")
        add_common(p)
        p.add_argument("shipment", help="id or name")

    p = ota.add_parser("approve", help="let a device of a user-controlled shipment update now")
    add_common(p)
    p.add_argument("shipment", help="id or name")
    p.add_argument("device", type=int)

    p = ota.add_parser("report", help="a shipment report as JSON or CSV")
    add_common(p)
    p.add_argument("shipment", help="id or name")
    p.add_argument("--format", choices=("json", "csv"), default="json")


def _ts(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


class DirectOta:
    """No server runs: the OTA tables and firmware files, under this command's lock."""

    def __init__(self, local: Local) -> None:
        self.settings = local.settings
        self.store = local.store
        self.db = OtaDB(local.settings.data_dir)

    def close(self) -> None:
        self.db.close()

    def upload(self, path: Path, fw_type: str | None, version: str | None, build: str | None) -> tuple[dict, bool]:
        data_dir = self.settings.data_dir
        with Upload(data_dir, self.settings.ota_max_firmware) as up:
            try:
                with open(path, "rb") as fh:
                    while chunk := fh.read(COPY_CHUNK):
                        up.write(chunk)
            except OSError as exc:
                raise CliError(f"cannot read {path}: {exc.strerror}") from None
            fw, created = register(self.db, data_dir, up, path.name, fw_type, version, build)
        return fw.as_dict(), created

    def list_firmware(self) -> list[dict]:
        return [fw.as_dict() for fw in self.db.list_firmware()]

    def ship(self, fields: dict) -> dict:
        return ships.create(self.db, self.store, **fields).as_dict()

    def list_shipments(self, state: str | None) -> list[dict]:
        return [s.as_dict() for s in self.db.list_shipments(state)]

    def report(self, ref: str) -> dict:
        return ships.report(self.db, self.store, ref)

    def report_csv(self, ref: str) -> str:
        return ships.report_csv(self.report(ref))

    def control(self, ref: str, action: str) -> dict:
        return ships.control(self.db, ref, action).as_dict()

    def approve(self, ref: str, device: int) -> dict:
        return ships.approve(self.db, self.store, ref, device).as_dict()


class OtaViaServer:
    """A server runs on the data dir: its ``/api/ota`` routes, over the control socket."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    def close(self) -> None:
        pass

    def upload(self, path: Path, fw_type: str | None, version: str | None, build: str | None) -> tuple[dict, bool]:
        query = {"name": path.name, "type": fw_type, "version": version, "build": build}
        url = "/api/ota/firmware?" + urlencode({k: v for k, v in query.items() if v is not None})
        try:
            fh = open(path, "rb")  # noqa: SIM115 - streamed by the request, closed below
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror}") from None
        with fh:
            status, fw = self.remote.call("POST", url, body=fh, headers={"Content-Type": "application/octet-stream"})
        return fw, status == 201

    def list_firmware(self) -> list[dict]:
        return self.remote.call("GET", "/api/ota/firmware")[1]

    def ship(self, fields: dict) -> dict:
        return self.remote.call("POST", "/api/ota/shipments", fields)[1]

    def list_shipments(self, state: str | None) -> list[dict]:
        query = "?" + urlencode({"state": state}) if state else ""
        return self.remote.call("GET", f"/api/ota/shipments{query}")[1]

    def report(self, ref: str) -> dict:
        return self.remote.call("GET", f"/api/ota/shipments/{_ref(ref)}")[1]

    def report_csv(self, ref: str) -> str:
        return self.remote.call("GET", f"/api/ota/shipments/{_ref(ref)}?format=csv")[1].decode()

    def control(self, ref: str, action: str) -> dict:
        return self.remote.call("POST", f"/api/ota/shipments/{_ref(ref)}/{action}")[1]

    def approve(self, ref: str, device: int) -> dict:
        return self.remote.call("POST", f"/api/ota/shipments/{_ref(ref)}/approve", {"device": device})[1]


def _ref(ref: str) -> str:
    """A shipment id or name as one path segment."""
    return quote(ref, safe="")


def cmd_ota(args: argparse.Namespace) -> int:
    if args.action is None:
        raise CliError(
            "ota needs an action: upload, firmware, ship, list, show, pause, resume, cancel, approve, report"
        )
    with open_data_dir(args) as target:
        ota = DirectOta(target) if isinstance(target, Local) else OtaViaServer(target)
        try:
            return _run(args, ota)
        except (FirmwareError, ships.ShipmentError) as exc:
            raise CliError(str(exc)) from None
        finally:
            ota.close()


def _run(args, ota: DirectOta | OtaViaServer) -> int:
    act = args.action
    if act == "upload":
        out, created = ota.upload(args.file, args.type, args.version, args.build)
        out["created"] = created
        print(json.dumps(out, indent=2))
    elif act == "firmware":
        for fw in ota.list_firmware():
            print(
                f"{fw['id']}\t{fw['type']}\t{fw['version']}\t{fw['build'] or '-'}\t{fw['size']}\t{fw['md5']}"
                f"\t{fw['file_name'] or ''}"
            )
    elif act == "ship":
        fields = {
            "name": args.name,
            "firmware": args.firmware,
            "template": args.template,
            "devices": args.device,
            "condition": args.condition,
            "window": args.window,
            "attempts": args.attempts,
            "reset": args.reset,
            "rate": args.rate,
            "max_in_flight": args.max_in_flight,
            "user_control": args.user_control,
            "first_wave": args.first_wave,
            "max_failure_ratio": args.max_failure_ratio,
            "host_url": args.host_url,
        }
        print(json.dumps(ota.ship(fields), indent=2))
    elif act == "list":
        shipments = ota.list_shipments(args.state)
        if args.json:
            print(json.dumps(shipments, indent=2))
        else:
            for s in shipments:
                targets = "all" if s["targets"] is None else str(len(s["targets"]))
                print(
                    f"{s['id']}\t{s['name']}\t{s['state']}\tfirmware={s['firmware_id']}\ttemplate={s['template_id']}"
                    f"\ttargets={targets}\t{s['reason'] or ''}"
                )
    elif act == "show":
        rep = ota.report(args.shipment)
        if args.json:
            print(json.dumps(rep, indent=2))
        else:
            _print_show(rep)
    elif act in ("pause", "resume", "cancel"):
        ship = ota.control(args.shipment, act)
        print(f"shipment {ship['id']} {ship['state']}")
    elif act == "approve":
        ship = ota.approve(args.shipment, args.device)
        print(f"device {args.device} approved in shipment {ship['id']}")
    elif act == "report":
        if args.format == "json":
            sys.stdout.write(json.dumps(ota.report(args.shipment), indent=2) + "\n")
        else:
            sys.stdout.write(ota.report_csv(args.shipment))
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
