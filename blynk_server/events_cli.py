"""``blynk-server event ...`` (template events) and ``blynk-server timeline DEVICE``.

While a server runs on the data dir each command goes to its admin API over the control socket (a
declared event applies at once: the next ``logEvent`` of that code is accepted); with none running,
the command holds the data dir's lock and works on the store itself with the same ``Provisioning``.
Each command is written once, against :class:`DirectEvents` and :class:`EventsViaServer`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

from blynk_server.cli_common import CliError, Local, Remote, add_common, open_data_dir
from blynk_server.eventdefs import LEVELS
from blynk_server.events import TimelineQuery, format_cursor, parse_cursor, timeline_page
from blynk_server.model import now_ms
from blynk_server.provisioning import Provisioning, make_event_def

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> float:
    """Seconds of ``90``, ``90s``, ``5m``, ``1h``, ``2d``, ``1w``."""
    m = _DURATION.fullmatch(text.strip().lower())
    if m is None:
        raise CliError(f"not a duration: {text!r} (e.g. 30s, 5m, 1h, 2d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_when(text: str, now: int) -> int:
    """A time in ms: a duration ago (``1h``), an ISO date-time (UTC unless it says), or ms."""
    text = text.strip()
    if text.isdigit() and len(text) > 8:
        return int(text)
    try:
        return max(0, now - int(parse_duration(text) * 1000))
    except CliError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"not a time: {text!r} (1h ago as 1h, a date as 2024-05-01T12:00Z, or ms)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def add_parser(sub) -> None:
    ev = sub.add_parser("event", help="a template's events (what devices may log)").add_subparsers(dest="action")
    p = ev.add_parser("create", help="declare an event on a template")
    add_common(p)
    p.add_argument("--template", required=True)
    p.add_argument("--code", required=True, help="the code devices send (Blynk.logEvent)")
    p.add_argument("--name", required=True)
    p.add_argument("--level", default="info", choices=LEVELS)
    p.add_argument("--every", default="0", help="at most one event per device in this time: 10, 30s, 5m (floor 1s)")
    p.add_argument("--email", action="append", default=[], metavar="ADDR", help="recipient (repeatable)")
    p.add_argument("--description", default="")
    p.add_argument("--replace", action="store_true", help="redeclare an existing code")
    p = ev.add_parser("list", help="a template's declared events")
    add_common(p)
    p.add_argument("--template", required=True)
    p.add_argument("--json", action="store_true")
    p = ev.add_parser("delete", help="delete a declared event")
    add_common(p)
    p.add_argument("--template", required=True)
    p.add_argument("--code", required=True)
    p = ev.add_parser("settings", help="show or set a template's offline-ignore period")
    add_common(p)
    p.add_argument("--template", required=True)
    p.add_argument("--offline-ignore", help="a disconnection shorter than this is not recorded: 0, 30s, 5m")

    p = sub.add_parser("timeline", help="a device's events, newest first")
    add_common(p)
    p.add_argument("device", help="device id or token")
    p.add_argument("--since", help="1h (ago), 2024-05-01T12:00Z, or ms")
    p.add_argument("--until", help="as --since")
    p.add_argument("--level", action="append", default=[], choices=LEVELS, help="repeatable")
    p.add_argument("--code", action="append", default=[], help="repeatable")
    p.add_argument("--limit", type=int, default=100, help="events per page (1..1000, default 100)")
    p.add_argument("--cursor", help="the next page (printed after a full page)")
    p.add_argument("--json", action="store_true")


class DirectEvents:
    """No server runs: the same ``Provisioning`` on the store under this command's lock."""

    def __init__(self, local: Local) -> None:
        self.store = local.store
        self.domain = local.domain()
        self.service = Provisioning(self.store, self.domain)

    def create(self, tid: str, d: dict, replace: bool) -> dict:
        edef = make_event_def(
            d["code"], d["name"], d["level"], d["description"], d["every_s"], d["emails"], self.domain.max_event_code
        )
        return asyncio.run(self.service.put_event_def(tid, edef, replace)).as_dict()

    def list(self, tid: str) -> list[dict]:
        return [e.as_dict() for e in self.service.event_defs(tid)]

    def delete(self, tid: str, code: str) -> None:
        asyncio.run(self.service.delete_event_def(tid, code))

    def settings(self, tid: str, offline_ignore_s: float | None) -> dict:
        if offline_ignore_s is not None:
            asyncio.run(self.service.set_offline_ignore(tid, offline_ignore_s))
        self.service.template(tid)
        return {"offline_ignore_s": self.domain.event_defs.offline_ignore_s(tid)}

    def timeline(self, ref: str, q: TimelineQuery) -> dict:
        dev = Local.device(self.domain, ref)
        rows, cursor = self.store.timeline(dev.id, q.since, q.until, q.levels, q.codes, q.limit, q.before)
        return timeline_page(self.domain, dev.template.id, rows, cursor)


