"""Stored history as the APIs answer it: a checked query of one pin's points, aggregated into
buckets or raw, with values typed by their datastream and encoded as JSON.

A query runs on the store's thread (``Domain.history_json``): it sees the rows not written yet, and the
event loop only waits for the result.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from blynk_server.model import Datastream
from blynk_server.store import SqliteStore
from protocol.body import SEP

PERIODS_MS = {
    "HOUR": 3600_000,
    "DAY": 24 * 3600_000,
    "WEEK": 7 * 24 * 3600_000,
    "MONTH": 30 * 24 * 3600_000,
    "THREE_MONTHS": 90 * 24 * 3600_000,
}
GRANULARITY_MS = {"RAW_DATA": 0, "MINUTE": 60_000, "HOURLY": 3600_000, "DAILY": 24 * 3600_000}
SOURCE_TYPES = ("AVG", "MIN", "MAX", "SUM", "COUNT")
FORMATS = ("TS", "ISO_US", "ISO_SIMPLE")
# Aggregated queries read at most this many times ``max_points`` raw points.
AGGREGATE_SCAN_FACTOR = 10
ENCODE_SLICE = 500  # rows per json.dumps call


class NoHistory(Exception):
    """The period holds no point of the pin (the cloud answers 500 "No data")."""


def typed_value(ds: Datastream | None, raw: bytes) -> object:
    """A stored value as JSON: numbers for numeric datastreams, a list for multi-value, else a string."""
    if SEP in raw:
        parts = raw.split(SEP)
        if ds is not None and ds.type == "location":
            try:
                return [float(p) for p in parts]
            except ValueError:
                pass
        return [p.decode("utf-8", "replace") for p in parts]
    text = raw.decode("utf-8", "replace")
    if ds is not None and ds.type in ("int", "enum"):
        try:
            return int(float(text))
        except (ValueError, OverflowError):  # a value stored before the datastream's type changed
            return text
    if ds is not None and ds.type == "double":
        try:
            return float(text)
        except ValueError:
            return text
    return text


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """One pin's points over a period (``data/get``, ``output=JSON``): checked by the door, run on the
    store's thread (``Domain.history_json``).

    At most ``max_points`` rows come back: the oldest raw points of the period, or the buckets of the
    oldest ``AGGREGATE_SCAN_FACTOR × max_points`` raw points (buckets after the last complete one
    left out). ``rows_before_limit_at_least`` is then larger than ``rows`` (a lower bound of the rows
    there would be without the limit, as ClickHouse reports it)."""

    device_id: int
    pin: str
    ds: Datastream | None
    since: int
    until: int
    step: int
    source: str
    fmt: str
    tz: ZoneInfo
    max_points: int

    def fetch(self, store: SqliteStore) -> tuple[list[tuple[int, object]], int]:
        """Query (with a LIMIT) and aggregate: the rows (ts, raw value or bucket number) and the lower
        bound of the rows there would be without the limit. Runs on the store's thread."""
        raw_cap = self.max_points if self.step == 0 else self.max_points * AGGREGATE_SCAN_FACTOR
        points = store.history(self.device_id, self.pin, self.since, self.until, limit=raw_cap + 1)
        truncated = len(points) > raw_cap
        del points[raw_cap:]
        if self.step == 0:
            return points, len(points) + truncated  # type: ignore[return-value]
        buckets = _aggregate(points, self.step, self.source, self.tz)
        if truncated and buckets:
            buckets.pop()  # its points may go on past the ones read
        return buckets[: self.max_points], len(buckets) + truncated  # type: ignore[return-value]

    def value(self, value: object) -> object:
        """A fetched row's value as JSON: typed by the datastream (raw rows) or the bucket's number."""
        return typed_value(self.ds, value) if self.step == 0 else value  # type: ignore[arg-type]

    def value_type(self) -> str:
        ds = self.ds
        if self.step or (ds is not None and ds.type in ("int", "double", "enum")):
            return "Float64"
        return "String"

    def run(self, store: SqliteStore) -> bytes:
        """Query, aggregate and encode: the JSON body. Runs off the event loop."""
        rows, at_least = self.fetch(store)
        if not rows:
            raise NoHistory("No data")
        # The columns of Blynk's "JSON Output example" (Get Historical Data From Device).
        meta = [
            {"name": "data_stream_name", "type": "String"},
            {"name": "ts", "type": "UInt64" if self.fmt == "TS" else "String"},
            {"name": "value", "type": self.value_type()},
        ]
        name = self.ds.name if self.ds is not None else ""
        # Built and encoded in slices, handing the GIL over after each (time.sleep(0) releases it): the
        # event loop waits for this thread ~1 ms at most, not the 5 ms switch interval each time.
        chunks = []
        for i in range(0, len(rows), ENCODE_SLICE):
            part = [
                {"data_stream_name": name, "ts": self.when(ts), "value": self.value(value)}
                for ts, value in rows[i : i + ENCODE_SLICE]
            ]
            chunks.append(json.dumps(part)[1:-1])
            time.sleep(0)
        return (
            f'{{"meta": {json.dumps(meta)}, "data": [{", ".join(chunks)}], '
            f'"rows": {len(rows)}, "rows_before_limit_at_least": {at_least}}}'
        ).encode()

    def when(self, ts: int) -> object:
        if self.fmt == "TS":
            return ts
        dt = datetime.fromtimestamp(ts / 1000, UTC).astimezone(self.tz)
        # Blynk's documented forms: ISO_US "04/10/19 11:45:41 AM", ISO_SIMPLE "2018-06-07 22:01:20".
        return dt.strftime("%m/%d/%y %I:%M:%S %p" if self.fmt == "ISO_US" else "%Y-%m-%d %H:%M:%S")


