"""``blynk-server oauth-client create|list|delete``: the Platform API's OAuth2 clients, through the
running server's admin API or, when none runs, on the store under the data dir's lock with the same
``OAuthClients`` service."""

from __future__ import annotations

import argparse
import asyncio
import json
from urllib.parse import quote

from blynk_server.cli_common import CliError, Local, Remote, add_common, open_data_dir
from blynk_server.oauth import READ, SCOPES, OAuthClients, OAuthError

ACTIONS = ("create", "list", "delete")


def add_parser(sub) -> None:
    clients = sub.add_parser("oauth-client", help="OAuth2 clients of the Platform API (client credentials)")
    actions = clients.add_subparsers(dest="action")
    p = actions.add_parser("create", help="create a client; prints its id and secret (the secret only now)")
    add_common(p)
    p.add_argument("--name", required=True)
    p.add_argument("--scope", choices=SCOPES, default=READ, help="read (GET routes only) or read-write")
    lst = actions.add_parser("list", help="list clients (never their secrets)")
    add_common(lst)
    lst.add_argument("--json", action="store_true")
    p = actions.add_parser("delete", help="delete a client; its access tokens stop working at once")
    add_common(p)
    p.add_argument("client_id")


class DirectClients:
    """No server runs: the service on the store under this command's lock (SQLite runs inline)."""

    def __init__(self, local: Local) -> None:
        self.service = OAuthClients(local.store, local.settings)
        asyncio.run(self.service.load())

    def create(self, name: str, scope: str) -> dict:
        client, secret = asyncio.run(self.service.create(name, scope))
        return client.as_dict() | {"client_secret": secret}

    def list(self) -> list[dict]:
        return [c.as_dict() for c in self.service.list()]

    def delete(self, client_id: str) -> None:
        asyncio.run(self.service.delete(client_id))


class ClientsViaServer:
    """A server runs: its ``/api/oauth-clients`` routes over the control socket."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    def create(self, name: str, scope: str) -> dict:
        return self.remote.call("POST", "/api/oauth-clients", {"name": name, "scope": scope})[1]

    def list(self) -> list[dict]:
        return self.remote.call("GET", "/api/oauth-clients")[1]

    def delete(self, client_id: str) -> None:
        self.remote.call("DELETE", "/api/oauth-clients/" + quote(client_id, safe=""))


def cmd_oauth_client(args: argparse.Namespace) -> int:
    if args.action not in ACTIONS:
        raise CliError("oauth-client needs an action: " + ", ".join(ACTIONS))
    with open_data_dir(args) as target:
        try:
            clients = DirectClients(target) if isinstance(target, Local) else ClientsViaServer(target)
            if args.action == "create":
                print(json.dumps(clients.create(args.name, args.scope), indent=2))
            elif args.action == "list":
                found = clients.list()
                if args.json:
                    print(json.dumps(found, indent=2))
                for c in [] if args.json else found:
                    print(f"{c['client_id']}\t{c['scope']}\t{c['name']}")
            else:
                clients.delete(args.client_id)
                print(f"deleted oauth client {args.client_id}")
        except OAuthError as exc:
            raise CliError(exc.message) from None
    return 0


__all__ = ["add_parser", "cmd_oauth_client"]
