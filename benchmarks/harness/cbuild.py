"""The harness's C programs (``telegen.c``, the load generator; ``cfloor.c``, the C floor), compiled
with the machine's C compiler into a per-user cache, once per source."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

_built: dict[Path, tuple[Path | None, str]] = {}  # source -> (binary, why not)


def _cache_dir() -> Path:
    """Per-user cache (not a shared /tmp path another user could plant a binary in)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "blynk-bench"


def build(source: Path) -> tuple[Path | None, str]:
    """``source`` compiled once per content and compiler (cached by hash); returns (binary, "") or
    (None, why not)."""
    if source not in _built:
        _built[source] = _compile(source)
    return _built[source]


def _compile(source: Path) -> tuple[Path | None, str]:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None, "no C compiler (cc or gcc) found"
    digest = hashlib.sha256(source.read_bytes() + cc.encode()).hexdigest()[:16]
    try:
        out_dir = _cache_dir()
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError:
        out_dir = Path(tempfile.mkdtemp(prefix="blynk-telegen-"))
    binary = out_dir / f"{source.stem}-{digest}"
    if not binary.exists():
        tmp = out_dir / f".{source.stem}-{digest}.{os.getpid()}"
        try:
            proc = subprocess.run(
                [cc, "-O2", "-std=c99", "-Wall", "-o", str(tmp), str(source)],
                capture_output=True,
                text=True,
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"{cc} failed: {exc}"
        if proc.returncode != 0:
            return None, f"{cc} failed: {(proc.stderr or proc.stdout).strip()[:300]}"
        os.replace(tmp, binary)  # atomic: a concurrent run sees the old state or the whole binary
    return binary, ""
