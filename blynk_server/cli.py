"""The ``blynk-server`` command: ``serve`` (the default) and provisioning on the same data dir.

While a server runs on the data dir it is the only writer: every provisioning command is sent to it
over its control socket (the admin API), so it applies the change at once (a device deleted here is
disconnected and refused). With no server running, a command takes the data dir's lock and works on the
store itself through the same ``Provisioning`` service. Each command is written once, against
:class:`Direct` and :class:`ViaServer` alike.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlencode

from blynk_server.automations_cli import add_parser as add_automation_parser
from blynk_server.automations_cli import cmd_automation
from blynk_server.cli_common import (
    CliError,
    Local,
    Remote,
    ServerFailed,
    add_common,
    open_data_dir,
    settings_from,
)
from blynk_server.control import DataDirBusy
from blynk_server.domain import DeviceState
from blynk_server.events_cli import add_parser as add_event_parser
from blynk_server.events_cli import cmd_event, cmd_timeline
from blynk_server.metafields import TYPES as METAFIELD_TYPES
from blynk_server.model import DATASTREAM_TYPES, DeviceRecord
from blynk_server.ota.cli import add_ota_parser, cmd_ota
from blynk_server.platform_cli import add_parser as add_oauth_client_parser
from blynk_server.platform_cli import cmd_oauth_client
from blynk_server.provision_cli import add_parser as add_provision_parser
from blynk_server.provision_cli import cmd_provision
from blynk_server.provisioning import (
    NewDevice,
    NotFound,
    ProvisioningError,
    check_token,
    parse_datastream_spec,
    parse_metafield_spec,
)
from blynk_server.provisioning import Provisioning as ProvisioningService
from blynk_server.redact import RedactingFormatter
from blynk_server.store import SqliteStore
from blynk_server.store.sqlite import StoreUnavailable
from blynk_server.webhooks_cli import add_parser as add_webhook_parser
from blynk_server.webhooks_cli import cmd_webhook


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blynk-server", description="Self-hosted Blynk IoT server")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the server (the default)")
    _serve_flags(serve)
    _serve_flags(parser)

    tpl = sub.add_parser("template", help="templates and their datastreams").add_subparsers(dest="action")
    create = tpl.add_parser("create", help="create a template")
    add_common(create)
    create.add_argument("--id", required=True, help="template id, e.g. TMPLabc123")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--datastream",
        action="append",
        default=[],
        metavar="SPEC",
        help="pin=V1,name=Temperature,type=double,min=-40,max=85,default=0,history,sync (repeatable);"
        " type is one of " + "/".join(DATASTREAM_TYPES) + "; enum values as enum=0|1|2; id=N sets Blynk's"
        " dataStreamId (default: N of VN, else the lowest free from 256), alias=A its alias (default: the name)",
    )
    create.add_argument(
        "--metafield",
        action="append",
        default=[],
        metavar="SPEC",
        help="id=1,name=Serial Number,type=text,default=none (repeatable): typed metadata of every device;"
        " type is one of " + "/".join(METAFIELD_TYPES) + "; list/switch options as options=a|b, number bounds"
        " as min=0,max=9",
    )
    lst = tpl.add_parser("list", help="list templates")
    add_common(lst)
    lst.add_argument("--json", action="store_true")

    dev = sub.add_parser("device", help="devices and their tokens").add_subparsers(dest="action")
    create = dev.add_parser("create", help="create a device; prints only its token")
    add_common(create)
    create.add_argument("--template", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--token", help="use this static token instead of a new one")
    lst = dev.add_parser("list", help="list devices")
    add_common(lst)
    lst.add_argument("--template")
    lst.add_argument("--json", action="store_true")
    show = dev.add_parser("show", help="one device with its values")
    add_common(show)
    show.add_argument("device", help="device id or token")
    delete = dev.add_parser("delete", help="delete a device and its data")
    add_common(delete)
    delete.add_argument("device", help="device id or token")
    imp = dev.add_parser("import", help="import static tokens from CSV (columns: token,name[,template])")
    add_common(imp)
    imp.add_argument("file", type=Path)
    imp.add_argument("--template", help="template for rows that name none")

    add_ota_parser(sub)
    add_automation_parser(sub)
    add_webhook_parser(sub)
    add_event_parser(sub)
    add_oauth_client_parser(sub)
    add_provision_parser(sub)
    return parser


def _serve_flags(p: argparse.ArgumentParser) -> None:
    add_common(p)
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
    p.add_argument("--smtp-host", help="SMTP server for e-mail notifications (none: e-mail is off)")
    p.add_argument("--smtp-port", type=int, help="SMTP port (default 587)")
    p.add_argument("--smtp-user", help="SMTP user name")
    p.add_argument("--smtp-password", help="SMTP password (prefer BLYNK_SMTP_PASSWORD: flags show in ps)")
    p.add_argument("--smtp-from", help="sender address (default blynk-server@localhost)")
    p.add_argument("--smtp-starttls", choices=("true", "false"), help="STARTTLS when offered (default true)")
    p.add_argument(
        "--platform-on-device-port",
        choices=("true", "false"),
        help="also serve the Platform API (/oauth2/token, /api/v1/organization/...) on the device port (default false)",
    )


DEVICE_KEYS = tuple(f.name for f in fields(DeviceRecord))  # what ``device list/show`` print of a device


@dataclass(frozen=True)
class ImportRow:
    lineno: int
    token: str
    name: str
    template: str


class Direct:
    """No server runs: the same ``Provisioning`` the server's admin API uses, on the store under this
    command's lock (each call runs on a short-lived event loop; the store runs its SQLite inline)."""

    def __init__(self, local: Local) -> None:
        self.store: SqliteStore = local.store
        self.domain = local.domain()
        self.service = ProvisioningService(self.store, self.domain)

    def create_template(self, tid: str, name: str, specs: list[str], meta_specs: list[str]) -> dict:
        datastreams = [parse_datastream_spec(s) for s in specs]
        fields = [parse_metafield_spec(s, self.domain.max_meta_size) for s in meta_specs]
        return asyncio.run(self.service.create_template(name, datastreams, tid, fields)).as_dict()

    def list_templates(self) -> list[dict]:
        return [t.as_dict() for t in self.service.templates()]

    def template_exists(self) -> Callable[[str], bool]:
        return lambda tid: self.domain.template(tid) is not None

    def token_exists(self) -> Callable[[str], bool]:
        return lambda token: self.domain.device_by_token(token) is not None

    def create_device(self, tid: str, name: str, token: str | None) -> dict:
        try:
            return asyncio.run(self.service.create_device(tid, name, token)).as_dict()
        except NotFound:
            raise CliError(f"no template {tid!r}") from None

    def list_devices(self, tid: str | None) -> list[dict]:
        return [d.as_dict() for d in self.service.devices(tid)]

    def _device(self, ref: str) -> DeviceState:
        return Local.device(self.domain, ref)

    def find_device(self, ref: str) -> dict:
        return self._device(ref).record.as_dict()

    def values_and_meta(self, device: dict) -> tuple[dict, dict]:
        dev = self._device(str(device["id"]))
        values = {  # as the admin API renders them, so the output does not depend on the mode
            pin.upper(): {"value": v.decode("utf-8", "replace").replace("\0", ","), "ts": ts}
            for pin, (v, ts) in dev.values.items()
        }
        return values, dict(dev.meta)

    def delete_device(self, device: dict) -> None:
        asyncio.run(self.service.delete_device(device["id"]))

    def import_devices(self, rows: list[ImportRow]) -> int:
        new = [NewDevice(r.template, r.name, r.token) for r in rows]
        return len(asyncio.run(self.service.import_devices(new)))


