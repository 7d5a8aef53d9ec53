"""Firmware registry: files stored once by content (``<data_dir>/firmware/<sha256>.bin``), the parsed
``blnkinf`` tag, MD5 and SHA-256 (hex, and base64 for the ``x-sha256`` header)."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path

from blynk_server.ota.db import Firmware, OtaDB
from protocol.firmware import find_tag

log = logging.getLogger(__name__)

MAX_FIRMWARE = 64 * 1024 * 1024


class FirmwareError(ValueError):
    """A firmware upload that cannot be accepted; the message says why and what to do."""


def firmware_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "firmware"


def firmware_path(data_dir: Path, fw: Firmware) -> Path:
    return firmware_dir(data_dir) / f"{fw.sha256}.bin"


def sha256_b64(fw: Firmware) -> str:
    return base64.b64encode(bytes.fromhex(fw.sha256)).decode()


def register(
    db: OtaDB,
    data_dir: Path,
    data: bytes,
    file_name: str | None = None,
    type_: str | None = None,
    version: str | None = None,
    build: str | None = None,
) -> tuple[Firmware, bool]:
    """Store ``data`` and return (firmware, created). Explicit type/version/build override the tag;
    a file with no tag needs at least type and version."""
    if not data:
        raise FirmwareError("the firmware file is empty")
    if len(data) > MAX_FIRMWARE:
        raise FirmwareError(f"the firmware file is larger than {MAX_FIRMWARE} bytes")
    sha = hashlib.sha256(data).hexdigest()
    existing = db.firmware_by_sha(sha)
    if existing is not None:
        return existing, False
    tag = find_tag(data)
    if tag is None and not (type_ and version):
        raise FirmwareError(
            "no blnkinf tag found in the firmware (compressed or not built with the Blynk library?);"
            " give --type and --version explicitly"
        )
    fw_type = type_ or (tag.type if tag else None)
    fw_version = version or (tag.version if tag else None)
    if not fw_type:
        raise FirmwareError("the firmware tag has no fw-type; give --type explicitly (usually the template id)")
    if not fw_version:
        raise FirmwareError("the firmware tag has no firmware version (mcu/fw); give --version explicitly")
    folder = firmware_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sha}.bin"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    fw = db.add_firmware(
        {
            "sha256": sha,
            "md5": hashlib.md5(data).hexdigest(),
            "size": len(data),
            "type": fw_type,
            "version": fw_version,
            "build": build or (tag.build if tag else None),
            "board": tag.board if tag else None,
            "library_version": tag.library_version if tag else None,
            "tag": dict(tag.fields) if tag else None,
            "file_name": file_name,
        }
    )
    log.info(
        "firmware stored id=%d sha256=%s size=%d type=%s version=%s", fw.id, sha[:12], fw.size, fw_type, fw_version
    )
    return fw, True
