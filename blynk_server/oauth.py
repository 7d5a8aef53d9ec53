"""OAuth2 clients of the Platform API and the access tokens they get by client credentials.

A client (Blynk's "OAuth2" entry in the Developer Zone) has an id (``oa2-client-id_…``, as Blynk's),
a secret shown once when it is created and stored only as a hash (``apikey.hash_key``: the secret is
240 random bits, one SHA-256 round suffices), and a scope: ``read`` (GET routes only) or ``read-write``.
Clients live in a table of their own (``oauth_clients``); the access tokens a client gets with
``POST /oauth2/token`` live in memory only, hashed too, and expire after ``platform_token_ttl``
seconds (a restart forgets them: clients ask again, as they must after expiry anyway). At most
``platform_tokens_per_client`` live tokens per client: a new one retires the oldest.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from blynk_server import apikey
from blynk_server.config import Settings
from blynk_server.errors import Refused
from blynk_server.model import now_ms
from blynk_server.store import SqliteStore

log = logging.getLogger(__name__)

READ = "read"
READ_WRITE = "read-write"
SCOPES = (READ, READ_WRITE)
CLIENT_ID_PREFIX = "oa2-client-id_"
MAX_CLIENTS = 100  # clients one server holds
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.'-]{0,79}")

SCHEMA = """
CREATE TABLE IF NOT EXISTS oauth_clients (
    client_id   TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    scope       TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
"""
COLUMNS = "client_id, name, scope, secret_hash, created_at"


class OAuthError(Refused):
    """A refused client-management request (the admin API's 400/404/409 with ``message``)."""


class TokenRefused(Exception):
    """A refused token request, with RFC 6749's ``error`` code (Blynk answers these bodies)."""

    def __init__(self, error: str, description: str, status: int) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    name: str
    scope: str
    secret_hash: str
    created_at: int

    def as_dict(self) -> dict:
        """What the CLI and the admin API show: never the secret nor its hash."""
        return {"client_id": self.client_id, "name": self.name, "scope": self.scope, "created_at": self.created_at}


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid access token allows: its client and scope, until ``expires`` (monotonic seconds)."""

    client_id: str
    scope: str
    expires: float

    @property
    def can_write(self) -> bool:
        return self.scope == READ_WRITE


class OAuthClients:
    """The clients (stored) and their live access tokens (in memory). Changed only through the async
    methods, which store the change and then apply it; token checks are dict lookups on the loop."""

    def __init__(self, store: SqliteStore, settings: Settings, clock=time.monotonic) -> None:
        self.store = store
        self.ttl = settings.platform_token_ttl
        self.per_client = max(1, settings.platform_tokens_per_client)
        self.clock = clock
        self._clients: dict[str, Client] = {}
        self._tokens: OrderedDict[str, Grant] = OrderedDict()  # token hash -> grant, oldest first
        self.issued = 0
        self.refused = 0

    async def load(self) -> None:
        """Create the table if needed and read the clients."""
        await self.store.run(self.store.execute_script, SCHEMA)
        rows = await self.store.run(self.store.query, f"SELECT {COLUMNS} FROM oauth_clients ORDER BY created_at")
        self._clients = {r[0]: Client(*r) for r in rows}

    # --- clients -------------------------------------------------------------------------------

    def list(self) -> list[Client]:
        return sorted(self._clients.values(), key=lambda c: (c.created_at, c.client_id))

    def get(self, client_id: str) -> Client:
        client = self._clients.get(client_id)
        if client is None:
            raise OAuthError("OAuth client not found.", 404)
        return client

    async def create(self, name: object, scope: object = READ) -> tuple[Client, str]:
        """A new client and its secret (the only time the secret is seen)."""
        name = str(name or "")
        if not NAME_RE.fullmatch(name):
            raise OAuthError("A client name is 1..80 letters, digits, spaces, '_', '.', \"'\" and '-'.")
        scope = str(scope or READ)
        if scope not in SCOPES:
            raise OAuthError(f"scope must be one of {', '.join(SCOPES)}.")
        if len(self._clients) >= MAX_CLIENTS:
            raise OAuthError(f"At most {MAX_CLIENTS} OAuth clients.", 409)
        secret = secrets.token_urlsafe(30)
        client = Client(CLIENT_ID_PREFIX + secrets.token_urlsafe(24), name, scope, apikey.hash_key(secret), now_ms())
        await self.store.run(
            self.store.execute,
            f"INSERT INTO oauth_clients ({COLUMNS}) VALUES (?, ?, ?, ?, ?)",
            (client.client_id, client.name, client.scope, client.secret_hash, client.created_at),
        )
        self._clients[client.client_id] = client
        log.info("oauth client created client=%s scope=%s", client.client_id, scope)
        return client, secret

    async def delete(self, client_id: str) -> None:
        """Remove the client; its access tokens stop working at once."""
        self.get(client_id)
        await self.store.run(self.store.execute, "DELETE FROM oauth_clients WHERE client_id = ?", (client_id,))
        self._clients.pop(client_id, None)
        for key in [k for k, g in self._tokens.items() if g.client_id == client_id]:
            del self._tokens[key]
        log.info("oauth client deleted client=%s", client_id)

    # --- tokens --------------------------------------------------------------------------------

    def issue(self, client_id: str, secret: str) -> tuple[str, Grant]:
        """A new access token for valid client credentials, or ``TokenRefused`` (invalid_client)."""
        client = self._clients.get(client_id)
        # Hash compared even for an unknown id, so the answer's time does not tell ids apart.
        stored = client.secret_hash if client is not None else apikey.hash_key("")
        if not hmac.compare_digest(apikey.hash_key(secret).encode(), stored.encode()) or client is None:
            self.refused += 1
            raise TokenRefused("invalid_client", "Client ID is not found or password is wrong.", 401)
        self._expire()
        mine = [k for k, g in self._tokens.items() if g.client_id == client_id]
        for key in mine[: max(0, len(mine) - self.per_client + 1)]:
            del self._tokens[key]  # the oldest of this client's tokens make room
        token = secrets.token_urlsafe(30)
        grant = Grant(client_id, client.scope, self.clock() + self.ttl)
        self._tokens[apikey.hash_key(token)] = grant
        self.issued += 1
        return token, grant

    def check(self, token: str | None) -> Grant | None:
        """The grant of a live access token, else None (unknown, expired, or its client deleted)."""
        if not token:
            return None
        key = apikey.hash_key(token)
        grant = self._tokens.get(key)
        if grant is None:
            return None
        if grant.expires <= self.clock():
            del self._tokens[key]
            return None
        return grant

    def _expire(self) -> None:
        """Drop expired tokens (they were issued in order with one TTL: the oldest expire first)."""
        now = self.clock()
        while self._tokens:
            key, grant = next(iter(self._tokens.items()))
            if grant.expires > now:
                break
            del self._tokens[key]

    @property
    def live_tokens(self) -> int:
        return len(self._tokens)


__all__ = ["READ", "READ_WRITE", "SCOPES", "Client", "Grant", "OAuthClients", "OAuthError", "TokenRefused"]
