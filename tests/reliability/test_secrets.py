"""Secrets at rest (issue 10, finding 12): the database holds only the admin key's hash, and the data
dir and its files are private whatever the umask the server is started with."""

from __future__ import annotations

import os
import sqlite3
import stat

import aiohttp

from blynk_server.apikey import hash_key

from .conftest import db_path


def _stored_key(data_dir) -> str:
    conn = sqlite3.connect(f"file:{db_path(data_dir)}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT value FROM settings WHERE key = 'admin_api_key'").fetchone()[0]
    finally:
        conn.close()


async def _admin_status(srv, key: str) -> int:
    url = f"http://{srv.admin_host}:{srv.admin_port}/api/devices"
    async with aiohttp.ClientSession() as s, s.get(url, headers={"X-API-Key": key}) as r:
        return r.status


async def test_the_database_holds_only_the_admin_keys_hash(make_server):
    srv = make_server()
    key = srv.api_key
    assert _stored_key(srv.data_dir) == hash_key(key)
    assert key not in db_path(srv.data_dir).read_bytes().decode("latin-1")
    assert stat.S_IMODE((srv.data_dir / "admin-api-key").stat().st_mode) == 0o600
    assert await _admin_status(srv, key) == 200
    assert await _admin_status(srv, hash_key(key)) == 401  # the stored hash does not open the API


async def test_a_plain_key_from_an_older_data_dir_is_hashed_and_still_works(make_server):
    srv = make_server()
    key = srv.api_key
    srv.stop()
    conn = sqlite3.connect(db_path(srv.data_dir))
    with conn:
        conn.execute("UPDATE settings SET value = ? WHERE key = 'admin_api_key'", (key,))
    conn.close()
    srv.start()
    assert _stored_key(srv.data_dir) == hash_key(key)
    assert await _admin_status(srv, key) == 200


def test_data_dir_and_files_are_private_under_a_lax_umask(make_server):
    old = os.umask(0o000)  # the server inherits it
    try:
        srv = make_server()
    finally:
        os.umask(old)
    srv.stop()
    assert stat.S_IMODE(srv.data_dir.stat().st_mode) == 0o700
    for path in srv.data_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path.name} is readable by others"
