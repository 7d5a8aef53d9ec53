"""OAuth2 clients and access tokens (oauth.py): secrets hashed, expiry, the per-client bound, revocation."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from blynk_server.config import Settings
from blynk_server.oauth import OAuthClients, OAuthError, TokenRefused
from blynk_server.store import SqliteStore

from .fakes import FakeLoop


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path, flush_interval=3600)
    s.start_writer()
    s.forbid_thread(threading.get_ident())
    yield s
    with ThreadPoolExecutor(1) as other:  # the test's thread is forbidden: close from another one
        other.submit(s.close).result(30)


async def service(store, clock: FakeLoop, **settings) -> OAuthClients:
    clients = OAuthClients(store, Settings(**settings), clock.time)
    await clients.load()
    return clients


async def test_a_token_lives_its_ttl_and_no_longer(store):
    clock = FakeLoop()
    clients = await service(store, clock, platform_token_ttl=60)
    client, secret = await clients.create("ci", "read")
    token, grant = clients.issue(client.client_id, secret)
    assert clients.check(token) == grant and not grant.can_write
    clock.advance(59.9)
    assert clients.check(token) is not None
    clock.advance(0.1)
    assert clients.check(token) is None and clients.live_tokens == 0


async def test_tokens_per_client_are_bounded_oldest_retired_first(store):
    clients = await service(store, FakeLoop(), platform_tokens_per_client=3)
    client, secret = await clients.create("ci", "read-write")
    tokens = [clients.issue(client.client_id, secret)[0] for _ in range(5)]
    assert [clients.check(t) is not None for t in tokens] == [False, False, True, True, True]
    assert clients.live_tokens == 3


async def test_secrets_are_checked_and_stored_hashed_and_clients_survive_a_reload(store):
    clock = FakeLoop()
    clients = await service(store, clock)
    client, secret = await clients.create("ci", "read-write")
    with pytest.raises(TokenRefused) as refused:
        clients.issue(client.client_id, secret + "x")
    assert (refused.value.error, refused.value.status) == ("invalid_client", 401)
    with pytest.raises(TokenRefused):
        clients.issue("oa2-client-id_unknown", secret)
    rows = await store.run(store.query, "SELECT secret_hash FROM oauth_clients")
    assert rows[0][0].startswith("sha256:") and secret not in rows[0][0]
    again = await service(store, clock)
    assert [c.client_id for c in again.list()] == [client.client_id]
    token, grant = again.issue(client.client_id, secret)
    assert grant.can_write and "secret_hash" not in client.as_dict()


async def test_deleting_a_client_revokes_its_tokens_and_names_scopes_are_checked(store):
    clients = await service(store, FakeLoop())
    client, secret = await clients.create("ci")
    token, _ = clients.issue(client.client_id, secret)
    await clients.delete(client.client_id)
    assert clients.check(token) is None
    with pytest.raises(OAuthError) as gone:
        await clients.delete(client.client_id)
    assert gone.value.status == 404
    for name, scope in (("", "read"), ("x" * 81, "read"), ("ok", "admin")):
        with pytest.raises(OAuthError):
            await clients.create(name, scope)
