"""The ``blynk-server`` command: ``serve`` (the default) and provisioning on the same data dir.

Provisioning works while the server runs: both open the same SQLite file (WAL), and the server
confirms every login against it, so a device created here can log in at once.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sqlite3
import sys
from pathlib import Path

from blynk_server import config
from blynk_server.model import DATASTREAM_TYPES, Datastream, new_token
from blynk_server.redact import RedactingFormatter
from blynk_server.store import SqliteStore
from blynk_server.store.sqlite import StoreUnavailable
from protocol.body import BodyError, parse_pin


class CliError(Exception):
    """A user error: printed as one line on stderr, exit status 2."""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML settings file")
    p.add_argument("--data-dir", type=Path, help="data directory (default ./blynk-data)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blynk-server", description="Self-hosted Blynk IoT server")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the server (the default)")
    _serve_flags(serve)
    _serve_flags(parser)

    tpl = sub.add_parser("template", help="templates and their datastreams").add_subparsers(dest="action")
    create = tpl.add_parser("create", help="create a template")
    _common(create)
    create.add_argument("--id", required=True, help="template id, e.g. TMPLabc123")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--datastream",
        action="append",
        default=[],
        metavar="SPEC",
        help="pin=V1,name=Temperature,type=double,min=-40,max=85,default=0,history,sync (repeatable);"
        " type is one of " + "/".join(DATASTREAM_TYPES) + "; enum values as enum=0|1|2",
    )
    lst = tpl.add_parser("list", help="list templates")
    _common(lst)
    lst.add_argument("--json", action="store_true")

    dev = sub.add_parser("device", help="devices and their tokens").add_subparsers(dest="action")
    create = dev.add_parser("create", help="create a device; prints only its token")
    _common(create)
    create.add_argument("--template", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--token", help="use this static token instead of a new one")
    lst = dev.add_parser("list", help="list devices")
    _common(lst)
    lst.add_argument("--template")
    lst.add_argument("--json", action="store_true")
    show = dev.add_parser("show", help="one device with its values")
    _common(show)
    show.add_argument("device", help="device id or token")
    delete = dev.add_parser("delete", help="delete a device and its data")
    _common(delete)
    delete.add_argument("device", help="device id or token")
    imp = dev.add_parser("import", help="import static tokens from CSV (columns: token,name[,template])")
    _common(imp)
    imp.add_argument("file", type=Path)
    imp.add_argument("--template", help="template for rows that name none")

    from blynk_server.ota.cli import add_ota_parser  # here: ota/cli imports this module

    add_ota_parser(sub, _common)
    return parser


def _serve_flags(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--host", help="device listener address (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="device port, binary protocol and HTTP (default 8080; 0 = any free)")
    p.add_argument("--tls-port", type=int, help="TLS device port (needs --cert and --key)")
    p.add_argument("--cert", type=Path)
    p.add_argument("--key", type=Path)
    p.add_argument("--admin-host", help="admin API and /metrics address (default 127.0.0.1)")
    p.add_argument("--admin-port", type=int, help="admin port (default 9080; 0 = any free)")
    p.add_argument("--external-url", help="base URL devices use to reach this server (OTA links)")
    p.add_argument("--flush-interval", type=float, help="seconds between write-behind flushes (default 1)")
    p.add_argument("--message-rate", type=float, help="messages/s per device before flood control (default 100)")
    p.add_argument("--history-days", type=float, help="days of pin history kept (default 90; 0 = forever)")
    p.add_argument("--events-days", type=float, help="days of device events kept (default 90; 0 = forever)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")


_SETTING_FLAGS = (
    "data_dir",
    "host",
    "port",
    "tls_port",
    "cert",
    "key",
    "admin_host",
    "admin_port",
    "external_url",
    "flush_interval",
    "message_rate",
    "history_days",
    "events_days",
    "log_level",
)


def settings_from(args: argparse.Namespace) -> config.Settings:
    overrides = {name: getattr(args, name, None) for name in _SETTING_FLAGS}
    return config.load(getattr(args, "config", None), overrides=overrides)


def open_store(args: argparse.Namespace) -> SqliteStore:
    return SqliteStore(settings_from(args).data_dir)


def parse_datastream(spec: str) -> Datastream:
    values: dict[str, str] = {}
    flags: set[str] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            k, v = part.split("=", 1)
            values[k.strip().lower()] = v.strip()
        else:
            flags.add(part.lower())
    unknown = (set(values) - {"pin", "name", "type", "min", "max", "default", "enum"}) | (flags - {"history", "sync"})
    if unknown:
        raise CliError(f"unknown datastream field(s) {sorted(unknown)} in {spec!r}")
    if "pin" not in values:
        raise CliError(f"datastream {spec!r} needs pin=")
    try:
        pin = parse_pin(values["pin"])
    except BodyError as exc:
        raise CliError(f"datastream {spec!r}: {exc}") from None
    typ = values.get("type", "string").lower()
    if typ not in DATASTREAM_TYPES:
        raise CliError(f"datastream type {typ!r} is not one of {', '.join(DATASTREAM_TYPES)}")
    try:
        mn = float(values["min"]) if "min" in values else None
        mx = float(values["max"]) if "max" in values else None
        enum = tuple(int(x) for x in values["enum"].split("|")) if "enum" in values else ()
    except ValueError as exc:
        raise CliError(f"datastream {spec!r}: {exc}") from None
    if mn is not None and mx is not None and mn > mx:
        raise CliError(f"datastream {spec!r}: min is greater than max")
    return Datastream(
        pin.key,
        values.get("name", str(pin)),
        typ,
        mn,
        mx,
        values.get("default"),
        enum,
        "history" in flags,
        "sync" in flags,
    )


def _find_device(store: SqliteStore, ref: str):
    device = store.get_device(int(ref)) if ref.isdigit() else None
    device = device or store.get_device_by_token(ref)
    if device is None:
        raise CliError(f"no device {ref!r}")
    return device


def cmd_template(args) -> int:
    store = open_store(args)
    if args.action == "create":
        datastreams = [parse_datastream(s) for s in args.datastream]
        try:
            tpl = store.create_template(args.id, args.name, datastreams)
        except sqlite3.IntegrityError:
            raise CliError(f"template {args.id!r} already exists") from None
        print(json.dumps(tpl.as_dict(), indent=2))
    elif args.action == "list":
        templates = store.list_templates()
        if args.json:
            print(json.dumps([t.as_dict() for t in templates], indent=2))
        for t in [] if args.json else templates:
            pins = " ".join(f"{ds.pin.upper()}:{ds.type}" for ds in t.datastreams.values())
            print(f"{t.id}\t{t.name}\t{pins}")
    else:
        raise CliError("template needs an action: create, list")
    return 0


def cmd_device(args) -> int:
    store = open_store(args)
    if args.action == "create":
        if store.get_template(args.template) is None:
            raise CliError(f"no template {args.template!r}")
        token = args.token or new_token()
        _check_token(token)
        try:
            device = store.create_device(args.template, args.name, token)
        except sqlite3.IntegrityError:
            raise CliError("a device with that token already exists") from None
        print(device.token)
    elif args.action == "list":
        devices = store.list_devices(args.template)
        if args.json:
            print(json.dumps([d.as_dict() for d in devices], indent=2))
        for d in [] if args.json else devices:
            print(f"{d.id}\t{d.name}\t{d.template_id}\t{d.token}\tlast_seen={d.last_seen or '-'}")
    elif args.action == "show":
        device = _find_device(store, args.device)
        out = device.as_dict()
        out["values"] = {
            pin.upper(): {"value": v.decode("utf-8", "replace"), "ts": ts}
            for pin, (v, ts) in sorted(store.load_values(device.id).items())
        }
        out["metadata"] = store.load_meta(device.id)
        print(json.dumps(out, indent=2))
    elif args.action == "delete":
        device = _find_device(store, args.device)
        store.delete_device(device.id)
        print(f"deleted device {device.id} ({device.name})")
    elif args.action == "import":
        rows = _read_import(args.file, args.template, store)
        created = store.import_devices(rows)
        print(f"imported {len(created)} devices")
    else:
        raise CliError("device needs an action: create, list, show, delete, import")
    return 0


def _check_token(token: str) -> None:
    if not (8 <= len(token) <= 64) or not all(c.isalnum() or c in "-_" for c in token):
        raise CliError("a token is 8..64 characters of letters, digits, '-' and '_' (Blynk's are 32)")


def _read_import(path: Path, default_template: str | None, store: SqliteStore) -> list[tuple[str, str, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    rows = []
    seen: set[str] = set()
    for lineno, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or row[0].strip().startswith("#"):
            continue
        if lineno == 1 and row[0].strip().lower() == "token":
            continue
        token = row[0].strip()
        name = row[1].strip() if len(row) > 1 and row[1].strip() else f"Device {token[:6]}"
        template = row[2].strip() if len(row) > 2 and row[2].strip() else default_template
        if not template:
            raise CliError(f"{path}:{lineno}: no template (add a third column or --template)")
        try:
            _check_token(token)
        except CliError as exc:
            raise CliError(f"{path}:{lineno}: {exc}") from None
        if token in seen or store.get_device_by_token(token) is not None:
            raise CliError(f"{path}:{lineno}: token {token} already exists")
        if store.get_template(template) is None:
            raise CliError(f"{path}:{lineno}: no template {template!r}")
        seen.add(token)
        rows.append((template, name, token))
    return rows


def cmd_serve(args) -> int:
    settings = settings_from(args)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=getattr(logging, settings.log_level.upper(), logging.INFO), handlers=[handler])
    from blynk_server.app import run

    return run(settings)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {None: cmd_serve, "serve": cmd_serve, "template": cmd_template, "device": cmd_device}
    if args.command == "ota":
        from blynk_server.ota.cli import cmd_ota

        handlers["ota"] = cmd_ota
    os.umask(0o077)  # whatever this creates in the data dir (database, firmware, recovery files) is private
    try:
        return handlers[args.command](args)
    except (CliError, StoreUnavailable) as exc:
        print(f"blynk-server: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"blynk-server: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
