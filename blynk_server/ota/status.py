"""Per-device OTA statuses, the shipment's condition rules and preferred time windows.

Pure functions and constants only, so the rules can be unit-tested without a server.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from blynk_server.timeutil import zone

STARTED = "Started"
REQUEST_SENT = "Request sent"
FIRMWARE_REQUESTED = "Firmware requested"
FIRMWARE_UPLOADED = "Firmware uploaded"
SUCCESS = "Success"
UPLOAD_FAILURE = "Upload failure"
DOWNLOAD_LIMIT = "Download limit reached"
ROLLBACK = "Rollback"
TYPE_MISMATCH = "Firmware type mismatch"
VERSION_MISMATCH = "Firmware version mismatch"
UPLOADED_TO_MOBILE = "Firmware uploaded to mobile"
AWAITING_USER = "Awaiting user action"

ALL_STATUSES = (
    STARTED,
    REQUEST_SENT,
    FIRMWARE_REQUESTED,
    FIRMWARE_UPLOADED,
    SUCCESS,
    UPLOAD_FAILURE,
    DOWNLOAD_LIMIT,
    ROLLBACK,
    TYPE_MISMATCH,
    VERSION_MISMATCH,
    UPLOADED_TO_MOBILE,
    AWAITING_USER,
)
# After these the device may come back with the new firmware (Success) or the old one.
DELIVERY_STATUSES = frozenset({REQUEST_SENT, FIRMWARE_REQUESTED, FIRMWARE_UPLOADED, UPLOADED_TO_MOBILE, UPLOAD_FAILURE})
DELIVERED = frozenset({FIRMWARE_UPLOADED, UPLOADED_TO_MOBILE})
# A device in one of these is done with this shipment (a version mismatch may change at its next login).
SETTLED = frozenset({SUCCESS, ROLLBACK, TYPE_MISMATCH, VERSION_MISMATCH})
FAILURES = frozenset({UPLOAD_FAILURE, ROLLBACK, DOWNLOAD_LIMIT})

LIVE, PAUSED, FINISHED, CANCELLED = "live", "paused", "finished", "cancelled"
STATES = (LIVE, PAUSED, FINISHED, CANCELLED)

CONDITIONS = ("lower-version", "earlier-build", "different-build", "none")
WINDOWS = {"any": None, "night": (0, 6), "morning": (6, 12), "afternoon": (12, 18), "evening": (18, 24)}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 3600}


def parse_duration(text: str | float | int) -> float:
    """``24h``, ``30m``, ``2s``, ``1d``; a bare number is hours (Blynk.Air's default unit)."""
    if isinstance(text, (int, float)):
        return float(text)
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"bad duration {text!r}: use a number with s, m, h or d (e.g. 24h)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def version_key(version: str | None) -> tuple[tuple[int, str], ...] | None:
    """Lenient semver: every run of digits is a component, so 1.1.1.1, v2.0 and 1.2.3-rc1 compare.

    A component is (digit count, digits) without leading zeros, which orders like the number but
    never calls ``int()``: a device's info may carry a version of thousands of digits."""
    if not version:
        return None
    parts = re.findall(r"\d+", version)
    if not parts:
        return None
    key = [(len(d), d) for d in (p.lstrip("0") for p in parts)]
    while len(key) > 1 and key[-1][0] == 0:
        key.pop()  # 1.2 == 1.2.0
    return tuple(key)


_MONTHS = {
    m: i for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)
}


def build_time(build: str | None) -> datetime | None:
    """``__DATE__ " " __TIME__`` (``Mar  5 2024 10:00:00``, single or double space); None if unparsable."""
    if not build:
        return None
    m = re.match(r"^\s*([A-Za-z]{3})\s+(\d{1,2})\s+(\d{4})(?:\s+(\d{1,2}):(\d{2})(?::(\d{2}))?)?", build)
    if m is None or m.group(1).lower() not in _MONTHS:
        return None
    hh, mm, ss = (int(m.group(i) or 0) for i in (4, 5, 6))
    try:
        return datetime(int(m.group(3)), _MONTHS[m.group(1).lower()], int(m.group(2)), hh, mm, ss)
    except ValueError:
        return None


def normalize_build(build: str | None) -> str:
    return " ".join((build or "").split())


def condition_met(
    condition: str, fw_version: str | None, fw_build: str | None, dev_version: str | None, dev_build: str | None
) -> bool:
    """Whether a device with (dev_version, dev_build) should get firmware (fw_version, fw_build)."""
    if condition == "none":
        return True
    if condition == "lower-version":
        fw, dev = version_key(fw_version), version_key(dev_version)
        if fw is None:
            return False
        return dev is None or dev < fw
    if condition == "earlier-build":
        fw_t, dev_t = build_time(fw_build), build_time(dev_build)
        if fw_t is None:
            return False
        return dev_t is None or dev_t < fw_t
    if condition == "different-build":
        return bool(fw_build) and normalize_build(dev_build) != normalize_build(fw_build)
    raise ValueError(f"unknown condition {condition!r}")


def runs_new_firmware(
    fw_version: str | None, fw_build: str | None, dev_version: str | None, dev_build: str | None
) -> bool:
    """Does the device's report match the shipped image? Version must match; build too when both are known."""
    if version_key(dev_version) != version_key(fw_version) or fw_version is None:
        return False
    return not (fw_build and dev_build) or normalize_build(fw_build) == normalize_build(dev_build)


def in_window(window: str, tz_name: str | None, now: float) -> bool:
    """Is ``now`` (epoch seconds) inside the preferred window, in the device's time zone (UTC if unknown)?"""
    span = WINDOWS.get(window)
    if span is None:
        return True
    try:
        tz = zone(tz_name) if tz_name else UTC
    except Exception:
        tz = UTC
    hour = datetime.fromtimestamp(now, tz).hour
    return span[0] <= hour < span[1]
