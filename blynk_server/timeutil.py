"""Time answers for INTERNAL ``rtc`` and ``utc`` in a device's time zone."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# What a device may ask after ``utc`` (bytes, as they arrive); anything else is ILLEGAL_COMMAND.
UTC_REQUESTS = frozenset({b"time", b"iso", b"tz", b"tz_name", b"tz_rule", b"dst_next"})
DST_CACHE_SECONDS = 3600  # next_transitions is computed once per zone per hour
MAX_DST_CACHE = 1024  # (zone, hour) entries; the cache is emptied when full
_dst_cache: dict[tuple[str, int], list[tuple[int, int]]] = {}


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def rtc_seconds(tz_name: str | None, now: float | None = None) -> int:
    """Local wall-clock time of the zone expressed as epoch seconds (what WidgetRTC expects)."""
    now = time.time() if now is None else now
    local = datetime.fromtimestamp(now, zone(tz_name))
    return int(now + (local.utcoffset() or timedelta()).total_seconds())


def _offsets(tz: ZoneInfo, at: datetime) -> tuple[int, int]:
    local = at.astimezone(tz)
    total = int((local.utcoffset() or timedelta()).total_seconds() // 60)
    dst = int((local.dst() or timedelta()).total_seconds() // 60)
    return total - dst, dst


def next_transitions(tz: ZoneInfo, start: datetime, count: int = 2) -> list[tuple[int, int]]:
    """The next ``count`` UTC-offset changes within two years: (unix seconds, new offset minutes)."""
    out: list[tuple[int, int]] = []
    step = timedelta(days=1)
    t = start
    end = start + timedelta(days=730)
    cur = t.astimezone(tz).utcoffset()
    while t < end and len(out) < count:
        nxt = t + step
        if nxt.astimezone(tz).utcoffset() != cur:
            lo, hi = t, nxt
            while hi - lo > timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                if mid.astimezone(tz).utcoffset() == cur:
                    lo = mid
                else:
                    hi = mid
            hi = hi.replace(microsecond=0)
            cur = hi.astimezone(tz).utcoffset()
            out.append((int(hi.timestamp()), int((cur or timedelta()).total_seconds() // 60)))
            t = hi
        else:
            t = nxt
    return out


def upcoming_transitions(tz: ZoneInfo, now: float) -> list[tuple[int, int]]:
    """The next two offset changes after ``now``, from a per-zone, per-hour cache: finding them walks
    two years day by day, a few milliseconds a device could otherwise ask for a thousand times a second."""
    hour = int(now // DST_CACHE_SECONDS)
    key = (tz.key, hour)
    found = _dst_cache.get(key)
    if found is None:
        if len(_dst_cache) >= MAX_DST_CACHE:
            _dst_cache.clear()
        start = datetime.fromtimestamp(hour * DST_CACHE_SECONDS, UTC)
        found = _dst_cache[key] = next_transitions(tz, start, 3)  # 3: one may fall inside this hour
    return [t for t in found if t[0] > now][:2]


def posix_rule(tz: ZoneInfo) -> str:
    """The POSIX TZ string at the end of the zone's TZif file (e.g. ``EET-2EEST,M3.5.0/3,M10.5.0/4``)."""
    for base in ("/usr/share/zoneinfo", "/usr/lib/zoneinfo", "/usr/share/lib/zoneinfo"):
        try:
            with open(f"{base}/{tz.key}", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        tail = data.rstrip(b"\n").rsplit(b"\n", 1)
        if len(tail) == 2:
            return tail[1].decode("ascii", "replace")
    return "UTC0" if tz.key == "UTC" else ""


def utc_answer(what: str, tz_name: str | None, now: float | None = None) -> list[str] | None:
    """Fields after ``utc`` for one request, or None for an unknown request."""
    now = time.time() if now is None else now
    tz = zone(tz_name)
    at = datetime.fromtimestamp(now, UTC)
    if what == "time":
        return ["time", str(int(now * 1000))]
    if what == "iso":
        return ["iso", at.astimezone(tz).isoformat(timespec="seconds")]
    if what == "tz":
        std, dst = _offsets(tz, at)
        return ["tz", str(std), str(dst)]
    if what == "tz_name":
        return ["tz_name", tz.key]
    if what == "tz_rule":
        return ["tz_rule", posix_rule(tz)]
    if what == "dst_next":
        fields = ["dst_next"]
        for ts, off in upcoming_transitions(tz, now):
            fields += [str(ts), str(off)]
        return fields
    return None
