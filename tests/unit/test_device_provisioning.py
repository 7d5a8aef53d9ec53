"""The provision-token issue rate: a token bucket on an injected clock (no sleeping)."""

from __future__ import annotations

from blynk_server.device_provisioning import IssueRate


def test_the_bucket_allows_a_minute_at_once_then_refills_at_the_rate():
    now = [100.0]
    rate = IssueRate(3, clock=lambda: now[0])
    assert [rate.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 19.0  # 3 a minute: one every 20 s
    assert rate.take() is False
    now[0] += 1.0
    assert [rate.take(), rate.take()] == [True, False]
    now[0] += 3600.0  # a long pause refills to the burst, not beyond
    assert [rate.take() for _ in range(4)] == [True, True, True, False]


def test_zero_means_no_limit():
    rate = IssueRate(0, clock=lambda: 0.0)
    assert all(rate.take() for _ in range(1000))
