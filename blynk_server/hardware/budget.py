"""How much device telemetry the sessions of one listener handle in one event-loop turn.

Past one core, handling every read at once makes each turn as long as the backlog: at 10,000 devices
x 10 msg/s a command to a device, a ping or a new login waited behind a whole turn of telemetry, for
seconds. A turn's logged-in reads draw frames from this budget; once it is spent, a read's bytes are
kept as they are, its socket stops being read, and the session waits in the listener's queue
(``turns.ReadTurns``) for a later turn, in arrival order. What keeps its place: logins (a connection
not logged in), a lone PING, commands pushed to devices and HTTP, which never draw from it.

The budget is refilled at the start of the turn after the one that spent a quarter of it (``mark``),
not after every turn: below one core a turn often holds one read, and a refill callback per turn cost
about 1.3 µs per read (in process, 4.4 against 3.1 µs: benchmarks/RESULTS.md, issue 12 step 8). A turn
thus starts with at least three quarters of the budget (after one that spent a quarter, a full one)
and handles at most all of it.

Its compiled twin ``_budget_c`` (``_budget_c.pxd``) gives it C fields the core reads without a Python object.
"""

from __future__ import annotations


class TurnBudget:
    __slots__ = ("limit", "left", "mark", "deferred_reads", "exhausted_turns", "turns_waiting")

    def __init__(self, limit: int) -> None:
        self.limit = limit  # frames per turn; 0: no limit (nothing is ever deferred)
        self.left = limit  # frames left; refilled by ReadTurns at the start of a later turn
        # A read that takes ``left`` to ``mark`` or below has the budget refilled at the next turn: a
        # quarter of it spent (at least one frame).
        self.mark = limit - max(1, limit // 4)
        self.deferred_reads = 0  # reads kept for a later turn (a counter, for /metrics)
        self.exhausted_turns = 0  # turns that spent the whole budget
        # Busy sockets wait for a read turn (ReadTurns.waiting is not empty, and a turn is scheduled; kept
        # by ReadTurns): every read asks, and here, typed, that is a C field, not two attribute lookups
        # and a deque's length.
        self.turns_waiting = False

    def spent(self) -> bool:
        """Is this turn's budget gone? (Never, with no limit.)"""
        return self.limit > 0 and self.left <= 0
