"""The device hot path's classes, from one twin: the compiled extensions or their Python sources.

``setup.py`` builds ``_stats_c``, ``_budget_c``, ``_connection_c``, ``_session_c`` and ``_direct_c`` from
``stats.py``, ``budget.py``, ``connection.py``, ``session.py`` and ``direct.py`` (typed by their ``.pxd``);
``protocol.twins.select`` takes the five compiled ones together or the five sources (extensions off, not
built, or stale: the compiled session derives from the compiled core and writes the compiled counters,
and the compiled epoll set calls the compiled session's C methods, so they never mix).
Everything that creates a session, its counters or its budget takes the classes from here.
"""

from __future__ import annotations

from protocol import twins

_TWINS = [
    ("blynk_server.hardware._stats_c", "blynk_server.hardware.stats"),
    ("blynk_server.hardware._budget_c", "blynk_server.hardware.budget"),
    ("blynk_server.hardware._connection_c", "blynk_server.hardware.connection"),
    ("blynk_server.hardware._session_c", "blynk_server.hardware.session"),
    ("blynk_server.hardware._direct_c", "blynk_server.hardware.direct"),
]
(_stats, _budget, _connection, _session, _direct), IMPLEMENTATION = twins.select(_TWINS)

HardwareStats = _stats.HardwareStats
TurnBudget = _budget.TurnBudget
DeviceConnection = _connection.DeviceConnection
HardwareSession = _session.HardwareSession
DirectReads = _direct.DirectReads
