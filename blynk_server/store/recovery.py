"""Recovery files: rows the store could not write at shutdown, kept in the data dir for the next start.

A stop that cannot flush (a full disk, a read-only file) must not lose what devices were told was
stored, nor claim it flushed. The rows go to ``recovery-<ms>.jsonl`` (one JSON array per row, bytes in
base64; written to a temporary name, fsynced, then renamed, mode 0600); the next start loads every
such file into a batch, writes it, and removes the file once committed.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from blynk_server.model import now_ms
from blynk_server.store.batch import Batch

PATTERN = "recovery-*.jsonl"


class RecoveryError(ValueError):
    """A recovery file that cannot be read back."""


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _lines(batch: Batch):
    for (d, p), (v, ts) in batch.values.items():
        yield ["v", d, p, _b64(v), ts]
    for (d, p, n), (v, ts) in batch.props.items():
        yield ["p", d, p, n, _b64(v), ts]
    for d, p, ts, v in batch.history:
        yield ["h", d, p, ts, _b64(v)]
    for ev in batch.events:
        yield ["e", *ev]
    for d, (seen, info) in batch.devices.items():
        yield ["d", d, seen, info]
    for (d, n), v in batch.meta.items():
        yield ["m", d, n, v]
    for d, tz in batch.timezones.items():
        yield ["t", d, tz]


def save(data_dir: Path, batch: Batch) -> Path:
    """Write ``batch`` to a new recovery file and return its path (raises OSError when it cannot)."""
    path = data_dir / f"recovery-{now_ms()}.jsonl"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogatepass") as fh:
            for line in _lines(batch):
                fh.write(json.dumps(line, ensure_ascii=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def find(data_dir: Path) -> list[Path]:
    return sorted(data_dir.glob(PATTERN))


def load(path: Path) -> Batch:
    """The rows of one recovery file (in the order they were saved)."""
    batch = Batch()
    with open(path, encoding="utf-8", errors="surrogatepass") as fh:
        for lineno, text in enumerate(fh, 1):
            if not text.strip():
                continue
            try:
                _add(batch, json.loads(text))
            except (ValueError, TypeError, IndexError) as exc:
                raise RecoveryError(f"{path}:{lineno}: {exc}") from None
    return batch


def _add(batch: Batch, row: list) -> None:
    kind = row[0]
    if kind == "v":
        _, d, p, v, ts = row
        batch.values[(d, p)] = (_unb64(v), ts)
    elif kind == "p":
        _, d, p, n, v, ts = row
        batch.props[(d, p, n)] = (_unb64(v), ts)
    elif kind == "h":
        _, d, p, ts, v = row
        batch.history.append((d, p, ts, _unb64(v)))
    elif kind == "e":
        batch.events.append(tuple(row[1:]))
    elif kind == "d":
        _, d, seen, info = row
        batch.devices[d] = (seen, info)
    elif kind == "m":
        _, d, n, v = row
        batch.meta[(d, n)] = v
    elif kind == "t":
        _, d, tz = row
        batch.timezones[d] = tz
    else:
        raise ValueError(f"unknown row kind {kind!r}")
