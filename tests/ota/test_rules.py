"""The pure OTA rules: lenient versions, build dates, conditions, time windows, durations."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from blynk_server.ota import status as st


def test_versions_are_lenient():
    assert st.version_key("1.1.1.1") > st.version_key("1.1.1")
    assert st.version_key("v2.0") == st.version_key("2.0.0")
    assert st.version_key("1.10.0") > st.version_key("1.9.9")
    assert st.version_key("") is None and st.version_key("abc") is None


def test_conditions():
    assert st.condition_met("lower-version", "1.1.0", None, "1.0.9", None)
    assert not st.condition_met("lower-version", "1.1.0", None, "1.1.0.0", None)
    assert st.condition_met("lower-version", "1.1.1.1", None, "1.1.1", None)
    assert st.condition_met("earlier-build", None, "Mar  5 2024 10:00:00", None, "Mar 04 2024 23:59:59")
    assert not st.condition_met("earlier-build", None, "Mar  5 2024 10:00:00", None, "Mar 05 2024 10:00:00")
    assert st.condition_met("different-build", None, "Mar  5 2024 10:00:00", None, "Mar 5 2024 10:00:01")
    assert not st.condition_met("different-build", None, "Mar  5 2024 10:00:00", None, "Mar 5 2024 10:00:00")
    assert st.condition_met("none", "1.0.0", None, "9.9.9", None)


def test_new_firmware_needs_version_and_known_build():
    assert st.runs_new_firmware("1.1.0", "Mar  5 2024 10:00:00", "1.1", "Mar 5 2024 10:00:00")
    assert not st.runs_new_firmware("1.1.0", "Mar  5 2024 10:00:00", "1.1.0", "Mar 6 2024 10:00:00")
    assert st.runs_new_firmware("1.1.0", None, "1.1.0", "anything")


def test_windows_in_device_time_zone():
    at = datetime(2026, 1, 10, 23, 30, tzinfo=UTC).timestamp()  # 23:30 UTC = 08:30 in Tokyo
    assert st.in_window("evening", None, at) and not st.in_window("morning", None, at)
    assert st.in_window("morning", "Asia/Tokyo", at)
    assert st.in_window("night", "America/New_York", datetime(2026, 1, 10, 8, 0, tzinfo=UTC).timestamp())
    assert st.in_window("any", "Nowhere/Bogus", at)


def test_durations():
    assert st.parse_duration("24h") == 86400 and st.parse_duration("2s") == 2 and st.parse_duration("3") == 10800
    with pytest.raises(ValueError):
        st.parse_duration("soon")


def test_versions_of_any_length():
    """A device may report a version with thousands of digits (past int()'s limit): it still compares."""
    huge = "9" * 5000
    assert st.version_key(huge) > st.version_key("1.0") and st.version_key(f"1.{huge}") > st.version_key("1.9")
    assert (
        st.version_key("007.0") == st.version_key("7")
        and st.condition_met("lower-version", "2.0", None, huge, None) is False
    )
