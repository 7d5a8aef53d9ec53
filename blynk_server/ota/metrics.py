"""OTA metric families for the /metrics collector, built at scrape time from in-memory state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from blynk_server.app import BlynkServer


def ota_metrics(server: BlynkServer) -> Iterator[Metric]:
    """Devices per (shipment, status) of active shipments, bytes served, downloads in flight."""
    ota = getattr(server, "ota", None)
    if ota is None:
        return
    s = ota.stats
    yield CounterMetricFamily("blynk_ota_bytes_served", "Firmware bytes sent to devices", value=s.bytes_served)
    yield GaugeMetricFamily(
        "blynk_ota_downloads_in_flight", "Firmware downloads running now", value=s.downloads_in_flight
    )
    yield GaugeMetricFamily(
        "blynk_ota_max_send_gap_seconds", "Longest pause between two chunks of a download", value=s.max_send_gap
    )
    downloads = CounterMetricFamily("blynk_ota_downloads", "Firmware downloads by outcome", labels=["outcome"])
    downloads.add_metric(["started"], s.downloads_started)
    downloads.add_metric(["completed"], s.downloads_completed)
    downloads.add_metric(["failed"], s.downloads_failed)
    downloads.add_metric(["refused_limit"], s.limit_refusals)
    downloads.add_metric(["refused"], s.refusals)
    yield downloads
    yield CounterMetricFamily("blynk_ota_commands_sent", "ota commands sent to devices", value=s.commands_sent)
    devices = GaugeMetricFamily(
        "blynk_ota_devices", "Devices of active shipments by status", labels=["shipment", "status"]
    )
    for sid, entries in list(ota.entries.items()):
        ship = ota.shipments.get(sid)
        if ship is None:
            continue
        counts: dict[str, int] = {}
        for e in list(entries.values()):
            if e.status:
                counts[e.status] = counts.get(e.status, 0) + 1
        for status, n in sorted(counts.items()):
            devices.add_metric([ship.name, status], n)
    yield devices
