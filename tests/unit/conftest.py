"""Fixtures shared by the unit tests."""

from __future__ import annotations

import asyncio
import threading

import pytest

from blynk_server.config import Settings
from blynk_server.domain import Domain
from blynk_server.hub import Hub
from blynk_server.provisioning import Provisioning
from blynk_server.store.sqlite import SqliteStore


@pytest.fixture
async def prov(tmp_path):
    """Provisioning on a real store with its writer thread, SQLite forbidden on the test's thread (the
    test's loop is the server's loop here), the domain loaded from it."""
    store = SqliteStore(tmp_path, flush_interval=3600)
    store.start_writer()
    store.forbid_thread(threading.get_ident())
    domain = Domain(store, Hub(), Settings())
    domain.load_snapshot(await store.run(store.load_all))
    yield Provisioning(store, domain)
    await asyncio.get_running_loop().run_in_executor(None, store.close)
