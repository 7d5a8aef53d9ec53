"""The framer, example by example; every test runs against both twins (fixture ``framing``)."""

from __future__ import annotations

import array

import pytest

from protocol import body as B
from protocol.constants import Command, Status
from protocol.errors import FrameTooLarge, ProtocolError

TOKEN32 = b"0123456789abcdef0123456789ABCDEF"
BUILD = b"Apr 25 2026 10:00:00"  # __DATE__ " " __TIME__ is always 20 characters

# Captured bytes of the real clients (reference clients.md, protocol.md §4.3).
CPP_140_LOGIN = bytes.fromhex("1d 00 01 00 20") + TOKEN32
CPP_140_INFO_BODY = (
    b"ver\x001.4.0\x00h-beat\x0040\x00buff-in\x004096\x00dev\x00Linux\x00fw-type\x00TMPL00000000\x00"
    b"fw\x000.1.0\x00build\x00" + BUILD + b"\x00conn\x00Socket\x00tmpl\x00TMPL00000000\x00"
)
CPP_140_INFO = bytes.fromhex("11 00 02 00 82") + CPP_140_INFO_BODY
CPP_061_INFO_BODY = (
    b"ver\x000.6.1\x00h-beat\x0010\x00buff-in\x004096\x00dev\x00Linux\x00build\x00"
    + BUILD
    + (b"\x00conn\x00Socket\x00")
)
CPP_061_INFO = bytes.fromhex("11 00 02 00 52") + CPP_061_INFO_BODY
BLYNKLIB_LOGIN = bytes.fromhex("02 00 01 00 0d") + b"tok0123456789"
BLYNKLIB_INFO = bytes.fromhex("11 00 02 00 2b") + b"ver\x000.2.6\x00buff-in\x001024\x00h-beat\x0010\x00dev\x00python"
BLYNKPY_LOGIN = bytes.fromhex("1d 00 01 00 0d") + b"tok0123456789"
BLYNKPY_INFO = bytes.fromhex("11 00 02 00 2b") + b"ver\x000.2.0\x00h-beat\x0010\x00buff-in\x001024\x00dev\x00python"
NODE_LOGIN = bytes.fromhex("1d 00 01 00 09") + b"tok012345"
NODE_INFO = bytes.fromhex("11 00 02 00 1d") + b"ver\x000.5.4\x00buff-in\x004096\x00dev\x00js"
CPP_VW = bytes.fromhex("14 00 03 00 07 76 77 00 30 00 31 30")
LOGIN_OK = bytes.fromhex("00 00 01 00 c8")
CPP_PING = bytes.fromhex("06 00 07 00 00")

GOLDEN = [
    ("cpp-1.4.0 login", CPP_140_LOGIN, (Command.HW_LOGIN, 1, TOKEN32)),
    ("cpp-1.4.0 info", CPP_140_INFO, (Command.INTERNAL, 2, CPP_140_INFO_BODY)),
    ("cpp-0.6.1 info", CPP_061_INFO, (Command.INTERNAL, 2, CPP_061_INFO_BODY)),
    ("blynklib login", BLYNKLIB_LOGIN, (Command.LOGIN, 1, b"tok0123456789")),
    ("blynklib info", BLYNKLIB_INFO, (Command.INTERNAL, 2, BLYNKLIB_INFO[5:])),
    ("blynk-library-python login", BLYNKPY_LOGIN, (Command.HW_LOGIN, 1, b"tok0123456789")),
    ("blynk-library-python info", BLYNKPY_INFO, (Command.INTERNAL, 2, BLYNKPY_INFO[5:])),
    ("node login", NODE_LOGIN, (Command.HW_LOGIN, 1, b"tok012345")),
    ("node info", NODE_INFO, (Command.INTERNAL, 2, NODE_INFO[5:])),
    ("cpp vw", CPP_VW, (Command.HARDWARE, 3, b"vw\x000\x0010")),
    ("login ok", LOGIN_OK, (Command.RESPONSE, 1, Status.SUCCESS)),
    ("cpp ping", CPP_PING, (Command.PING, 7, b"")),
]


