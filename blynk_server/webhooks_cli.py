"""``blynk-server webhook create|list|show|delete|enable``: through the running server's admin API, or,
when none runs, on the store under the data dir's lock with the same ``Webhooks`` service."""

from __future__ import annotations

import argparse
import asyncio
import json
from urllib.parse import quote

from blynk_server.cli_common import CliError, Local, Remote, add_common, open_data_dir
from blynk_server.webhooks import PLACEHOLDERS, WebhookError, Webhooks

ACTIONS = ("create", "list", "show", "delete", "enable")


def add_parser(sub) -> None:
    hook = sub.add_parser("webhook", help="outbound HTTP calls on device data, events, online/offline")
    actions = hook.add_subparsers(dest="action")
    p = actions.add_parser(
        "create",
        help="create a webhook",
        description="Placeholders in --url, --header and --body: "
        + ", ".join(f"{{{n}}}" for n in PLACEHOLDERS)
        + ". The device token is never one.",
    )
    add_common(p)
    p.add_argument("--name", required=True)
    p.add_argument("--url", required=True, help="http:// or https:// URL (placeholders in path and query)")
    p.add_argument(
        "--on",
        required=True,
        metavar="TRIGGER",
        help="datastream:TEMPLATE:V1 | event:TEMPLATE:CODE | online:TEMPLATE | offline:TEMPLATE",
    )
    p.add_argument("--method", default="POST", help="GET, POST, PUT, PATCH, DELETE (default POST)")
    p.add_argument("--header", action="append", default=[], metavar="K:V", help="a request header (repeatable)")
    p.add_argument("--body", help='body template, e.g. \'{"name": "{device_name}", "value": {datastream_value}}\'')
    p.add_argument("--content-type", help="json (the default with a body), form, text or a media type")
    p.add_argument("--every", type=float, default=0, metavar="SECONDS", help="at most one call per device per SECONDS")
    p.add_argument("--disabled", action="store_true", help="create it disabled")
    lst = actions.add_parser("list", help="list webhooks")
    add_common(lst)
    lst.add_argument("--json", action="store_true")
    for name, text in (
        ("show", "one webhook with its state and counters"),
        ("delete", "delete a webhook"),
        ("enable", "enable a webhook again"),
    ):
        p = actions.add_parser(name, help=text)
        add_common(p)
        p.add_argument("name")


class DirectWebhooks:
    """No server runs: the service on the store under this command's lock (SQLite runs inline)."""

    def __init__(self, local: Local) -> None:
        self.service = Webhooks(local.store, local.domain(), None, local.settings)
        asyncio.run(self.service.load())

    def create(self, spec: dict) -> dict:
        return asyncio.run(self.service.create(spec)).as_dict()

    def list(self) -> list[dict]:
        return [h.as_dict() for h in self.service.list()]

    def show(self, name: str) -> dict:
        return self.service.get(name).as_dict()

    def delete(self, name: str) -> None:
        asyncio.run(self.service.delete(name))

    def enable(self, name: str) -> dict:
        return asyncio.run(self.service.enable(name)).as_dict()


class WebhooksViaServer:
    """A server runs: its ``/api/webhooks`` routes over the control socket."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    def create(self, spec: dict) -> dict:
        return self.remote.call("POST", "/api/webhooks", spec)[1]

    def list(self) -> list[dict]:
        return self.remote.call("GET", "/api/webhooks")[1]

    def show(self, name: str) -> dict:
        return self.remote.call("GET", _path(name))[1]

    def delete(self, name: str) -> None:
        self.remote.call("DELETE", _path(name))

    def enable(self, name: str) -> dict:
        return self.remote.call("POST", _path(name) + "/enable")[1]


def _path(name: str) -> str:
    return "/api/webhooks/" + quote(name, safe="")


def cmd_webhook(args: argparse.Namespace) -> int:
    if args.action not in ACTIONS:
        raise CliError("webhook needs an action: " + ", ".join(ACTIONS))
    with open_data_dir(args) as target:
        try:
            hooks = DirectWebhooks(target) if isinstance(target, Local) else WebhooksViaServer(target)
            if args.action == "create":
                spec = {
                    "name": args.name,
                    "url": args.url,
                    "on": args.on,
                    "method": args.method,
                    "headers": args.header,
                    "body": args.body,
                    "content_type": args.content_type,
                    "every_s": args.every,
                    "enabled": not args.disabled,
                }
                print(json.dumps(hooks.create({k: v for k, v in spec.items() if v is not None}), indent=2))
            elif args.action == "list":
                found = hooks.list()
                if args.json:
                    print(json.dumps(found, indent=2))
                for h in [] if args.json else found:
                    state = "enabled" if h["enabled"] else "DISABLED"
                    print(f"{h['name']}\t{state}\t{h['on']}\t{h['method']} {h['url']}\tfailures={h['failures']}")
            elif args.action == "show":
                print(json.dumps(hooks.show(args.name), indent=2))
            elif args.action == "delete":
                hooks.delete(args.name)
                print(f"deleted webhook {args.name}")
            else:
                print(json.dumps(hooks.enable(args.name), indent=2))
        except WebhookError as exc:
            raise CliError(exc.message) from None
    return 0


__all__ = ["add_parser", "cmd_webhook"]