class EventsViaServer:
    """A server runs on the data dir: its admin API, over the control socket."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    def _tpl(self, tid: str) -> str:
        return f"/api/templates/{quote(tid, safe='')}"

    def create(self, tid: str, d: dict, replace: bool) -> dict:
        missing = f"no template {tid!r}"
        if replace:
            path = f"{self._tpl(tid)}/events/{quote(d['code'], safe='')}"
            return self.remote.call("PUT", path, d, not_found=missing)[1]
        return self.remote.call("POST", f"{self._tpl(tid)}/events", d, not_found=missing)[1]

    def list(self, tid: str) -> list[dict]:
        return self.remote.call("GET", f"{self._tpl(tid)}/events", not_found=f"no template {tid!r}")[1]

    def delete(self, tid: str, code: str) -> None:
        path = f"{self._tpl(tid)}/events/{quote(code, safe='')}"
        self.remote.call("DELETE", path, not_found=f"no event {code!r} on template {tid!r}")

    def settings(self, tid: str, offline_ignore_s: float | None) -> dict:
        path = f"{self._tpl(tid)}/event-settings"
        missing = f"no template {tid!r}"
        if offline_ignore_s is not None:
            return self.remote.call("PUT", path, {"offline_ignore_s": offline_ignore_s}, not_found=missing)[1]
        return self.remote.call("GET", path, not_found=missing)[1]

    def _device_id(self, ref: str) -> int:
        return self.remote.device(ref)["id"]

    def timeline(self, ref: str, q: TimelineQuery) -> dict:
        params: dict[str, object] = {"since": q.since, "limit": q.limit}
        if q.until is not None:
            params["until"] = q.until
        if q.levels:
            params["level"] = ",".join(q.levels)
        if q.codes:
            params["code"] = ",".join(q.codes)
        if q.before is not None:
            params["cursor"] = format_cursor(q.before)
        path = f"/api/devices/{self._device_id(ref)}/timeline?" + urlencode(params)
        return self.remote.call("GET", path, not_found=f"no device {ref!r}")[1]


def _target(target: Local | Remote) -> DirectEvents | EventsViaServer:
    return DirectEvents(target) if isinstance(target, Local) else EventsViaServer(target)


def cmd_event(args: argparse.Namespace) -> int:
    if args.action not in ("create", "list", "delete", "settings"):
        raise CliError("event needs an action: create, list, delete, settings")
    with open_data_dir(args) as target:
        p = _target(target)
        if args.action == "create":
            d = {
                "code": args.code,
                "name": args.name,
                "level": args.level,
                "description": args.description,
                "every_s": parse_duration(args.every),
                "emails": args.email,
            }
            print(json.dumps(p.create(args.template, d, args.replace), indent=2))
        elif args.action == "list":
            events = p.list(args.template)
            if args.json:
                print(json.dumps(events, indent=2))
            for e in [] if args.json else events:
                every = f"every={e['every_s']:g}s" if e["every_s"] else "every=-"
                emails = ",".join(e["emails"]) or "-"
                print(f"{e['code']}\t{e['level']}\t{every}\t{e['name']}\t{emails}")
        elif args.action == "delete":
            p.delete(args.template, args.code)
            print(f"deleted event {args.code} of template {args.template}")
        else:
            seconds = parse_duration(args.offline_ignore) if args.offline_ignore is not None else None
            print(json.dumps(p.settings(args.template, seconds)))
    return 0


def _iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cmd_timeline(args: argparse.Namespace) -> int:
    now = now_ms()
    if not 1 <= args.limit <= 1000:
        raise CliError("--limit is 1..1000")
    try:
        before = parse_cursor(args.cursor) if args.cursor else None
    except ValueError as exc:
        raise CliError(str(exc)) from None
    query = TimelineQuery(
        parse_when(args.since, now) if args.since else 0,
        parse_when(args.until, now) if args.until else None,
        tuple(dict.fromkeys(args.level)),
        tuple(dict.fromkeys(args.code)),
        args.limit,
        before,
    )
    with open_data_dir(args) as target:
        page = _target(target).timeline(args.device, query)
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    for e in page["events"]:
        line = f"{_iso(e['ts'])}\t{e['level']}\t{e['code']}\t{e['name']}"
        if e.get("description"):
            line += f"\t{e['description']}"
        if e.get("resolved_at"):
            line += f"\t(resolved {_iso(e['resolved_at'])})"
        print(line)
    if page["next_cursor"]:
        print(f"more: --cursor {page['next_cursor']}")
    return 0


__all__ = ["add_parser", "cmd_event", "cmd_timeline", "parse_duration", "parse_when"]
