"""The npm client library blynk-library@0.5.4 (Node) against the server, via node_client.js."""

from __future__ import annotations

import time

from protocol import Command


def connect(node_client, token: str, port: int):
    client = node_client(token, port)
    client.wait(lambda e: e["event"] == "connect", 10, "connect")
    return client


def test_login_info_and_write_is_stored(compat, provision, node_client):
    srv, token, _ = provision()
    client = connect(node_client, token, srv.port)
    client.send(op="write", pin=1, value="42")
    client.send(op="write", pin=3, value="from node")
    compat.wait_stored(srv, token, "V1", "42")
    compat.wait_stored(srv, token, "V3", "from node")
    info = compat.device_info(srv, token)
    assert info.get("device") == "js" and info.get("buff_in") == 4096, info
    # Its login was HW_LOGIN (29) id 1 and the info INTERNAL (17) id 2; both answered 200.
    out = client.frames()
    assert [(f["cmd"], f["id"]) for f in out if f["dir"] == "out"][:2] == [(29, 1), (17, 2)]
    answers = {f["id"]: f["len"] for f in out if f["dir"] == "in" and f["cmd"] == 0}
    assert answers.get(1) == 200 and answers.get(2) == 200, answers


def test_receives_a_value_written_for_it(compat, provision, node_client):
    srv, token, sender = provision()
    client = connect(node_client, token, srv.port)
    compat.run_async(compat.bridge_write(srv, token, 1, "57", sender))
    event = client.wait(lambda e: e["event"] == "write" and e["pin"] == 1, 5, "write V1")
    assert event["values"] == ["57"]
    assert [f["body"] for f in client.frames(Command.BRIDGE) if f["dir"] == "in"] == ["vw\x001\x0057"]


def test_sync_virtual_and_sync_all(compat, provision, node_client):
    srv, token, _ = provision()
    client = connect(node_client, token, srv.port)
    client.send(op="write", pin=1, value="33")
    client.send(op="write", pin=2, value="two")
    compat.wait_stored(srv, token, "V2", "two")
    client.send(op="sync", pin=2)
    assert client.wait(lambda e: e["event"] == "write" and e["pin"] == 2, 5, "sync V2")["values"] == ["two"]
    # syncAll: every sync-flagged datastream (V1, V2), not V3 (no sync flag).
    client.send(op="write", pin=3, value="not synced")
    compat.wait_stored(srv, token, "V3", "not synced")
    seen = len(client.events)
    client.send(op="syncAll")
    got = {}
    for pin in (1, 2):
        event = client.wait(lambda e, pin=pin: e["event"] == "write" and e["pin"] == pin, start=seen)
        got[pin] = event["values"]
    assert got == {1: ["33"], 2: ["two"]}
    time.sleep(0.3)
    assert not [e for e in client.events[seen:] if e["event"] == "write" and e["pin"] == 3]


def test_invalid_token_gets_status_9(server, node_client):
    client = node_client("y" * 32, server.port)
    client.wait(lambda e: e["event"] == "error" and e["error"] == "INVALID_TOKEN", 5, "INVALID_TOKEN")
    assert [(f["id"], f["len"]) for f in client.frames(0) if f["dir"] == "in"] == [(1, 9)]


def test_receives_http_api_writes(compat, provision, node_client):
    srv, token, _ = provision()
    client = connect(node_client, token, srv.port)
    compat.http_update(srv, token, "V1", "11")
    compat.http_update(srv, token, "V2", "abc")
    assert client.wait(lambda e: e["event"] == "write" and e["pin"] == 1, 5, "write V1")["values"] == ["11"]
    assert client.wait(lambda e: e["event"] == "write" and e["pin"] == 2, 5, "write V2")["values"] == ["abc"]