class ViaServer:
    """A server runs on the data dir: its admin API, over the control socket."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    def create_template(self, tid: str, name: str, specs: list[str], meta_specs: list[str]) -> dict:
        body = {"id": tid, "name": name, "datastreams": specs} | ({"metafields": meta_specs} if meta_specs else {})
        return self.remote.call("POST", "/api/templates", body)[1]

    def list_templates(self) -> list[dict]:
        return self.remote.call("GET", "/api/templates")[1]

    def template_exists(self) -> Callable[[str], bool]:
        known = {t["id"] for t in self.list_templates()}
        return known.__contains__

    def token_exists(self) -> Callable[[str], bool]:
        # One look at every token, for the line-numbered message; the server still refuses a token taken
        # in between, for the whole import.
        return {d["token"] for d in self.remote.call("GET", "/api/devices")[1]}.__contains__

    def create_device(self, tid: str, name: str, token: str | None) -> dict:
        body = {"template_id": tid, "name": name} | ({"token": token} if token else {})
        return _device_fields(self.remote.call("POST", "/api/devices", body, not_found=f"no template {tid!r}")[1])

    def list_devices(self, tid: str | None) -> list[dict]:
        query = "?" + urlencode({"template_id": tid}) if tid is not None else ""
        return [_device_fields(d) for d in self.remote.call("GET", f"/api/devices{query}")[1]]

    def find_device(self, ref: str) -> dict:
        return _device_fields(self.remote.device(ref))

    def values_and_meta(self, device: dict) -> tuple[dict, dict]:
        gone = f"no device {device['token']!r}"
        values = self.remote.call("GET", f"/api/devices/{device['id']}/values", not_found=gone)[1]
        meta = self.remote.call("GET", f"/api/devices/{device['id']}/meta", not_found=gone)[1]
        return {pin.upper(): v for pin, v in values.items()}, meta

    def delete_device(self, device: dict) -> None:
        self.remote.call("DELETE", f"/api/devices/{device['id']}", not_found=f"no device {device['token']!r}")

    def import_devices(self, rows: list[ImportRow]) -> int:
        body = {"devices": [{"token": r.token, "name": r.name, "template_id": r.template} for r in rows]}
        return len(self.remote.call("POST", "/api/devices/import", body)[1])


def _device_fields(d: dict) -> dict:
    """A device of the admin API with what the CLI prints of it (the store's columns) and nothing more,
    so the output is the same with and without a running server."""
    return {k: d.get(k) for k in DEVICE_KEYS}


Provisioning = Direct | ViaServer


def _provisioning(target: Local | Remote) -> Provisioning:
    return Direct(target) if isinstance(target, Local) else ViaServer(target)


def cmd_template(args) -> int:
    if args.action not in ("create", "list"):
        raise CliError("template needs an action: create, list")
    with open_data_dir(args) as target:
        p = _provisioning(target)
        if args.action == "create":
            print(json.dumps(p.create_template(args.id, args.name, args.datastream, args.metafield), indent=2))
        else:
            templates = p.list_templates()
            if args.json:
                print(json.dumps(templates, indent=2))
            for t in [] if args.json else templates:
                pins = " ".join(_datastream_line(ds) for ds in t["datastreams"])
                print(f"{t['id']}\t{t['name']}\t{pins}")
    return 0


def _datastream_line(ds: dict) -> str:
    """``V1:double``, with ``#id`` when the datastream's id is not its virtual pin's number."""
    pin, ds_id = ds["pin"].upper(), ds.get("id")
    same = ds_id is None or (pin[0] == "V" and ds_id == int(pin[1:]))
    return f"{pin}:{ds['type']}" + ("" if same else f"#{ds_id}")


def cmd_device(args) -> int:
    if args.action not in ("create", "list", "show", "delete", "import"):
        raise CliError("device needs an action: create, list, show, delete, import")
    with open_data_dir(args) as target:
        p = _provisioning(target)
        if args.action == "create":
            if args.token is not None:
                check_token(args.token)
            print(p.create_device(args.template, args.name, args.token)["token"])
        elif args.action == "list":
            devices = p.list_devices(args.template)
            if args.json:
                print(json.dumps(devices, indent=2))
            for d in [] if args.json else devices:
                print(f"{d['id']}\t{d['name']}\t{d['template_id']}\t{d['token']}\tlast_seen={d['last_seen'] or '-'}")
        elif args.action == "show":
            out = p.find_device(args.device)
            values, meta = p.values_and_meta(out)
            out["values"] = dict(sorted(values.items()))
            out["metadata"] = meta
            print(json.dumps(out, indent=2))
        elif args.action == "delete":
            device = p.find_device(args.device)
            p.delete_device(device)
            print(f"deleted device {device['id']} ({device['name']})")
        else:
            rows = _read_import(args.file, args.template, p)
            print(f"imported {p.import_devices(rows)} devices")
    return 0


def _read_import(path: Path, default_template: str | None, p: Provisioning) -> list[ImportRow]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    token_exists, template_exists = p.token_exists(), p.template_exists()
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
            check_token(token)
        except ProvisioningError as exc:
            raise CliError(f"{path}:{lineno}: {exc}") from None
        if token in seen or token_exists(token):
            raise CliError(f"{path}:{lineno}: token {token} already exists")
        if not template_exists(template):
            raise CliError(f"{path}:{lineno}: no template {template!r}")
        seen.add(token)
        rows.append(ImportRow(lineno, token, name, template))
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
    handlers = {
        None: cmd_serve,
        "serve": cmd_serve,
        "template": cmd_template,
        "device": cmd_device,
        "ota": cmd_ota,
        "webhook": cmd_webhook,
        "automation": cmd_automation,
        "event": cmd_event,
        "timeline": cmd_timeline,
        "oauth-client": cmd_oauth_client,
        "provision": cmd_provision,
    }
    os.umask(0o077)  # whatever this creates in the data dir (database, firmware, recovery files) is private
    try:
        return handlers[args.command](args)
    except (CliError, DataDirBusy, ProvisioningError, StoreUnavailable) as exc:
        print(f"blynk-server: {exc}", file=sys.stderr)
        return 2
    except ServerFailed as exc:
        print(f"blynk-server: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"blynk-server: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
