"""Prometheus metrics, built at scrape time from the plain counters the hot path bumps.

Sessions, the domain, the store and the HTTP middleware only increment integers on plain objects
(``HardwareStats``, ``DomainStats``, ``FlushStats``, ``HttpStats``); ``BlynkCollector`` reads them when
Prometheus scrapes, on a registry of its own, so a device message never touches a lock or a label
lookup of prometheus-client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from blynk_server.automations import AutomationStats, automation_metrics
from blynk_server.device_provisioning import ProvisionStats, provision_metrics
from blynk_server.domain import DomainStats
from blynk_server.events import EventsStats, event_metrics
from blynk_server.hardware.hotpath import HardwareStats
from blynk_server.hardware.turns import ReadTurns
from blynk_server.http.platform_api import Platform, platform_metrics
from blynk_server.http.stats import HTTP_BUCKETS, HttpStats
from blynk_server.hub import Hub
from blynk_server.looplag import TURN_BUCKETS, LoopLag
from blynk_server.ota.metrics import ota_metrics
from blynk_server.ota.service import OtaService
from blynk_server.outbox import OutboxStats
from blynk_server.store import SqliteStore
from blynk_server.store.retention import RetentionStats
from blynk_server.webhooks import Webhooks, webhook_metrics
from protocol import Command

log = logging.getLogger(__name__)

COMMAND_NAMES = {int(c): c.name.lower() for c in Command}


@dataclass(slots=True)
class Sources:
    """What the collector reads: each part's counters, handed over by the composition root."""

    hub: Hub
    hardware: HardwareStats
    connections_open: Callable[[], int]
    domain: DomainStats
    store: SqliteStore
    retention: RetentionStats | None
    http: HttpStats
    lag: LoopLag
    turns: ReadTurns | None = None
    ota: OtaService | None = None
    automations: AutomationStats | None = None
    outbox: OutboxStats | None = None
    webhooks: Webhooks | None = None
    events: EventsStats | None = None
    platform: Platform | None = None
    provision: ProvisionStats | None = None


class BlynkCollector(Collector):
    """Reads the server's counters at scrape time."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        src = self.sources
        yield GaugeMetricFamily("blynk_sessions_online", "Devices with a live session", value=len(src.hub))
        yield from _hardware(src.hardware, src.connections_open())
        d = src.domain
        yield CounterMetricFamily("blynk_pin_writes", "Pin values stored", value=d.writes)
        yield CounterMetricFamily(
            "blynk_pin_writes_invalid", "Pin writes rejected by a datastream", value=d.invalid_writes
        )
        yield CounterMetricFamily("blynk_events_logged", "Events logged", value=d.events)
        yield CounterMetricFamily(
            "blynk_events_rejected", "Events rejected (limits, undeclared codes)", value=d.events_rejected
        )
        yield CounterMetricFamily(
            "blynk_events_undeclared", "Events refused: a code the template does not declare", value=d.events_undeclared
        )
        yield CounterMetricFamily(
            "blynk_properties_rejected", "Property updates refused (per-device limits)", value=d.properties_rejected
        )
        yield CounterMetricFamily(
            "blynk_meta_rejected", "Metadata updates refused (per-device limits)", value=d.meta_rejected
        )
        yield GaugeMetricFamily(
            "blynk_info_cache_bytes", "Estimated bytes of shared device info messages", value=d.info_cache_bytes
        )
        yield GaugeMetricFamily(
            "blynk_info_cache_entries", "Distinct device info messages shared", value=d.info_cache_entries
        )
        yield CounterMetricFamily(
            "blynk_http_writes_delivered",
            "HTTP/admin pin writes delivered to a live device",
            value=d.http_writes_delivered,
        )
        yield from _store(src.store)
        if src.retention is not None:
            yield from _retention(src.retention)
        yield from _http(src.http)
        if src.ota is not None:
            yield from _ota(src.ota)
        if src.automations is not None:
            yield from automation_metrics(src.automations)
        if src.outbox is not None:
            yield from _outbox(src.outbox)
        if src.webhooks is not None:
            yield from _webhooks(src.webhooks)
        if src.events is not None:
            yield from event_metrics(src.events)
        if src.platform is not None:
            yield from platform_metrics(src.platform)
        if src.provision is not None:
            yield from provision_metrics(src.provision)
        yield GaugeMetricFamily(
            "blynk_event_loop_lag_seconds", "Lateness of the last periodic timer", value=src.lag.last
        )
        yield GaugeMetricFamily(
            "blynk_event_loop_lag_max_seconds", "Largest timer lateness since start", value=src.lag.max
        )
        turns = HistogramMetricFamily(
            "blynk_loop_turn_seconds",
            "Event-loop turns, one sampled at each lag tick: its work (I/O callbacks, timers, callbacks)",
        )
        turns.add_metric([], _cumulative(TURN_BUCKETS, src.lag.turn_counts), src.lag.turn_seconds)
        yield turns
        if src.turns is not None:
            yield from _turns(src.turns)


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, int]]:
    """A histogram's buckets for prometheus-client: per-bucket counts (the last one over every bound)
    as cumulative counts by ``le``."""
    cumulative, buckets = 0, []
    for bound, n in zip((*bounds, float("inf")), counts, strict=True):
        cumulative += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return buckets


def _turns(t: ReadTurns) -> Iterator[Metric]:
    """The turn budget: reads deferred to a later loop turn."""
    b = t.budget
    yield GaugeMetricFamily(
        "blynk_turn_budget_frames", "Frames of device telemetry per loop turn (0: no limit)", value=b.limit
    )
    yield CounterMetricFamily(
        "blynk_reads_deferred",
        "Device reads kept for a later loop turn (the turn budget was spent)",
        value=b.deferred_reads,
    )
    yield CounterMetricFamily(
        "blynk_turns_budget_spent", "Loop turns that spent the whole turn budget", value=b.exhausted_turns
    )
    yield GaugeMetricFamily(
        "blynk_reads_deferred_waiting", "Devices whose read waits for a later loop turn", value=len(t.deferred)
    )


def _ota(ota: OtaService) -> Iterator[Metric]:
    """The OTA module's families; their failure must not fail the whole scrape."""
    try:
        families = list(ota_metrics(ota))
    except Exception:
        log.exception("ota metrics failed")
        return
    yield from families


