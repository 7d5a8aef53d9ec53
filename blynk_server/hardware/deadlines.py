"""One timer for the login and heartbeat deadlines of every device session.

A ``loop.call_later`` handle per session cost ~650 bytes (the handle, the libuv timer, the bound
method) and was re-created every time a deadline moved; with 15,000 idle devices that was a tenth of
the server's memory. Here a session's deadline is a bucket number (``RESOLUTION`` seconds wide) and
one loop timer walks the buckets in order. A deadline fires at most ``RESOLUTION`` late, never early.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from typing import Protocol

RESOLUTION = 0.1  # seconds per bucket


class HasDeadline(Protocol):
    _deadline_key: int  # the bucket number; 0: none (a C integer in the compiled session)

    def _on_deadline(self) -> None: ...


class _Bucket:
    """The owners due in one bucket, in a list (8 bytes an owner; a set cost 16 bytes a slot at a third
    to two thirds full: ~80 bytes an idle session, a twentieth of its memory). A cancelled owner stays
    in the list, unmatched (its ``_deadline_key`` no longer names this bucket), until the bucket fires
    or more than half of it is such: then it is compacted, so the dead owners a bucket keeps alive are
    never more than its live ones."""

    __slots__ = ("owners", "stale")

    def __init__(self) -> None:
        self.owners: list[HasDeadline] = []
        self.stale = 0  # owners cancelled since the last compaction


class Deadlines:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._buckets: dict[int, _Bucket] = {}
        self._keys: list[int] = []  # heap of the bucket numbers in _buckets
        self._timer: asyncio.TimerHandle | None = None
        self._timer_key: int | None = None

    def __len__(self) -> int:
        return sum(1 for key, b in self._buckets.items() for owner in b.owners if owner._deadline_key == key)

    def held(self) -> int:
        """Owners the buckets hold, cancelled ones included (what compaction bounds)."""
        return sum(len(b.owners) for b in self._buckets.values())

    def set(self, owner: HasDeadline, delay: float) -> None:
        """(Re)arm ``owner``'s deadline ``delay`` seconds from now; it replaces the previous one."""
        self.set_at(owner, self.loop.time() + delay)

    def set_at(self, owner: HasDeadline, when: float) -> None:
        """(Re)arm ``owner``'s deadline at the loop time ``when``; it replaces the previous one."""
        key = max(1, math.ceil(when / RESOLUTION))  # 0 means none (loop times are positive anyway)
        if owner._deadline_key == key:
            return  # already there
        self.cancel(owner)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket()
            heapq.heappush(self._keys, key)
        bucket.owners.append(owner)
        owner._deadline_key = key
        if self._timer_key is None or key < self._timer_key:
            self._schedule(key)

    def cancel(self, owner: HasDeadline) -> None:
        key = owner._deadline_key
        if key:
            owner._deadline_key = 0
            bucket = self._buckets.get(key)
            if bucket is not None:  # an emptied bucket is dropped when its time comes
                bucket.stale += 1
                if bucket.stale * 2 > len(bucket.owners):
                    bucket.owners = [o for o in bucket.owners if o._deadline_key == key]
                    bucket.stale = 0

    def _schedule(self, key: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_key = key
        self._timer = self.loop.call_at(key * RESOLUTION, self._tick)

    def _tick(self) -> None:
        self._timer = self._timer_key = None
        # The same product as the timer's time in _schedule: floor(now / RESOLUTION) would be one short
        # when the timer fires at exactly key * RESOLUTION and that divides back to 42.999... (key 43).
        now = self.loop.time()
        keys = self._keys
        while keys and keys[0] * RESOLUTION <= now:
            key = heapq.heappop(keys)
            bucket = self._buckets.pop(key, None)
            if bucket is None:
                continue
            for owner in bucket.owners:
                if owner._deadline_key == key:  # not cancelled, not moved (nor fired: a duplicate)
                    owner._deadline_key = 0
                    owner._on_deadline()  # may set a new deadline, in a later bucket
        if keys and self._timer_key is None:
            self._schedule(keys[0])
