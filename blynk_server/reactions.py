"""What happens to devices, for the parts that react to it (events' notifications, webhooks,
automations): one synchronous fan-out on the event loop.

The domain and the event log call ``Reactions.emit``; a listener must not block nor await: it looks at
the happening and, when it cares, queues work (the outbox, a task). A failing listener is logged and the
others still run. Value writes are the hot path: the domain emits one only for a (template, pin) some
listener asked for with ``watch_value``, so an unwatched write costs one set lookup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

VALUE = "value"  # a pin value stored (pin, value)
EVENT = "event"  # an event logged on the device's timeline (code, level, description)
ONLINE = "online"  # the device came online (after its template's offline-ignore period, if it was away)
OFFLINE = "offline"  # the device stayed offline past its template's offline-ignore period
KINDS = (VALUE, EVENT, ONLINE, OFFLINE)


@dataclass(slots=True)
class Happening:
    """One thing that happened to ``device`` (a ``domain.DeviceState``) at ``ts`` (ms). Listeners read
    it and never change it (not frozen: a frozen dataclass costs 3.2 µs to build instead of 0.9 µs, on
    every watched write)."""

    kind: str
    device: object
    ts: int
    pin: str | None = None
    value: bytes | None = None
    code: str | None = None
    level: str | None = None
    description: str | None = None
    depth: int = 0  # automations between the device and this happening (the loop guard reads it)


Listener = Callable[[Happening], None]


class Reactions:
    def __init__(self) -> None:
        self.listeners: list[Listener] = []
        # (template id, pin key) whose values are emitted. Changed in place, never replaced: the pin
        # writer holds this set (compiled, no attribute lookup per write).
        self.watched: set[tuple[str, str]] = set()
        self._watches: dict[str, set[tuple[str, str]]] = {}  # by listener name
        # Raised while an automation's actions run, so what they cause carries it (``Happening.depth``).
        self.depth = 0

    def listen(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def watch_values(self, owner: str, pairs: set[tuple[str, str]]) -> None:
        """What ``owner`` (a listener's name) wants value happenings of: (template id, pin key) pairs,
        replacing what it asked before. Listeners call it whenever their definitions change."""
        self._watches[owner] = set(pairs)
        self.watched.clear()
        self.watched.update(*self._watches.values())

    def emit(self, happening: Happening) -> None:
        for listener in self.listeners:
            try:
                listener(happening)
            except Exception:
                log.exception("reaction to %s failed", happening.kind)
