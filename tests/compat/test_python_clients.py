"""The PyPI Python client libraries (blynklib 0.2.6 and blynk-library-python 0.2.0) against the server."""

from __future__ import annotations

import pytest

RUNNERS = ("BlynklibRunner", "BlynkLibRunner")


@pytest.fixture(params=RUNNERS, ids=["blynklib", "BlynkLib"])
def runner_cls(request, compat):
    return getattr(compat, request.param)


def connected(compat, runner, timeout: float = 5.0) -> None:
    compat.wait_for(runner.connected, timeout, f"{runner.name} to log in; logs: {runner.logs[-10:]}")


def test_login_info_and_write_is_stored(compat, provision, py_clients, runner_cls):
    srv, token, _ = provision()
    runner = py_clients(runner_cls, token, srv.port)
    connected(compat, runner)
    runner.call(lambda: runner.blynk.virtual_write(1, 42))
    runner.call(lambda: runner.blynk.virtual_write(3, "hello world"))
    compat.wait_stored(srv, token, "V1", "42")
    compat.wait_stored(srv, token, "V3", "hello world")
    # The info message reached the server: the device's info is stored.
    info = compat.device_info(srv, token)
    assert info.get("device") == "python" and info.get("heartbeat") == 10, info
    assert runner.connects == 1, runner.logs
    assert runner.error is None
    if runner.name == "blynklib":
        # It got the RESPONSE 200 to its info (else: "Heartbeat stage timeout" and a reconnect).
        assert any(line.startswith("Heartbeat = 10 sec") for line in runner.logs), runner.logs
        assert not any("[ERROR]" in line for line in runner.logs), runner.logs


def test_receives_a_value_written_for_it(compat, provision, py_clients, runner_cls):
    srv, token, sender = provision()
    runner = py_clients(runner_cls, token, srv.port)
    connected(compat, runner)
    compat.run_async(compat.bridge_write(srv, token, 1, "57", sender))
    assert runner.next_write(1) == ["57"]
    compat.wait_stored(srv, token, "V1", "57")  # the server stored what it forwarded


@pytest.mark.parametrize("pins", [(1,), (1, 2)], ids=["one-pin", "two-pins"])
def test_sync_fires_write_handlers(compat, provision, py_clients, runner_cls, pins):
    srv, token, _ = provision()
    runner = py_clients(runner_cls, token, srv.port)
    connected(compat, runner)
    runner.call(lambda: runner.blynk.virtual_write(1, 33))
    runner.call(lambda: runner.blynk.virtual_write(2, "two"))
    compat.wait_stored(srv, token, "V2", "two")
    sync = runner.blynk.virtual_sync if runner.name == "blynklib" else runner.blynk.sync_virtual
    runner.call(lambda: sync(*pins))
    expected = {1: ["33"], 2: ["two"]}
    for pin in pins:
        assert runner.next_write(pin) == expected[pin]
    assert runner.error is None
    if runner.name == "blynklib":
        assert not any("[ERROR]" in line for line in runner.logs), runner.logs


def test_invalid_token_gets_status_9(compat, server, py_clients, runner_cls):
    runner = py_clients(runner_cls, "x" * 32, server.port)
    if runner.name == "blynklib":
        compat.wait_for(lambda: any("Invalid Auth Token" in line for line in runner.logs), 5, "Invalid Auth Token")
    else:
        compat.wait_for(lambda: (0, 1, (9,)) in runner.received, 5, "RESPONSE 9 to the login")
    assert not runner.connected()


def test_receives_http_api_writes_in_a_row(compat, provision, py_clients, runner_cls):
    """Two HTTP API writes back to back reach the client as two HARDWARE frames; blynklib, which parses
    one frame per recv(), gets both only because the server paces its output to it."""
    srv, token, _ = provision()
    runner = py_clients(runner_cls, token, srv.port)
    connected(compat, runner)
    compat.http_update(srv, token, "V1", "11")
    compat.http_update(srv, token, "V2", "abc")
    assert runner.next_write(1) == ["11"]
    assert runner.next_write(2) == ["abc"]
