"""``blynk-server automation create|list|show|delete``.

With a server running on the data dir each subcommand goes to its ``/api/automations`` routes (over
the control socket), so a new rule applies at once; with none, the command holds the data dir's lock
and runs the same ``Automations`` service on the store (the same checks, the same stored form).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from urllib.parse import urlencode

from blynk_server.automations import AutomationError, Automations, path_of
from blynk_server.cli_common import CliError, Local, Remote, add_common, open_data_dir


def add_parser(sub) -> None:
    auto = sub.add_parser("automation", help="rules of trigger -> actions").add_subparsers(dest="action")

    p = auto.add_parser(
        "create",
        help="create an automation",
        description="A trigger (--when or --cron) and one or more actions (--do). DEVICE is a device id or"
        " token (stored as its id), TEMPLATE a template id.",
    )
    add_common(p)
    p.add_argument("--name", required=True)
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument(
        "--when",
        help='"TEMPLATE:V1 > 30" (> < >= <= == != changed; DEVICE:V1 for one device), "event:TEMPLATE:CODE",'
        ' "online:TEMPLATE", "offline:TEMPLATE"',
    )
    when.add_argument("--cron", help='"0 7 * * *" (minute hour day month weekday) or daily "07:30"')
    p.add_argument("--tz", help="time zone of --cron (IANA name, default UTC), e.g. Europe/Berlin")
    p.add_argument(
        "--do",
        action="append",
        required=True,
        metavar="ACTION",
        help='"write:DEVICE:V2=1", "event:DEVICE:CODE", "email:ADDRESS", "webhook:NAME" (repeatable)',
    )

    p = auto.add_parser("list", help="list automations")
    add_common(p)
    p.add_argument("--json", action="store_true")

    p = auto.add_parser("show", help="an automation and its latest runs")
    add_common(p)
    p.add_argument("name")
    p.add_argument("--runs", type=int, default=10, help="how many of its latest runs (default 10)")

    p = auto.add_parser("delete", help="delete an automation and its runs")
    add_common(p)
    p.add_argument("name")


class DirectAutomations:
    """No server runs: the service on the store, under this command's lock (no mailer, no webhooks:
    nothing runs here, rules are only changed)."""

    def __init__(self, local: Local) -> None:
        self.service = Automations(local.store, local.domain(), local.settings)  # event actions checked too
        asyncio.run(self.service.load())

    def create(self, body: dict) -> dict:
        return asyncio.run(self.service.create(body["name"], body))

    def list_all(self) -> list[dict]:
        return self.service.list_all()

    def show(self, name: str, runs: int) -> dict:
        out = self.service.get(name)
        out["latest_runs"] = asyncio.run(self.service.runs(name, runs)) if runs > 0 else []
        return out

    def delete(self, name: str) -> None:
        asyncio.run(self.service.delete(name))


class AutomationsViaServer:
    """A server runs on the data dir: its ``/api/automations`` routes, over the control socket."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    def create(self, body: dict) -> dict:
        return self.remote.call("POST", "/api/automations", body)[1]

    def list_all(self) -> list[dict]:
        return self.remote.call("GET", "/api/automations")[1]

    def show(self, name: str, runs: int) -> dict:
        gone = f"no automation {name!r}."
        out = self.remote.call("GET", path_of(name), not_found=gone)[1]
        query = "?" + urlencode({"limit": runs})
        out["latest_runs"] = (
            self.remote.call("GET", path_of(name) + "/runs" + query, not_found=gone)[1] if runs > 0 else []
        )
        return out

    def delete(self, name: str) -> None:
        self.remote.call("DELETE", path_of(name), not_found=f"no automation {name!r}.")


def _describe(a: dict) -> str:
    when = a.get("when") or f"cron {a.get('cron')} {a.get('tz')}"
    return f"{a['name']}\t{when}\t-> {'; '.join(a['do'])}"


def cmd_automation(args: argparse.Namespace) -> int:
    if args.action not in ("create", "list", "show", "delete"):
        raise CliError("automation needs an action: create, list, show, delete")
    if args.action == "create" and args.tz is not None and args.cron is None:
        raise CliError("--tz goes with --cron")
    with open_data_dir(args) as target:
        try:
            return _run(args, DirectAutomations(target) if isinstance(target, Local) else AutomationsViaServer(target))
        except AutomationError as exc:
            raise CliError(exc.message) from None


def _run(args: argparse.Namespace, autos: DirectAutomations | AutomationsViaServer) -> int:
    if args.action == "create":
        body: dict = {"name": args.name, "do": args.do}
        if args.when is not None:
            body["when"] = args.when
        else:
            body["cron"] = args.cron
            if args.tz is not None:
                body["tz"] = args.tz
        print(json.dumps(autos.create(body), indent=2))
    elif args.action == "list":
        rules = autos.list_all()
        if args.json:
            print(json.dumps(rules, indent=2))
        for a in [] if args.json else rules:
            print(_describe(a))
    elif args.action == "show":
        print(json.dumps(autos.show(args.name, max(0, min(args.runs, 1000))), indent=2))
    else:
        autos.delete(args.name)
        print(f"deleted automation {args.name}")
    return 0


__all__ = ["add_parser", "cmd_automation"]