@pytest.mark.parametrize(("name", "wire", "frame"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_decode_and_reencode(framing, name, wire, frame):
    assert framing.Decoder().feed(wire) == [frame]
    command, msg_id, payload = frame
    if command == Command.RESPONSE:
        assert framing.encode_response(msg_id, payload) == wire
    else:
        assert framing.encode_frame(command, msg_id, payload) == wire


def test_golden_lengths_match_the_captures():
    """The captured length fields (130, 82, 43, 43, 29) are the real bodies' lengths."""
    assert len(CPP_140_INFO_BODY) == 130
    assert len(CPP_061_INFO_BODY) == 82
    assert len(BLYNKLIB_INFO) - 5 == len(BLYNKPY_INFO) - 5 == 0x2B
    assert len(NODE_INFO) - 5 == 0x1D


def test_golden_login_session_in_one_chunk_and_bytewise(framing):
    stream = CPP_140_LOGIN + LOGIN_OK + CPP_140_INFO + CPP_VW + CPP_PING
    expected = [g[2] for g in GOLDEN if g[1] in (CPP_140_LOGIN, LOGIN_OK, CPP_140_INFO, CPP_VW, CPP_PING)]
    expected.sort(key=lambda f: stream.index(_encode(framing, f)))
    assert framing.Decoder().feed(stream) == expected
    d = framing.Decoder()
    got = []
    for i in range(len(stream)):
        got += d.feed(stream[i : i + 1])
    assert got == expected
    assert d.buffered == 0


def _encode(framing, frame):
    command, msg_id, payload = frame
    return framing.encode_response(msg_id, payload) if command == 0 else framing.encode_frame(command, msg_id, payload)


@pytest.mark.parametrize(
    ("wire", "info"),
    [
        (CPP_140_INFO, dict(library_version="1.4.0", firmware_version="0.1.0", firmware_type="TMPL00000000")),
        (CPP_061_INFO, dict(library_version="0.6.1", firmware_version=None, firmware_type=None)),
        (BLYNKLIB_INFO, dict(library_version="0.2.6", firmware_version=None, device="python", heartbeat=10)),
        (BLYNKPY_INFO, dict(library_version="0.2.0", buff_in=1024, heartbeat=10, device="python")),
        (NODE_INFO, dict(library_version="0.5.4", buff_in=4096, heartbeat=None, device="js")),
    ],
)
def test_golden_info_bodies_parse(framing, wire, info):
    [(command, _, payload)] = framing.Decoder().feed(wire)
    assert command == Command.INTERNAL
    assert B.is_info(payload)
    parsed = B.parse_info(payload)
    for key, value in info.items():
        assert getattr(parsed, key) == value, key
    assert parsed.extra == {}


def test_cpp_140_info_fields(framing):
    [(_, _, payload)] = framing.Decoder().feed(CPP_140_INFO)
    info = B.parse_info(payload)
    assert info.heartbeat == 40 and info.buff_in == 4096 and info.device == "Linux"
    assert info.build == BUILD.decode() and info.connection == "Socket" and info.template_id == "TMPL00000000"


# --- splitting and coalescing ---------------------------------------------------------------


def test_header_split_from_body(framing):
    """C++ 0.6.1 on Linux writes header and body in two write() calls: two TCP segments."""
    d = framing.Decoder()
    assert d.feed(CPP_VW[:5]) == []
    assert d.buffered == 5
    assert d.feed(CPP_VW[5:]) == [(20, 3, b"vw\x000\x0010")]
    assert d.buffered == 0


@pytest.mark.parametrize("cut", range(1, len(CPP_140_INFO)))
def test_every_cut_point(framing, cut):
    d = framing.Decoder()
    frames = d.feed(CPP_140_INFO[:cut]) + d.feed(CPP_140_INFO[cut:])
    assert frames == [(17, 2, CPP_140_INFO_BODY)]
    assert d.buffered == 0


def test_one_byte_at_a_time(framing):
    d = framing.Decoder()
    stream = NODE_LOGIN + NODE_INFO + LOGIN_OK + CPP_VW
    frames = []
    for b in stream:
        frames += d.feed(bytes([b]))
        assert d.buffered < 5 + 0xFFFF
    assert frames == framing.Decoder().feed(stream)
    assert [f[0] for f in frames] == [29, 17, 0, 20]


def test_hundreds_of_frames_in_one_chunk(framing):
    frames = [(20, i, b"vw\x00%d\x00%d" % (i % 256, i)) for i in range(1, 501)]
    frames[100:100] = [(0, 4242, 200)] * 10
    stream = b"".join(_encode(framing, f) for f in frames)
    d = framing.Decoder()
    assert d.feed(stream + CPP_VW[:7]) == frames
    assert d.buffered == 7
    assert d.feed(CPP_VW[7:]) == [(20, 3, b"vw\x000\x0010")]


def test_response_has_no_body(framing):
    """A RESPONSE's length field is a status: the bytes after it are the next frame."""
    d = framing.Decoder()
    assert d.feed(bytes.fromhex("00 00 05 00 c8") + CPP_PING) == [(0, 5, 200), (6, 7, b"")]
    # status 65535 would be an impossible length for max_body=0, yet it is no error
    assert framing.Decoder(max_body=0).feed(bytes.fromhex("00 ff ff ff ff")) == [(0, 65535, 65535)]


def test_blynklib_malformed_ping_reply_desyncs_like_any_strict_parser(framing):
    """blynklib answers a PING with a RESPONSE carrying a 3-byte body "200" (clients.md)."""
    d = framing.Decoder()
    assert d.feed(bytes.fromhex("00 00 05 00 03") + b"200") == [(0, 5, 3)]
    assert d.buffered == 3


def test_empty_body_and_empty_chunk(framing):
    d = framing.Decoder()
    assert d.feed(b"") == []
    assert d.feed(bytes.fromhex("06 00 01 00 00")) == [(6, 1, b"")]
    assert d.feed(b"") == []
    d.feed(b"\x14\x00")
    assert d.feed(b"") == []
    assert d.buffered == 2


def test_msg_id_zero_is_decoded_not_judged(framing):
    """The framer reports msg_id 0; the session decides what to do with it."""
    assert framing.Decoder().feed(b"\x06\x00\x00\x00\x00") == [(6, 0, b"")]


@pytest.mark.parametrize(
    "kind", [bytes, bytearray, memoryview, lambda b: memoryview(bytearray(b)), lambda b: array.array("B", b)]
)
def test_accepts_any_bytes_like(framing, kind):
    d = framing.Decoder()
    stream = CPP_VW + LOGIN_OK + CPP_VW[:4]
    assert d.feed(kind(stream)) == [(20, 3, b"vw\x000\x0010"), (0, 1, 200)]
    assert d.feed(kind(CPP_VW[4:])) == [(20, 3, b"vw\x000\x0010")]
    payload = framing.Decoder().feed(kind(CPP_VW))[0][2]
    assert type(payload) is bytes


def test_non_contiguous_memoryview(framing):
    doubled = bytes(b for b in CPP_VW for _ in (0, 1))
    assert framing.Decoder().feed(memoryview(doubled)[::2]) == [(20, 3, b"vw\x000\x0010")]


@pytest.mark.parametrize("bad", [5, "text", None, [20, 0, 1, 0, 0], 1.5])
def test_refuses_what_is_not_bytes_like(framing, bad):
    with pytest.raises(TypeError):
        framing.Decoder().feed(bad)


def test_payload_does_not_alias_a_mutable_input(framing):
    data = bytearray(CPP_VW)
    [(_, _, payload)] = framing.Decoder().feed(data)
    data[5:] = b"xxxxxxx"
    assert payload == b"vw\x000\x0010"


def test_reset_drops_partial_frame(framing):
    d = framing.Decoder()
    d.feed(CPP_140_INFO[:40])
    assert d.buffered == 40
    d.reset()
    assert d.buffered == 0
    assert d.feed(CPP_VW) == [(20, 3, b"vw\x000\x0010")]


def test_frame_types_are_plain(framing):
    [(c, m, p), (rc, rm, rp)] = framing.Decoder().feed(CPP_VW + LOGIN_OK)
    assert (type(c), type(m), type(p), type(rc), type(rm), type(rp)) == (int, int, bytes, int, int, int)


def test_max_wire_body_frame(framing):
    big = bytes(range(256)) * 255 + bytes(255)  # 65535 bytes
    wire = framing.encode_frame(20, 9, big)
    assert len(wire) == 5 + 65535
    d = framing.Decoder()
    assert d.feed(wire[:30000]) == []
    assert d.buffered == 30000
    assert d.feed(wire[30000:] + CPP_PING) == [(20, 9, big), (6, 7, b"")]


# --- FrameTooLarge --------------------------------------------------------------------------


def test_frame_too_large_carries_header_and_prior_frames(framing):
    d = framing.Decoder(max_body=10)
    assert d.max_body == 10
    big = bytes.fromhex("14 01 02 00 0b") + b"x" * 11
    with pytest.raises(FrameTooLarge) as info:
        d.feed(CPP_VW + LOGIN_OK + big + CPP_PING)
    exc = info.value
    assert isinstance(exc, ProtocolError)
    assert (exc.command, exc.msg_id, exc.length, exc.limit) == (20, 0x0102, 11, 10)
    assert exc.frames == [(20, 3, b"vw\x000\x0010"), (0, 1, 200)]
    assert d.buffered == 0
    assert d.feed(CPP_PING) == [(6, 7, b"")]  # the decoder is usable again (the session closes anyway)


def test_frame_too_large_detected_on_header_alone(framing):
    d = framing.Decoder(max_body=100)
    d.feed(b"\x11\x00")
    with pytest.raises(FrameTooLarge) as info:
        d.feed(b"\x09\x01\x00")  # header complete: length 256, no body yet
    assert (info.value.command, info.value.msg_id, info.value.length, info.value.frames) == (17, 9, 256, [])


def test_frame_too_large_after_a_pending_frame(framing):
    d = framing.Decoder(max_body=20)
    d.feed(CPP_VW[:8])
    with pytest.raises(FrameTooLarge) as info:
        d.feed(CPP_VW[8:] + b"\x14\x00\x04\x00\x15")
    assert info.value.frames == [(20, 3, b"vw\x000\x0010")]
    assert info.value.length == 21


def test_exact_max_body_passes(framing):
    d = framing.Decoder(max_body=7)
    assert d.feed(CPP_VW) == [(20, 3, b"vw\x000\x0010")]
    d = framing.Decoder(max_body=6)
    with pytest.raises(FrameTooLarge):
        d.feed(CPP_VW)


def test_lowered_max_body_applies_to_a_pending_frame(framing):
    d = framing.Decoder()
    d.feed(CPP_VW[:6])
    d.max_body = 3
    with pytest.raises(FrameTooLarge):
        d.feed(CPP_VW[6:])
    assert d.buffered == 0


def test_max_body_zero_allows_empty_bodies_only(framing):
    d = framing.Decoder(max_body=0)
    assert d.feed(CPP_PING + LOGIN_OK) == [(6, 7, b""), (0, 1, 200)]
    with pytest.raises(FrameTooLarge):
        d.feed(CPP_VW)


@pytest.mark.parametrize("bad", [-1, 65536, 10**30])
def test_max_body_out_of_range(framing, bad):
    with pytest.raises(ValueError):
        framing.Decoder(max_body=bad)


def test_max_body_must_be_an_integer(framing):
    with pytest.raises(TypeError):
        framing.Decoder(max_body=10.5)


# --- encoders -------------------------------------------------------------------------------


@pytest.mark.parametrize("msg_id", [0, -1, 65536, 2**64])
def test_encoders_refuse_bad_msg_ids(framing, msg_id):
    with pytest.raises(ValueError, match="msg_id"):
        framing.encode_frame(20, msg_id, b"vw\x001\x001")
    with pytest.raises(ValueError, match="msg_id"):
        framing.encode_response(msg_id, 200)


@pytest.mark.parametrize("command", [-1, 256, 1000])
def test_encode_frame_refuses_bad_commands(framing, command):
    with pytest.raises(ValueError, match="command"):
        framing.encode_frame(command, 1, b"")


def test_encode_frame_refuses_response(framing):
    with pytest.raises(ValueError, match="encode_response"):
        framing.encode_frame(0, 1, b"")


def test_encode_frame_refuses_oversized_body(framing):
    framing.encode_frame(20, 1, bytes(65535))
    with pytest.raises(ValueError, match="65535"):
        framing.encode_frame(20, 1, bytes(65536))


@pytest.mark.parametrize("status", [-1, 65536])
def test_encode_response_refuses_bad_status(framing, status):
    with pytest.raises(ValueError, match="status"):
        framing.encode_response(1, status)


def test_encoders_edges(framing):
    assert framing.encode_frame(255, 65535, b"") == b"\xff\xff\xff\x00\x00"
    assert framing.encode_frame(Command.HARDWARE, 1) == b"\x14\x00\x01\x00\x00"
    assert framing.encode_response(65535, 0) == b"\x00\xff\xff\x00\x00"
    assert framing.encode_response(1, Status.INVALID_TOKEN) == b"\x00\x00\x01\x00\x09"
    assert framing.encode_frame(20, True, b"a") == b"\x14\x00\x01\x00\x01a"


@pytest.mark.parametrize("body", [bytearray(b"vw\x001\x002"), memoryview(b"vw\x001\x002")])
def test_encode_frame_bytes_like_bodies(framing, body):
    assert framing.encode_frame(20, 2, body) == b"\x14\x00\x02\x00\x06vw\x001\x002"


def test_encoders_agree_on_odd_arguments(python_framing, cython_framing):
    """Odd types raise the same errors from both twins."""
    cases = [
        ("encode_frame", (20, 1.0, b"")),
        ("encode_frame", (20.0, 1, b"")),
        ("encode_frame", (20, 1, "text")),
        ("encode_frame", (20, None, b"")),
        ("encode_response", (1, 200.0)),
        ("encode_response", ("1", 200)),
    ]
    for name, args in cases:
        outcomes = []
        for mod in (python_framing, cython_framing):
            try:
                outcomes.append(("ok", getattr(mod, name)(*args)))
            except Exception as exc:  # noqa: BLE001 - comparing whatever each raises
                outcomes.append((type(exc), str(exc)))
        assert outcomes[0] == outcomes[1], (name, args)


def test_same_exception_class(python_framing, cython_framing):
    for mod in (python_framing, cython_framing):
        with pytest.raises(FrameTooLarge):
            mod.Decoder(max_body=1).feed(CPP_VW)


def test_big_and_small_partial_frames_alternate(framing):
    """The partial-frame buffer grows for a big frame, is given back, and grows again."""
    d = framing.Decoder()
    for size in (10_000, 3, 65_535, 0, 5_000, 4_097, 7):
        body = bytes([size % 251]) * size
        wire = framing.encode_frame(20, 1 + size % 65535, body)
        cut = max(2, len(wire) // 3)
        assert d.feed(wire[:2]) == []
        assert d.feed(wire[2:cut]) == []
        assert d.feed(wire[cut:] + CPP_VW[:6]) == [(20, 1 + size % 65535, body)]
        assert d.feed(CPP_VW[6:]) == [(20, 3, b"vw\x000\x0010")]
        assert d.buffered == 0
