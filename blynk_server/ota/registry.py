"""Firmware registry: files stored once by content (``<data_dir>/firmware/<sha256>.bin``), the parsed
``blnkinf`` tag, MD5 and SHA-256 (hex, and base64 for the ``x-sha256`` header).

An image arrives in pieces (``Upload``: a temp file in the firmware dir, hashed on the way) from the
CLI or the admin API alike, so it is never held whole in memory and one limit, ``ota_max_firmware``,
applies to both."""

from __future__ import annotations

import base64
import hashlib
import logging
import mmap
import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from blynk_server.ota.db import Firmware, OtaDB
from protocol.firmware import FirmwareTag, find_tag

log = logging.getLogger(__name__)

MAX_FILE_NAME = 255
MAX_FIELD = 64  # an explicit type, version or build (tag values are a few dozen characters)
TMP_PREFIX = ".upload-"
STALE_UPLOAD = 86400.0  # seconds: an upload temp file this old was left by a crash


class FirmwareError(ValueError):
    """A firmware upload that cannot be accepted; the message says why and what to do."""

    status = 400


class FirmwareTooLarge(FirmwareError):
    status = 413


def firmware_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "firmware"


def firmware_path(data_dir: Path, fw: Firmware) -> Path:
    return firmware_dir(data_dir) / f"{fw.sha256}.bin"


def sha256_b64(fw: Firmware) -> str:
    return base64.b64encode(bytes.fromhex(fw.sha256)).decode()


class Upload:
    """A firmware image being received: written to a temp file next to its final place and hashed
    chunk by chunk. Leaving the ``with`` block removes the temp file unless ``register`` kept it."""

    def __init__(self, data_dir: Path, limit: int) -> None:
        folder = firmware_dir(data_dir)
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX, suffix=".tmp")
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb")
        self.limit = limit
        self.size = 0
        self.md5 = hashlib.md5()
        self.sha256 = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise FirmwareTooLarge(f"the firmware file is larger than {self.limit} bytes (ota_max_firmware)")
        self.file.write(chunk)
        self.md5.update(chunk)
        self.sha256.update(chunk)

    def __enter__(self) -> Upload:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def remove_stale_uploads(data_dir: Path, older_than: float = STALE_UPLOAD) -> int:
    """Delete temp files of uploads cut off by a crash (a clean failure removes its own). Only old
    ones: a CLI upload may be running beside the server. Returns how many went."""
    folder = firmware_dir(data_dir)
    removed = 0
    if folder.is_dir():
        cutoff = time.time() - older_than
        for path in folder.glob(f"{TMP_PREFIX}*.tmp"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
    if removed:
        log.info("removed %d stale firmware upload temp file(s) from %s", removed, folder)
    return removed


def _field(value: str | None, what: str, limit: int) -> str | None:
    if value is not None and len(value) > limit:
        raise FirmwareError(f"{what} is longer than {limit} characters")
    return value or None


@dataclass(slots=True)
class Prepared:
    """A received image hashed, synced and scanned (``prepare``), not yet recorded."""

    path: Path
    sha256: str
    md5: str
    size: int
    tag: FirmwareTag | None
    file_name: str | None
    type_: str | None
    version: str | None
    build: str | None


def prepare(
    upload: Upload,
    file_name: str | None = None,
    type_: str | None = None,
    version: str | None = None,
    build: str | None = None,
) -> Prepared:
    """Check the explicit fields, fsync the temp file and find its tag. Blocking (fsync, a scan of
    the file) but no database: the admin API runs it in a worker thread."""
    file_name = _field(file_name, "the file name", MAX_FILE_NAME)
    type_ = _field(type_, "the firmware type", MAX_FIELD)
    version = _field(version, "the firmware version", MAX_FIELD)
    build = _field(build, "the build", MAX_FIELD)
    if not upload.size:
        raise FirmwareError("the firmware file is empty")
    upload.file.flush()
    os.fsync(upload.file.fileno())  # on disk before the row that points at it
    with open(upload.path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
        tag = find_tag(view)
    return Prepared(
        upload.path,
        upload.sha256.hexdigest(),
        upload.md5.hexdigest(),
        upload.size,
        tag,
        file_name,
        type_,
        version,
        build,
    )


def record(db: OtaDB, data_dir: Path, p: Prepared) -> tuple[Firmware, bool]:
    """Keep a prepared image and return (firmware, created): the same content already stored is
    returned as it is; else explicit type/version/build override the tag, and a file with no tag
    needs at least type and version. Quick (a rename and a row): the server runs it on the store's
    writer thread."""
    existing = db.firmware_by_sha(p.sha256)
    if existing is not None:
        return existing, False
    tag = p.tag
    if tag is None and not (p.type_ and p.version):
        raise FirmwareError(
            "no blnkinf tag found in the firmware (compressed or not built with the Blynk library?);"
            " give --type and --version explicitly"
        )
    fw_type = p.type_ or (tag.type if tag else None)
    fw_version = p.version or (tag.version if tag else None)
    if not fw_type:
        raise FirmwareError("the firmware tag has no fw-type; give --type explicitly (usually the template id)")
    if not fw_version:
        raise FirmwareError("the firmware tag has no firmware version (mcu/fw); give --version explicitly")
    os.replace(p.path, firmware_dir(data_dir) / f"{p.sha256}.bin")
    try:
        fw = db.add_firmware(
            {
                "sha256": p.sha256,
                "md5": p.md5,
                "size": p.size,
                "type": fw_type,
                "version": fw_version,
                "build": p.build or (tag.build if tag else None),
                "board": tag.board if tag else None,
                "library_version": tag.library_version if tag else None,
                "tag": dict(tag.fields) if tag else None,
                "file_name": p.file_name,
            }
        )
    except sqlite3.IntegrityError:  # the same image, uploaded at the same moment by someone else
        same = db.firmware_by_sha(p.sha256)
        if same is None:
            raise
        return same, False
    log.info(
        "firmware stored id=%d sha256=%s size=%d type=%s version=%s",
        fw.id,
        p.sha256[:12],
        fw.size,
        fw_type,
        fw_version,
    )
    return fw, True


def register(
    db: OtaDB,
    data_dir: Path,
    upload: Upload,
    file_name: str | None = None,
    type_: str | None = None,
    version: str | None = None,
    build: str | None = None,
) -> tuple[Firmware, bool]:
    """``prepare`` and ``record`` in one call (the CLI with no server running)."""
    return record(db, data_dir, prepare(upload, file_name, type_, version, build))