Fetched = tuple["HistoryQuery", list[tuple[int, object]], int]  # a query, its rows, the lower bound


def fetch_many(queries: list[HistoryQuery], store: SqliteStore, budget: int) -> list[Fetched]:
    """The rows of several pins' queries, in order, at most ``budget`` rows in all: each query may take
    what the ones before it left, and those after the budget is spent are not read. On the store's
    thread."""
    out: list[Fetched] = []
    for query in queries:
        if budget <= 0:
            break
        query = dataclasses.replace(query, max_points=min(query.max_points, budget))
        rows, at_least = query.fetch(store)
        budget -= len(rows)
        out.append((query, rows, at_least))
    return out


def json_many(fetched: list[Fetched]) -> bytes:
    """``data/get`` for every datastream (no ``pin``): one table of ``ts``, ``dataStreamId``, ``pin``,
    ``value`` rows, datastream by datastream, each oldest first. Raises NoHistory when no datastream has
    a row."""
    rows = sum(len(r) for _, r, _ in fetched)
    if not rows:
        raise NoHistory("No data")
    fmt = fetched[0][0].fmt
    meta = [
        {"name": "ts", "type": "UInt64" if fmt == "TS" else "String"},
        {"name": "dataStreamId", "type": "UInt32"},
        {"name": "pin", "type": "String"},
        {"name": "value", "type": "String"},
    ]
    chunks = []
    for query, found, _ in fetched:
        ds_id = query.ds.id if query.ds is not None else None
        for i in range(0, len(found), ENCODE_SLICE):
            part = [
                {"ts": query.when(ts), "dataStreamId": ds_id, "pin": query.pin, "value": query.value(value)}
                for ts, value in found[i : i + ENCODE_SLICE]
            ]
            chunks.append(json.dumps(part)[1:-1])
            time.sleep(0)
    at_least = sum(a for _, _, a in fetched)
    return (
        f'{{"meta": {json.dumps(meta)}, "data": [{", ".join(c for c in chunks if c)}], '
        f'"rows": {rows}, "rows_before_limit_at_least": {at_least}}}'
    ).encode()


def run_json_many(queries: list[HistoryQuery], store: SqliteStore, budget: int) -> bytes:
    return json_many(fetch_many(queries, store, budget))


def _aggregate(points: list[tuple[int, bytes]], step: int, source: str, tz: ZoneInfo) -> list[tuple[int, float]]:
    """Bucket numeric points by ``step`` (aligned to the time zone's midnight for daily buckets)."""
    buckets: dict[int, list[float]] = {}
    for ts, raw in points:
        try:
            x = float(raw.split(SEP, 1)[0])
        except ValueError:
            continue
        if not math.isfinite(x):
            continue
        offset = 0
        if step >= 3600_000:
            utcoffset = datetime.fromtimestamp(ts / 1000, tz).utcoffset()
            offset = int(utcoffset.total_seconds() * 1000) if utcoffset else 0
        start = (ts + offset) // step * step - offset
        buckets.setdefault(start, []).append(x)
    out = []
    for start in sorted(buckets):
        xs = buckets[start]
        if source == "AVG":
            value = sum(xs) / len(xs)
        elif source == "MIN":
            value = min(xs)
        elif source == "MAX":
            value = max(xs)
        elif source == "SUM":
            value = sum(xs)
        else:
            value = float(len(xs))
        out.append((start, value))
    return out
