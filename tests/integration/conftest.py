"""Integration fixtures: the whole server (``BlynkServer``) on the test's own event loop, on ephemeral
loopback ports and a temporary data dir; tests provision through its ``Provisioning`` and talk to it
over real sockets."""

from __future__ import annotations

import io
import logging

import aiohttp
import pytest

from blynk_server.app import BlynkServer
from blynk_server.config import Settings
from blynk_server.model import Datastream
from blynk_server.store.sqlite import LoopThreadError


class LoopThreadErrors(logging.Handler):
    """Log records of SQLite refused on the event loop's thread (raised, caught and logged somewhere)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, LoopThreadError) or "LoopThreadError" in record.getMessage():
            self.seen.append(self.format(record))


@pytest.fixture
async def server(tmp_path):
    watch = LoopThreadErrors()
    logging.getLogger().addHandler(watch)
    # Write-behind flushes only at stop: every read in these tests must see rows still pending.
    settings = Settings(data_dir=tmp_path / "data", host="127.0.0.1", port=0, admin_port=0, flush_interval=3600)
    srv = BlynkServer(settings)
    srv.out = io.StringIO()
    await srv.start()
    try:
        yield srv
    finally:
        assert await srv.stop() == 0
        logging.getLogger().removeHandler(watch)
    assert watch.seen == []


@pytest.fixture
async def template(server):
    return await server.provisioning.create_template(
        "Test", [Datastream("v1", "Value", "int", 0, 100), Datastream("v2", "Text", "string")]
    )


@pytest.fixture
async def http(server):
    async with aiohttp.ClientSession() as session:
        yield session


def hw_url(server: BlynkServer, path: str) -> str:
    host, port = server.hardware.address
    return f"http://{host}:{port}{path}"
