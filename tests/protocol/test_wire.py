"""The construct oracle (protocol.wire) itself, and its agreement with protocol.body."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import body as B
from protocol import wire
from protocol.errors import FrameTooLarge


def test_header_and_frames():
    assert wire.Header.parse(b"\x14\x00\x03\x00\x07") == {"command": 20, "msg_id": 3, "length": 7}
    assert wire.build_frame(20, 3, b"vw\x000\x0010") == bytes.fromhex("14 00 03 00 07 76 77 00 30 00 31 30")
    assert wire.build_frame(0, 1, 200) == bytes.fromhex("00 00 01 00 c8")


def test_parse_stream_leftover_and_response_without_body():
    data = wire.build_frame(0, 1, 200) + wire.build_frame(20, 3, b"abc") + b"\x14\x00\x04\x00\x05ab"
    assert wire.parse_stream(data) == ([(0, 1, 200), (20, 3, b"abc")], 7)
    assert wire.parse_stream(b"") == ([], 0)
    assert wire.parse_stream(b"\x00\x00") == ([], 2)


def test_parse_stream_too_large():
    data = wire.build_frame(6, 1) + b"\x14\x00\x02\x00\x0b"
    with pytest.raises(FrameTooLarge) as info:
        wire.parse_stream(data, max_body=10)
    assert (info.value.command, info.value.msg_id, info.value.length, info.value.frames) == (20, 2, 11, [(6, 1, b"")])


def test_body_grammars():
    assert wire.parse_info(b"ver\x000.5.4\x00buff-in\x004096\x00dev\x00js\x00") == [
        (b"ver", b"0.5.4"),
        (b"buff-in", b"4096"),
        (b"dev", b"js"),
    ]
    assert wire.Info.build([(b"ver", b"1"), (b"dev", b"x")]) == b"ver\x001\x00dev\x00x"
    assert wire.parse_body(17, b"rtc\x00sync") == {"sub": b"rtc", "args": [b"sync"]}
    assert wire.parse_body(19, b"1\x00color\x00#fff") == [b"1", b"color", b"#fff"]
    assert wire.parse_hardware(b"pm\x001\x00out\x002\x00in").modes == [(b"1", b"out"), (b"2", b"in")]
    assert wire.Hardware.build({"op": b"vw", "pin": b"5", "value": b"1\x002"}) == b"vw\x005\x001\x002"


ops = st.sampled_from([b"vw", b"vr", b"dw", b"dr", b"aw", b"ar", b"Vw", b"dW", b"xw", b"pm", b"pw"])
pins = st.one_of(st.integers(0, 300).map(lambda n: b"%d" % n), st.sampled_from([b"A0", b"v5", b"d3", b"", b"x"]))
tails = st.one_of(st.just(None), st.binary(max_size=12))


@settings(max_examples=500, deadline=None)
@given(op=ops, pin=pins, tail=tails)
def test_oracle_agrees_with_body_on_hardware(op, pin, tail):
    """Whatever body.parse_hardware accepts, the construct grammar splits the same way."""
    raw = op + b"\0" + pin + (b"" if tail is None else b"\0" + tail)
    try:
        parsed = B.parse_hardware(raw)
    except B.BodyError:
        return
    grammar = wire.parse_hardware(raw)
    assert grammar.op.decode().lower() == parsed.op
    if parsed.op == "pm":
        assert [(p.decode(), m.decode()) for p, m in grammar.modes] == list(parsed.modes)
        return
    assert B.parse_pin(grammar.pin, parsed.op[0]).number == parsed.pin.number
    if parsed.is_write:
        assert grammar.value == parsed.value
    else:
        assert parsed.value == b""  # body.py ignores anything after a read's pin
    # and a write re-encodes byte for byte through both
    if parsed.is_write and op == op.lower() and pin.isdigit() and pin == b"%d" % int(pin):
        assert B.hardware_write_raw(parsed.pin, parsed.value) == wire.Hardware.build(grammar) == raw


@settings(max_examples=300, deadline=None)
@given(pairs=st.lists(st.tuples(st.sampled_from(sorted(B.INFO_KEYS)), st.binary(max_size=8)), max_size=8))
def test_oracle_agrees_with_body_on_info(pairs):
    pairs = [(k, v.replace(b"\0", b"")) for k, v in pairs]
    raw = wire.Info.build(pairs)
    assert wire.parse_info(raw) == (pairs if raw else [])
    info = B.parse_info(raw)
    keys = {k for k, _ in pairs}
    assert (info.device is not None) == (b"dev" in keys)
    assert (info.template_id is not None) == (b"tmpl" in keys)
