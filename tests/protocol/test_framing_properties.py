"""Property tests: both framers against the construct oracle (``protocol.wire``) and each other."""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocol import wire
from protocol.errors import FrameTooLarge, ProtocolError

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u16 = st.integers(0, 0xFFFF)
response = st.tuples(st.just(0), u16, u16)
small_body = st.binary(max_size=40)
body = st.one_of(small_body, small_body, st.binary(min_size=200, max_size=3000))
body_frame = st.tuples(st.integers(1, 255), u16, body)
frame = st.one_of(response, body_frame)
frames = st.lists(frame, max_size=40)


def _stream(frame_list) -> bytes:
    return b"".join(wire.build_frame(*f) for f in frame_list)


def _cuts(data: bytes):
    return st.lists(st.integers(0, len(data)), max_size=12).map(sorted)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def _run(framing, chunks, max_body=0xFFFF):
    """Feed the chunks; return (frames, buffered) or ("too large", exc fields, frames so far)."""
    d = framing.Decoder(max_body=max_body)
    out = []
    for chunk in chunks:
        try:
            out += d.feed(chunk)
        except FrameTooLarge as exc:
            return ("too large", exc.command, exc.msg_id, exc.length, exc.limit, out + exc.frames)
        assert d.buffered < 5 + max_body
    return out, d.buffered


def _oracle(data, max_body=0xFFFF):
    try:
        return wire.parse_stream(data, max_body=max_body)
    except FrameTooLarge as exc:
        return ("too large", exc.command, exc.msg_id, exc.length, exc.limit, exc.frames)


@SETTINGS
@given(data=st.data(), frame_list=frames, tail=st.binary(max_size=30))
def test_cut_anywhere_decodes_like_the_oracle(framing, data, frame_list, tail):
    stream = _stream(frame_list) + tail
    cuts = data.draw(_cuts(stream))
    got = _run(framing, _chunks(stream, cuts))
    expected = _oracle(stream)
    assert got == expected
    # and the oracle's frames start with every frame we built
    assert expected[0][: len(frame_list)] == frame_list


@SETTINGS
@given(data=st.data(), frame_list=frames, tail=st.binary(max_size=30), max_body=st.integers(0, 300))
def test_too_large_like_the_oracle(framing, data, frame_list, tail, max_body):
    stream = _stream(frame_list) + tail
    cuts = data.draw(_cuts(stream))
    assert _run(framing, _chunks(stream, cuts), max_body) == _oracle(stream, max_body)


@SETTINGS
@given(frame=frame)
def test_encode_decode_round_trip(framing, frame):
    command, msg_id, payload = frame
    assume(msg_id != 0)
    wire_bytes = framing.encode_response(msg_id, payload) if command == 0 else framing.encode_frame(*frame)
    assert wire_bytes == wire.build_frame(*frame)
    assert framing.Decoder().feed(wire_bytes) == [frame]


@SETTINGS
@given(data=st.data(), garbage=st.binary(max_size=2000), max_body=st.integers(0, 0xFFFF))
def test_garbage_raises_only_protocol_errors(framing, data, garbage, max_body):
    d = framing.Decoder(max_body=max_body)
    for chunk in _chunks(garbage, data.draw(_cuts(garbage))):
        try:
            d.feed(chunk)
        except ProtocolError:
            pass
        assert d.buffered < 5 + max_body


def _trace(framing, chunks, max_body):
    """Everything observable while feeding chunks, continuing after errors."""
    d = framing.Decoder(max_body=max_body)
    trace = []
    for chunk in chunks:
        try:
            trace.append(d.feed(chunk))
        except FrameTooLarge as exc:
            trace.append(("too large", exc.command, exc.msg_id, exc.length, exc.limit, exc.frames, str(exc)))
        trace.append(d.buffered)
    return trace


@settings(max_examples=500, deadline=None)
@given(data=st.data(), garbage=st.binary(max_size=600), max_body=st.sampled_from([0, 1, 5, 16, 255, 0xFFFF]))
def test_twins_identical_on_garbage(python_framing, cython_framing, data, garbage, max_body):
    chunks = _chunks(garbage, data.draw(_cuts(garbage)))
    assert _trace(python_framing, chunks, max_body) == _trace(cython_framing, chunks, max_body)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), frame_list=frames, max_body=st.integers(0, 100))
def test_twins_identical_on_frames_with_bytearray_chunks(python_framing, cython_framing, data, frame_list, max_body):
    stream = _stream(frame_list)
    chunks = [bytearray(c) for c in _chunks(stream, data.draw(_cuts(stream)))]
    assert _trace(python_framing, chunks, max_body) == _trace(cython_framing, chunks, max_body)


big_frame = st.tuples(st.integers(1, 255), u16, st.binary(min_size=4000, max_size=9000))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), frame_list=st.lists(st.one_of(frame, big_frame), max_size=5), tail=st.binary(max_size=30))
def test_big_frames_cut_anywhere_decode_like_the_oracle(framing, data, frame_list, tail):
    stream = _stream(frame_list) + tail
    assert _run(framing, _chunks(stream, data.draw(_cuts(stream)))) == _oracle(stream)
