"""Heartbeats with all three real clients at once: each pings, the server answers every ping, and the
server itself never pings (blynklib answers a PING with a malformed RESPONSE, BlynkLib crashes on one)."""

from __future__ import annotations

import time

import pytest

from protocol import Command, Status

STAY = 12.5  # > the 10 s heartbeat of every client: each must have pinged at least once


def answered(sent: list, received: list) -> tuple[list, list]:
    """(ids of the PINGs the client sent, ids of those the server answered with 200)."""
    pings = [f[1] for f in sent if f[0] == Command.PING]
    ok = {f[1] for f in received if f[0] == Command.RESPONSE and f[2] in (Status.SUCCESS, (Status.SUCCESS,))}
    return pings, [i for i in pings if i in ok]


@pytest.mark.slow  # about 13 s: it waits for the clients' 10 s heartbeat
def test_all_clients_stay_connected_with_pings_answered(compat, server, unique, py_clients, node_client):
    server.new_template(unique, *compat.TEMPLATE)
    tokens = [server.new_device(unique, f"d{i}") for i in range(3)]
    blynklib = py_clients(compat.BlynklibRunner, tokens[0], server.port)
    blynk_lib = py_clients(compat.BlynkLibRunner, tokens[1], server.port)
    node = None
    try:
        node = node_client(tokens[2], server.port)
    except pytest.skip.Exception:
        pass  # the Python clients are still checked
    for runner in (blynklib, blynk_lib):
        compat.wait_for(runner.connected, 5, f"{runner.name} to log in")
    time.sleep(STAY)

    for runner in (blynklib, blynk_lib):
        assert runner.connected(), runner.logs[-20:]
        assert runner.connects == 1, f"{runner.name} reconnected: {runner.logs[-20:]}"
        assert runner.error is None
        pings, ok = answered(runner.sent, runner.received)
        assert pings and ok == pings, f"{runner.name}: pings {pings}, answered {ok}"
        assert not [f for f in runner.received if f[0] == Command.PING], f"{runner.name} was pinged"
    assert not any("[ERROR]" in line or "timeout" in line for line in blynklib.logs), blynklib.logs

    if node is not None:
        assert not [e for e in node.events if e["event"] in ("disconnect", "error")], node.events[-20:]
        sent = [(f["cmd"], f["id"], f["len"]) for f in node.frames() if f["dir"] == "out"]
        received = [(f["cmd"], f["id"], f["len"]) for f in node.frames() if f["dir"] == "in"]
        pings, ok = answered(sent, received)
        assert pings and ok == pings, f"node: pings {pings}, answered {ok}"
        assert not node.frames(Command.PING) or all(f["dir"] == "out" for f in node.frames(Command.PING))