def _webhooks(webhooks: Webhooks) -> Iterator[Metric]:
    """The per-webhook families; their failure must not fail the whole scrape."""
    try:
        families = list(webhook_metrics(webhooks))
    except Exception:
        log.exception("webhook metrics failed")
        return
    yield from families


def _hardware(s, sessions: int) -> Iterator[Metric]:
    yield GaugeMetricFamily("blynk_connections_open", "Open device connections (logged in or not)", value=sessions)
    yield CounterMetricFamily("blynk_connections", "Device connections accepted", value=s.connections)
    logins = CounterMetricFamily("blynk_logins", "Login attempts by result", labels=["result"])
    for result, n in s.logins.items():
        logins.add_metric([result], n)
    yield logins
    for name, counts, doc in (
        ("blynk_messages_in", s.messages_in, "Frames received from devices by command"),
        ("blynk_messages_out", s.messages_out, "Frames sent to devices by command"),
    ):
        family = CounterMetricFamily(name, doc, labels=["command"])
        for code, n in enumerate(counts):
            if n:
                family.add_metric([COMMAND_NAMES.get(code, str(code))], n)
        yield family
    yield CounterMetricFamily("blynk_received_bytes", "Bytes received on device connections", value=s.bytes_in)
    yield CounterMetricFamily("blynk_sent_bytes", "Bytes sent on device connections", value=s.bytes_out)
    yield CounterMetricFamily("blynk_flood_pauses", "Times flood control paused reading a device", value=s.flood_pauses)
    yield CounterMetricFamily("blynk_quota_limit_sent", "QUOTA_LIMIT responses sent", value=s.quota_sent)
    yield CounterMetricFamily(
        "blynk_dropped_oversize_frames",
        "Server frames dropped for exceeding the device's buff-in",
        value=s.dropped_oversize,
    )
    yield CounterMetricFamily(
        "blynk_oversize_frames_received",
        "Device frames over the size limit (connection closed)",
        value=s.oversize_frames_in,
    )
    yield CounterMetricFamily("blynk_idle_timeouts", "Sessions closed for read idleness", value=s.idle_timeouts)
    yield CounterMetricFamily("blynk_sessions_replaced", "Sessions replaced by a newer login", value=s.replaced)
    yield GaugeMetricFamily("blynk_connections_pending", "Device connections waiting for login", value=s.pending_logins)
    refused = CounterMetricFamily(
        "blynk_connections_refused",
        "Device connections closed at accept, unanswered: over a pending-login cap or an IP's failed-login budget",
        labels=["reason"],
    )
    for reason, n in s.refused.items():
        refused.add_metric([reason], n)
    yield refused
    yield GaugeMetricFamily(
        "blynk_login_budget_ips", "IPs whose failed-login budget is being refilled", value=s.login_budget_ips
    )
    yield CounterMetricFamily(
        "blynk_write_pauses",
        "Times a device was not read: its unsent output passed the high mark",
        value=s.write_pauses,
    )
    yield CounterMetricFamily(
        "blynk_sessions_closed_slow_reader",
        "Devices closed for not reading: unsent output over the cap, or blocked longer than their timeout",
        value=s.slow_reader_closes,
    )


