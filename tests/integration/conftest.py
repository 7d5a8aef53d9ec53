"""Integration fixtures: the whole server (``BlynkServer``) on the test's own event loop, on ephemeral
loopback ports and a temporary data dir; tests provision through its ``Provisioning`` and talk to it
over real sockets."""

from __future__ import annotations

import contextlib
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


async def start_server(data_dir, **settings) -> BlynkServer:
    """The whole server on this loop, on ephemeral loopback ports. Write-behind flushes only at stop
    (``flush_interval`` 3600 unless given): every read in these tests must see rows still pending."""
    base = {"host": "127.0.0.1", "port": 0, "admin_port": 0, "flush_interval": 3600}
    srv = BlynkServer(Settings(data_dir=data_dir, **{**base, **settings}))
    srv.out = io.StringIO()
    await srv.start()
    return srv


@contextlib.contextmanager
def no_loop_thread_errors():
    """Fails the block when any server in it logged a LoopThreadError (SQLite on the loop's thread)."""
    watch = LoopThreadErrors()
    logging.getLogger().addHandler(watch)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(watch)
    assert watch.seen == []


@contextlib.asynccontextmanager
async def running(data_dir, **settings):
    """``start_server``, stopped cleanly (exit 0) at the end, with no SQLite on the loop's thread."""
    with no_loop_thread_errors():
        srv = await start_server(data_dir, **settings)
        try:
            yield srv
        finally:
            assert await srv.stop() == 0


@pytest.fixture
async def server(tmp_path):
    async with running(tmp_path / "data") as srv:
        yield srv


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


def admin_url(server: BlynkServer, path: str) -> str:
    host, port = server.admin_address
    return f"http://{host}:{port}{path}"
