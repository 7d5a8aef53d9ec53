"""Files made for download: the ``data/get`` zip (``output=FILE``) and the legacy ``/{token}/data/{pin}``
``.csv.gz``. Each is written under ``<data dir>/exports`` by a worker thread (never on the event loop),
named with a random part (the link is the only key to it), and removed when it expires (``export_ttl``)
or when newer ones push the count over ``export_max_files`` or the bytes over ``export_max_bytes``
(oldest first). A restart forgets every link: the directory is emptied at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import functools
import gzip
import io
import logging
import re
import secrets
import shutil
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

# What a link may name: one path segment, the random part included (``Exports.new_name``).
NAME_PATTERN = r"[A-Za-z0-9_-]{1,200}\.(?:zip|csv\.gz)"
_NAME_RE = re.compile(NAME_PATTERN)
WORKERS = 2  # files built at once; more requests wait
MAX_WAITING = 16  # requests waiting for a worker; more are refused (ExportBusy)
SWEEP_INTERVAL = 60.0  # seconds between looks for expired files (at most the ttl)


class ExportBusy(Exception):
    """Too many files are being built; the client should retry later."""


@dataclass(slots=True)
class _File:
    path: Path
    size: int
    expires: float


def sanitize(text: str, limit: int = 40) -> str:
    """A name part made of ``[A-Za-z0-9_-]`` only (anything else becomes ``_``), at most ``limit`` long."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:limit]


class Exports:
    """The export directory and its bounded, expiring set of files."""

    def __init__(
        self,
        directory: Path,
        ttl: float,
        max_files: int,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.ttl = ttl
        self.max_files = max(1, max_files)
        self.max_bytes = max(1, max_bytes)
        self.clock = clock
        self._files: OrderedDict[str, _File] = OrderedDict()  # oldest first
        self._bytes = 0
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="export")
        self._slots = asyncio.Semaphore(WORKERS)
        self._waiting = 0
        self._sweeper: asyncio.Task | None = None

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._reset)
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        # Waits for a file being written (one export at most per thread), off the loop.
        await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(self._pool.shutdown, cancel_futures=True)
        )

    def _reset(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    @staticmethod
    def new_name(stem: str, suffix: str) -> str:
        """``<stem>_<random>.<suffix>``: the random part (128 bits) makes the link unguessable."""
        return f"{stem}_{secrets.token_urlsafe(16)}.{suffix}"

    async def build(self, name: str, write: Callable[[BinaryIO], None]) -> None:
        """Write the file ``name`` with ``write(fh)`` on a worker thread, then publish it. ExportBusy
        when ``MAX_WAITING`` requests already wait for a worker."""
        if self._waiting >= MAX_WAITING:
            raise ExportBusy("Too many exports in progress, try again later.")
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            size = await asyncio.get_running_loop().run_in_executor(self._pool, self._write, name, write)
        finally:
            self._slots.release()
        self._files[name] = _File(self.directory / name, size, self.clock() + self.ttl)
        self._bytes += size
        drop = []
        while len(self._files) > self.max_files or (self._bytes > self.max_bytes and len(self._files) > 1):
            _, old = self._files.popitem(last=False)
            self._bytes -= old.size
            drop.append(old.path)
        if drop:
            log.info("exports: %d oldest file(s) removed (over export_max_files or export_max_bytes)", len(drop))
            self._pool.submit(_unlink, drop)

    def _write(self, name: str, write: Callable[[BinaryIO], None]) -> int:
        tmp = self.directory / f".{name}.part"
        try:
            with open(tmp, "wb") as fh:
                write(fh)
            tmp.chmod(0o600)
            tmp.rename(self.directory / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return (self.directory / name).stat().st_size

    def file(self, name: str) -> Path | None:
        """The path of a published, unexpired file, else None."""
        if not _NAME_RE.fullmatch(name):
            return None
        entry = self._files.get(name)
        if entry is None or entry.expires <= self.clock():
            return None
        return entry.path

    def sweep(self) -> int:
        """Forget expired files (their unlinking is handed to a worker); how many."""
        now = self.clock()
        expired = [name for name, f in self._files.items() if f.expires <= now]
        paths = []
        for name in expired:
            f = self._files.pop(name)
            self._bytes -= f.size
            paths.append(f.path)
        if paths:
            self._pool.submit(_unlink, paths)
        return len(paths)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, min(SWEEP_INTERVAL, self.ttl)))
            self.sweep()


def _unlink(paths: list[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


# --- file formats ---------------------------------------------------------------------------------


def csv_rows(header: Iterable[str] | None, rows: Iterable[Iterable[object]]) -> bytes:
    """CSV text (``\\n`` line ends, quoted only where needed) as UTF-8."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header is not None:
        w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def write_zip(fh: BinaryIO, members: list[tuple[str, bytes]]) -> None:
    """A deflated zip of ``(name, content)`` members."""
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, content in members:
            zf.writestr(name, content)
            time.sleep(0)  # hand the GIL over between members


def write_gzip(fh: BinaryIO, content: bytes) -> None:
    with gzip.GzipFile(fileobj=fh, mode="wb", mtime=0) as gz:
        gz.write(content)


__all__ = ["NAME_PATTERN", "ExportBusy", "Exports", "csv_rows", "sanitize", "write_gzip", "write_zip"]