def _store(store) -> Iterator[Metric]:
    f = store.stats
    yield GaugeMetricFamily(
        "blynk_store_pending_rows", "Write-behind queue depth (rows not yet flushed)", value=store.pending()
    )
    yield SummaryMetricFamily(
        "blynk_store_flush_rows", "Rows per write-behind flush batch", count_value=f.batches, sum_value=f.rows
    )
    yield SummaryMetricFamily(
        "blynk_store_flush_duration_seconds",
        "Write-behind flush latency",
        count_value=f.batches,
        sum_value=f.seconds_total,
    )
    yield GaugeMetricFamily("blynk_store_last_flush_rows", "Rows in the last flush", value=f.last_batch_rows)
    yield GaugeMetricFamily("blynk_store_last_flush_seconds", "Duration of the last flush", value=f.last_seconds)
    yield CounterMetricFamily("blynk_store_flush_errors", "Failed flushes (rows kept for the next)", value=f.errors)
    yield CounterMetricFamily(
        "blynk_store_rows_rejected", "Rows dropped because the database cannot hold them", value=f.rows_rejected
    )
    yield CounterMetricFamily(
        "blynk_store_rows_dropped", "Rows dropped because failing flushes kept too many", value=f.rows_dropped
    )


def _outbox(o: OutboxStats) -> Iterator[Metric]:
    yield CounterMetricFamily("blynk_outbox_enqueued", "Deliveries (e-mails, webhook calls) queued", value=o.enqueued)
    yield CounterMetricFamily("blynk_outbox_delivered", "Deliveries done", value=o.delivered)
    yield CounterMetricFamily("blynk_outbox_retried", "Failed delivery attempts scheduled again", value=o.retried)
    yield CounterMetricFamily(
        "blynk_outbox_gave_up", "Deliveries given up (permanent failure or attempts exhausted)", value=o.gave_up
    )
    yield CounterMetricFamily("blynk_outbox_dropped", "Queued deliveries dropped: the queue was full", value=o.dropped)
    yield GaugeMetricFamily("blynk_outbox_depth", "Deliveries queued, in flight included", value=o.depth)


def _retention(r) -> Iterator[Metric]:
    deleted = CounterMetricFamily("blynk_retention_deleted_rows", "Rows deleted by retention", labels=["table"])
    deleted.add_metric(["history"], r.history_rows)
    deleted.add_metric(["events"], r.event_rows)
    yield deleted
    yield CounterMetricFamily("blynk_retention_runs", "Retention passes completed", value=r.runs)
    yield CounterMetricFamily("blynk_retention_seconds", "Time spent in retention passes", value=r.seconds_total)
    yield GaugeMetricFamily(
        "blynk_retention_longest_transaction_seconds",
        "Longest retention DELETE transaction (the write lock held)",
        value=r.longest_transaction_seconds,
    )
    yield CounterMetricFamily("blynk_retention_errors", "Retention passes that failed", value=r.errors)


def _http(h: HttpStats) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        "blynk_http_requests", "HTTP requests by app, route and status", labels=["app", "route", "method", "status"]
    )
    for (app, route, method, status), n in list(h.requests.items()):
        requests.add_metric([app, route, method, str(status)], n)
    yield requests
    latency = HistogramMetricFamily(
        "blynk_http_request_duration_seconds", "HTTP request latency by route", labels=["app", "route"]
    )
    for (app, route), (counts, total) in list(h.latency.items()):
        latency.add_metric([app, route], _cumulative(HTTP_BUCKETS, counts), total)
    yield latency
    yield GaugeMetricFamily(
        "blynk_http_connections_open", "HTTP connections open on the device port", value=h.connections_open
    )
    yield CounterMetricFamily(
        "blynk_http_connections_refused",
        "HTTP connections refused with 429: over the per-IP limit",
        value=h.connections_refused,
    )
    yield CounterMetricFamily(
        "blynk_http_header_timeouts",
        "HTTP connections closed: request headers not sent in time",
        value=h.header_timeouts,
    )
    yield CounterMetricFamily(
        "blynk_http_body_timeouts", "HTTP connections closed: request body sent too slowly", value=h.body_timeouts
    )
    yield CounterMetricFamily(
        "blynk_http_bad_requests", "HTTP requests that could not be parsed (4xx, closed)", value=h.bad_requests
    )
    yield CounterMetricFamily(
        "blynk_http_throttled", "Device API requests answered 429: over the per-device rate", value=h.throttled
    )
    yield CounterMetricFamily(
        "blynk_http_short_path",
        "Device API update requests answered by the short path, not aiohttp (also in blynk_http_requests)",
        value=h.short_path,
    )


def build_registry(sources: Sources) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BlynkCollector(sources))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
