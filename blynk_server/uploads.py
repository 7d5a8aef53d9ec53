"""Files devices upload (``POST /external/api/upload``, multipart field ``upfile``), as blynk.cloud
documents it: the answer is the URL of the stored file, ``<base>/device_uploads/<device id>/<32
random characters>.<ext>``; a device holds ``upload_files_per_device`` files (a new one deletes the
oldest); one file is at most ``upload_max_size`` bytes (more: 413, the partial file is deleted); a
device may make ``uploads_per_device`` uploads in all and all devices hold at most
``upload_max_total_bytes`` (more: 403 ``File uploads limit has been reached.``); uploading a name the
device uploaded before replaces that file (same URL).

Files are streamed to ``<data dir>/uploads/<device id>/`` chunk by chunk, each write on a thread (never
the event loop), mode 0600, under a random name with a sanitised extension: the client's file name is
kept only in the index (``uploads`` table), never used as a path. The index and the per-device counts
live in the store (its own tables, written on its thread).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import shutil
import string
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote

from blynk_server.errors import Refused
from blynk_server.model import now_ms
from blynk_server.store import SqliteStore

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    device_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    stored TEXT NOT NULL,
    size INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (device_id, name)
);
CREATE TABLE IF NOT EXISTS upload_counts (
    device_id INTEGER PRIMARY KEY,
    count INTEGER NOT NULL
);
"""
CHUNK = 64 * 1024  # bytes read from the request and written per thread hop
MAX_NAME = 200  # characters of the client's file name kept in the index
STORED_RE = re.compile(r"[A-Za-z0-9]{32}(?:\.[a-z0-9]{1,10})?")
_ALNUM = string.ascii_letters + string.digits
LIMIT_REACHED = "File uploads limit has been reached."


class UploadRefused(Refused):
    """An upload this server does not take: the HTTP status and the message to answer."""


class Part(Protocol):
    async def read_chunk(self, size: int = ...) -> bytes: ...


@dataclass(slots=True)
class Stored:
    stored: str
    size: int
    ts: int


def safe_name(filename: str | None) -> str:
    """The client's file name as the index keeps it: the last path component (after %-decoding, as
    some clients quote it), printable, bounded."""
    name = unquote(filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable()).strip()[:MAX_NAME]
    return name or "file"


def safe_extension(name: str) -> str:
    """``.ext`` of a name when it is 1..10 ASCII letters or digits (lower-cased), else nothing."""
    _, dot, ext = name.rpartition(".")
    ext = ext.lower()
    if dot and re.fullmatch(r"[a-z0-9]{1,10}", ext):
        return "." + ext
    return ""


