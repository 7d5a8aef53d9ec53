# The typed layout of ``_stats_c``, the compiled twin of ``stats.py`` (as _connection_c.pxd): the
# counters are C integers the core adds to without a Python object, read by the metrics collector at
# scrape time (``messages_in``/``messages_out`` read as a new list of 256 ints).
cdef class HardwareStats:
    cdef public long long connections, pending_logins, login_budget_ips, write_pauses, slow_reader_closes
    cdef public long long bytes_in, bytes_out, flood_pauses, quota_sent, dropped_oversize
    cdef public long long oversize_frames_in, idle_timeouts, replaced
    cdef public long long messages_in[256]
    cdef public long long messages_out[256]
    cdef public dict logins, refused
