"""OTA metric families for the /metrics collector, built at scrape time from the service's memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from blynk_server.ota.service import OtaService


def ota_metrics(ota: OtaService) -> Iterator[Metric]:
    """Devices per (shipment, status) of active shipments, bytes served, downloads in flight."""
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
    for name, status, n in ota.status_counts():
        devices.add_metric([name, status], n)
    yield devices