class Uploads:
    """The upload directory, its index and its limits."""

    def __init__(
        self,
        store: SqliteStore,
        directory: Path,
        max_size: int,
        files_per_device: int,
        per_device: int,
        max_total_bytes: int,
        alive: Callable[[int], bool] = lambda device_id: True,
    ) -> None:
        self.store = store
        self.alive = alive  # a deleted device's files are no longer served (and removed at the next start)
        self.directory = directory
        self.max_size = max_size
        self.files_per_device = max(1, files_per_device)
        self.per_device = per_device
        self.max_total_bytes = max_total_bytes
        self._files: dict[int, OrderedDict[str, Stored]] = {}  # by device, oldest first
        self._counts: dict[int, int] = {}
        self.total_bytes = 0

    async def start(self) -> None:
        await self.store.run(self.store.execute_script, SCHEMA)
        await self.store.run(self._forget_deleted)
        rows = await self.store.run(
            self.store.query, "SELECT device_id, name, stored, size, ts FROM uploads ORDER BY ts"
        )
        for device_id, name, stored, size, ts in rows:
            self._files.setdefault(device_id, OrderedDict())[name] = Stored(stored, size, ts)
            self.total_bytes += size
        counts = await self.store.run(self.store.query, "SELECT device_id, count FROM upload_counts")
        self._counts = dict(counts)
        await asyncio.to_thread(self._prune_directory, set(self._files))

    def _forget_deleted(self) -> None:
        """On the store's thread: the rows of devices deleted since (device ids are never reused)."""
        for table in ("uploads", "upload_counts"):
            self.store.execute(f"DELETE FROM {table} WHERE device_id NOT IN (SELECT id FROM devices)")

    def _prune_directory(self, devices: set[int]) -> None:
        """Create the directory; remove the folders of devices with no file in the index, and partial files."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for folder in self.directory.iterdir():
            if folder.is_dir() and not (folder.name.isdigit() and int(folder.name) in devices):
                shutil.rmtree(folder, ignore_errors=True)
            elif folder.is_dir():
                for part in folder.glob(".part-*"):  # an upload cut short by a stop
                    part.unlink(missing_ok=True)

    def path(self, device_id: int, stored: str) -> Path | None:
        """The file behind ``/device_uploads/<device_id>/<stored>``, if the index has it."""
        if not STORED_RE.fullmatch(stored) or not self.alive(device_id):
            return None
        files = self._files.get(device_id)
        if files is None or not any(f.stored == stored for f in files.values()):
            return None
        return self.directory / str(device_id) / stored

    def check(self, device_id: int) -> None:
        """UploadRefused(403) when the device's uploads or the server's bytes are used up."""
        if self.per_device and self._counts.get(device_id, 0) >= self.per_device:
            raise UploadRefused(LIMIT_REACHED, 403)
        if self.max_total_bytes and self.total_bytes >= self.max_total_bytes:
            raise UploadRefused(LIMIT_REACHED, 403)

    async def receive(self, device_id: int, filename: str | None, part: Part) -> str:
        """Stream one file to disk; its path under the server (``device_uploads/<id>/<stored>``)."""
        self.check(device_id)
        name = safe_name(filename)
        files = self._files.setdefault(device_id, OrderedDict())
        previous = files.get(name)
        stored = previous.stored if previous is not None else "".join(secrets.choice(_ALNUM) for _ in range(32))
        if previous is None:
            stored += safe_extension(name)
        folder = self.directory / str(device_id)
        tmp = folder / f".part-{secrets.token_hex(8)}"
        size = await self._stream(folder, tmp, part)
        await asyncio.to_thread(os.replace, tmp, folder / stored)
        # Index, counts and eviction on the loop (no await in between: no other upload interleaves).
        files = self._files.setdefault(device_id, OrderedDict())
        old = files.pop(name, None)
        if old is not None:
            self.total_bytes -= old.size
        ts = now_ms()
        files[name] = Stored(stored, size, ts)
        self.total_bytes += size
        count = self._counts.get(device_id, 0) + 1
        self._counts[device_id] = count
        evicted = []
        while len(files) > self.files_per_device:
            old_name, gone = files.popitem(last=False)
            self.total_bytes -= gone.size
            evicted.append((old_name, gone.stored))
        done = self.store.submit(self._persist, device_id, name, stored, size, ts, count, [n for n, _ in evicted])
        done.add_done_callback(_log_failure)
        if evicted:
            await asyncio.to_thread(_unlink, [folder / s for _, s in evicted])
        return f"device_uploads/{device_id}/{stored}"

    async def _stream(self, folder: Path, tmp: Path, part: Part) -> int:
        def open_tmp():
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            return open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")

        fh = await asyncio.to_thread(open_tmp)
        size = 0
        try:
            while chunk := await part.read_chunk(CHUNK):
                size += len(chunk)
                if size > self.max_size:
                    raise UploadRefused(f"File is too large (at most {self.max_size} bytes).", 413)
                await asyncio.to_thread(fh.write, chunk)
        except BaseException:
            await asyncio.to_thread(_close_and_unlink, fh, tmp)
            raise
        await asyncio.to_thread(fh.close)
        return size

    def _persist(
        self, device_id: int, name: str, stored: str, size: int, ts: int, count: int, evicted: list[str]
    ) -> None:
        """On the store's thread: the index row, the device's count, the evicted rows."""
        self.store.execute(
            "INSERT OR REPLACE INTO uploads (device_id, name, stored, size, ts) VALUES (?, ?, ?, ?, ?)",
            (device_id, name, stored, size, ts),
        )
        self.store.execute("INSERT OR REPLACE INTO upload_counts (device_id, count) VALUES (?, ?)", (device_id, count))
        for old in evicted:
            self.store.execute("DELETE FROM uploads WHERE device_id = ? AND name = ?", (device_id, old))


def _log_failure(done: Future) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.error("uploads: the index could not be written: %s", done.exception())


def _close_and_unlink(fh, path: Path) -> None:
    fh.close()
    path.unlink(missing_ok=True)


def _unlink(paths: list[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


# Types served inline (never one a browser would run: no HTML, SVG or script); anything else is a download.
INLINE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".txt": "text/plain",
    ".csv": "text/plain",
    ".log": "text/plain",
    ".json": "application/json",
}


def content_type(stored: str) -> str | None:
    """The inline type of a stored name, or None (served as an ``application/octet-stream`` attachment)."""
    return INLINE_TYPES.get(safe_extension(stored))


__all__ = ["LIMIT_REACHED", "UploadRefused", "Uploads", "content_type", "safe_extension", "safe_name"]
