"""Message bodies (protocol.body): fields, HARDWARE, pins, info, and the other device messages."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import body as B
from protocol.body import BodyError, Pin

# --- fields -------------------------------------------------------------------------------


def test_split_and_join_fields():
    assert B.split_fields(b"") == []
    assert B.split_fields(b"a") == [b"a"]
    assert B.split_fields(b"a\0\0b\0") == [b"a", b"", b"b", b""]
    assert B.join_fields("vw", 5, 1.5, True, b"\xff\x00x", bytearray(b"y")) == b"vw\x005\x001.5\x001\x00\xff\x00x\x00y"
    assert B.join_fields() == b""
    with pytest.raises(TypeError):
        B.join_fields(object())


@given(st.lists(st.binary().filter(lambda b: b"\0" not in b), min_size=1))
def test_binary_fields_round_trip(fields):
    assert B.split_fields(B.join_fields(*fields)) == (fields if fields != [b""] else [])


def test_binary_multi_value_tail_survives():
    """virtualWriteBinary / multi-value writes: the tail after the pin is kept whole, NULs and 0xff included."""
    tail = b"\xff\xfe\x00\x00\x01binary\x00\xff"
    op = B.parse_hardware(b"vw\x0010\x00" + tail)
    assert op.value == tail
    assert op.values == tail.split(b"\0")
    assert B.hardware_write_raw(op.pin, op.value) == b"vw\x0010\x00" + tail


# --- HARDWARE -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "op", "pin", "value"),
    [
        (b"vw\x005\x001\x00two\x003.5000000", "vw", Pin("v", 5), b"1\x00two\x003.5000000"),
        (b"vw\x000\x0010", "vw", Pin("v", 0), b"10"),
        (b"vr\x005", "vr", Pin("v", 5), b""),
        (b"vr\x00127\x00", "vr", Pin("v", 127), b""),
        (b"dw\x0013\x001", "dw", Pin("d", 13), b"1"),
        (b"dr\x003", "dr", Pin("d", 3), b""),
        (b"aw\x00A0\x00512", "aw", Pin("a", 0), b"512"),
        (b"aw\x004\x00255", "aw", Pin("a", 4), b"255"),
        (b"ar\x00A0", "ar", Pin("a", 0), b""),
        (b"Vw\x00255\x00x", "vw", Pin("v", 255), b"x"),
    ],
)
def test_parse_hardware(body, op, pin, value):
    parsed = B.parse_hardware(body)
    assert (parsed.op, parsed.pin, parsed.value) == (op, pin, value)
    assert parsed.is_write == (op[1] == "w")


def test_parse_hardware_multi_value():
    op = B.parse_hardware(b"vw\x005\x001\x00two\x003.5")
    assert op.values == [b"1", b"two", b"3.5"]
    assert B.hardware_write(Pin("v", 5), 1, "two", 3.5) == b"vw\x005\x001\x00two\x003.5"


def test_parse_pin_mode():
    op = B.parse_hardware(b"pm\x001\x00out\x002\x00in\x00A0\x00pu")
    assert op.op == "pm" and op.pin is None
    assert op.modes == (("1", "out"), ("2", "in"), ("A0", "pu"))
    assert B.parse_hardware(b"pm\x001\x00out\x00").modes == (("1", "out"),)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"vw",
        b"vw\x00",  # shorter than 4 bytes
        b"vw\x005",  # write without a value
        b"vw\x005\x00",  # empty value (the legacy server rejects it too)
        b"xw\x005\x001",
        b"vx\x005\x001",
        b"VW\x005\x001",
        b"vww\x005\x001",
        b"vm\x005\x001",
        b"pw\x005\x001",  # not a pin kind
        b"pr\x005",
        b"pm\x001",  # pm needs pairs
        b"pm\x001\x00out\x002",
        b"pm\x00\xff\x00out",  # not text
        b"vw\x00256\x001",
        b"vw\x00-1\x001",
        b"vw\x00x\x001",
        b"vr\x00\x00",
        b"vw\x00\x001",
    ],
)
def test_parse_hardware_malformed(body):
    with pytest.raises(BodyError):
        B.parse_hardware(body)


# --- pins -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pin"),
    [
        ("V5", Pin("v", 5)),
        ("v5", Pin("v", 5)),
        ("5", Pin("v", 5)),
        (b"5", Pin("v", 5)),
        ("A0", Pin("a", 0)),
        ("d3", Pin("d", 3)),
        ("D13", Pin("d", 13)),
        (" 7 ", Pin("v", 7)),
        ("V255", Pin("v", 255)),
        ("007", Pin("v", 7)),
    ],
)
def test_parse_pin(text, pin):
    assert B.parse_pin(text) == pin


def test_parse_pin_default_kind_and_names():
    assert B.parse_pin("3", default_kind="d") == Pin("d", 3)
    assert str(Pin("v", 5)) == "V5" and Pin("a", 0).key == "a0"


@pytest.mark.parametrize("text", ["", " ", "V", "v256", "256", "-1", "+5", "x1", "V5.0", "v\u0663", b"\xff5", "5a"])
def test_parse_pin_bad(text):
    with pytest.raises(BodyError):
        B.parse_pin(text)


@pytest.mark.parametrize("text", ["9" * 5000, "V" + "1" * 5000, "0" * 4999 + "256", b"1" * 100_000])
def test_parse_pin_huge_numbers_are_body_errors(text):
    """Python refuses int() of more than 4,300 digits with a ValueError of its own: never reached."""
    with pytest.raises(BodyError):
        B.parse_pin(text)


def test_parse_pin_leading_zeros_of_any_length():
    assert B.parse_pin("v" + "0" * 5000 + "7") == Pin("v", 7)


def test_parse_uint():
    assert B.parse_uint("0", 10) == 0 and B.parse_uint(b"10", 10) == 10 and B.parse_uint("0010", 10) == 10
    assert B.parse_uint("9223372036854775807", 2**63 - 1) == 2**63 - 1
    for bad in ("", "11", "-1", "+1", "1.0", " 1", "\u0661", "9" * 10_000, "9223372036854775808"):
        with pytest.raises(BodyError):
            B.parse_uint(bad, 10 if len(bad) < 5 else 2**63 - 1)


def test_pin_modes_bounded():
    pairs = b"\0".join(b"%d\0out" % (i % 256) for i in range(B.MAX_PIN_MODES))
    assert len(B.parse_hardware(b"pm\0" + pairs).modes) == B.MAX_PIN_MODES
    with pytest.raises(BodyError):
        B.parse_hardware(b"pm\0" + pairs + b"\x001\0in")


# --- HARDWARE_SYNC --------------------------------------------------------------------------


def test_parse_sync():
    assert B.parse_sync(b"") is None
    assert B.parse_sync(b"vr\x001\x002") == [Pin("v", 1), Pin("v", 2)]
    assert B.parse_sync(b"dr\x0013\x00") == [Pin("d", 13)]
    for bad in (b"vr", b"vw\x001", b"\x001", b"vr\x00x", b"vr\x00" + b"9" * 5000):
        with pytest.raises(BodyError):
            B.parse_sync(bad)


def test_parse_sync_names_each_pin_once():
    assert B.parse_sync(b"vr" + b"\x005\x00V5\x0005" * 16_000 + b"\x001") == [Pin("v", 5), Pin("v", 1)]
    distinct = b"\x00".join(b"0" * n + b"5" for n in range(B.MAX_PIN_FIELDS + 1))
    with pytest.raises(BodyError):
        B.parse_sync(b"vr\x00" + distinct)


# --- INTERNAL: info -------------------------------------------------------------------------

OLD_INFO = (
    b"ver\x001.2.0\x00fw\x001.0.1\x00h-beat\x0045\x00buff-in\x001024\x00dev\x00ESP8266\x00cpu\x00ESP8266EX\x00"
    b"con\x00WiFi\x00fw-type\x00TMPLold\x00build\x00Jan  5 2025 10:00:00\x00tmpl\x00TMPLold"
)
NEW_INFO = (
    b"mcu\x001.0.2\x00fw-type\x00TMPLabc\x00build\x00Apr 25 2026 10:00:00\x00blynk\x001.4.0\x00h-beat\x0040\x00"
    b"buff-in\x001024\x00dev\x00ESP32\x00cpu\x00ESP32\x00con\x00WiFi\x00tmpl\x00TMPLabc"
)


def test_parse_info_old_key_set():
    info = B.parse_info(OLD_INFO)
    assert info.as_dict() == {
        "firmware_version": "1.0.1",
        "ncp_version": None,
        "firmware_type": "TMPLold",
        "build": "Jan  5 2025 10:00:00",
        "library_version": "1.2.0",
        "heartbeat": 45,
        "buff_in": 1024,
        "device": "ESP8266",
        "cpu": "ESP8266EX",
        "connection": "WiFi",
        "template_id": "TMPLold",
        "extra": {},
    }


def test_parse_info_new_key_set():
    info = B.parse_info(NEW_INFO)
    assert (info.firmware_version, info.library_version, info.firmware_type) == ("1.0.2", "1.4.0", "TMPLabc")
    assert (info.heartbeat, info.buff_in, info.device, info.cpu, info.connection) == (
        40,
        1024,
        "ESP32",
        "ESP32",
        "WiFi",
    )
    assert (info.build, info.template_id, info.extra) == ("Apr 25 2026 10:00:00", "TMPLabc", {})


def test_parse_info_trailing_nul_conn_unknown_keys_and_ncp():
    info = B.parse_info(b"ncp\x000.9.1\x00ver\x000.6.1\x00conn\x00Socket\x00x-custom\x00yes\x00odd\x00")
    assert info.ncp_version == "0.9.1" and info.library_version == "0.6.1" and info.connection == "Socket"
    assert info.extra == {"x-custom": "yes", "odd": ""}
    assert B.parse_info(OLD_INFO + b"\x00") == B.parse_info(OLD_INFO)


def test_parse_info_newer_keys_win_in_any_order():
    info = B.parse_info(b"fw\x001\x00blynk\x001.3.0\x00mcu\x002\x00ver\x000.1\x00conn\x00Socket\x00con\x00WiFi")
    assert (info.firmware_version, info.library_version, info.connection) == ("2", "1.3.0", "WiFi")


def test_parse_info_bad_numbers_and_binary_values():
    info = B.parse_info(b"h-beat\x00abc\x00buff-in\x00-5\x00dev\x00\xff\xfe")
    assert info.heartbeat is None and info.buff_in is None and info.device == "\ufffd\ufffd"
    assert B.parse_info(b"") == B.DeviceInfo()


@pytest.mark.parametrize(
    ("value", "number"),
    [(b"40", 40), (b"0040", 40), (b"65535", 65535), (b"65536", 65535), (b"9" * 5000, 65535), (b"0", None)],
)
def test_parse_info_numbers_clamped(value, number):
    """h-beat and buff-in of any length: clamped to 1..65535, never int() of a huge digit string."""
    info = B.parse_info(b"h-beat\x00" + value + b"\x00buff-in\x00" + value)
    assert info.heartbeat == number and info.buff_in == number


def test_is_info():
    assert B.is_info(NEW_INFO) and B.is_info(OLD_INFO) and B.is_info(b"fw-type\x00x")
    assert not B.is_info(b"rtc\x00sync") and not B.is_info(b"") and not B.is_info(b"ota\x00http://x")


# --- INTERNAL: sub-commands -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("sub", "args", "body"),
    [
        ("rtc", ["sync"], b"rtc\x00sync"),
        ("rtc", [1767225600], b"rtc\x001767225600"),
        ("utc", ["time", 1767225600123], b"utc\x00time\x001767225600123"),
        ("utc", ["tz", 120, 60], b"utc\x00tz\x00120\x0060"),
        ("meta", ["set", "Hotspot Name", "Blynk ESP32"], b"meta\x00set\x00Hotspot Name\x00Blynk ESP32"),
        ("meta", ["Auth Token", "abc"], b"meta\x00Auth Token\x00abc"),
        ("ota", ["http://h:8080/static/ota/fw.bin"], b"ota\x00http://h:8080/static/ota/fw.bin"),
        ("dbg", ["wifi show"], b"dbg\x00wifi show"),
        ("acon", [], b"acon"),
    ],
)
def test_internal_round_trip(sub, args, body):
    assert B.internal_body(sub, *args) == body
    assert B.parse_internal(body) == (sub, [B.to_bytes(a) for a in args])


def test_ota_body_and_empty_internal():
    assert B.ota_body("https://x/fw.bin") == b"ota\x00https://x/fw.bin"
    with pytest.raises(BodyError):
        B.parse_internal(b"")


# --- PROPERTY, EVENT_LOG, EVENT_CLEAR, GROUP ------------------------------------------------


def test_parse_property_single_and_multi_pin():
    p = B.parse_property(b"1\x00color\x00#D3435C")
    assert (p.pins, p.name, p.values) == ((Pin("v", 1),), "color", (b"#D3435C",))
    p = B.parse_property(b"0\x00labels\x00Item 1\x00Item 2\x00Item 3")
    assert p.values == (b"Item 1", b"Item 2", b"Item 3")
    p = B.parse_property(b"1\x00url\x001\x00https://x/y.png")  # image index + url: values start after the name
    assert (p.name, p.values) == ("url", (b"1", b"https://x/y.png"))
    p = B.parse_property(b"0\x001\x002\x00isDisabled\x00true")
    assert (p.pins, p.name, p.values) == ((Pin("v", 0), Pin("v", 1), Pin("v", 2)), "isDisabled", (b"true",))
    p = B.parse_property(b"1\x00" * 100 + b"V2\x00color\x00red")
    assert p.pins == (Pin("v", 1), Pin("v", 2))
    with pytest.raises(BodyError):
        B.parse_property(b"1\x00" * (B.MAX_PIN_FIELDS + 1) + b"color\x00red")


@pytest.mark.parametrize("body", [b"", b"color\x00x", b"1", b"1\x00", b"1\x00color", b"1\x00color\x00", b"1\x002\x003"])
def test_parse_property_malformed(body):
    with pytest.raises(BodyError):
        B.parse_property(body)


def test_event_log_and_clear():
    assert B.parse_event_log(b"sys_ota\x00OTA started") == ("sys_ota", "OTA started")
    assert B.parse_event_log(b"door_open") == ("door_open", None)
    assert B.parse_event_clear(b"door_open") == ("door_open", False)
    assert B.parse_event_clear(b"door_open\x00all") == ("door_open", True)
    for parse in (B.parse_event_log, B.parse_event_clear):
        for bad in (b"", b"\x00desc"):
            with pytest.raises(BodyError):
                parse(bad)


def test_group():
    assert B.parse_group(b"b") == ("begin", None)
    assert B.parse_group(b"t\x001767225600123") == ("begin", 1767225600123)
    assert B.parse_group(b"e") == ("end", None)
    for bad in (b"", b"x", b"t", b"t\x00abc", b"t\x00-1", b"b\x00e", b"t\x000", b"t\x009223372036854775808"):
        with pytest.raises(BodyError):
            B.parse_group(bad)
    with pytest.raises(BodyError):
        B.parse_group(b"t\x00" + b"9" * 5000)
    assert B.parse_group(b"t\x00100", max_ts=100) == ("begin", 100)
    with pytest.raises(BodyError):
        B.parse_group(b"t\x00101", max_ts=100)


# --- BRIDGE, REDIRECT -----------------------------------------------------------------------


def test_bridge_init_and_send():
    assert B.parse_bridge(b"1\x00i\x00" + b"t" * 32) == B.BridgeInit(1, "t" * 32)
    send = B.parse_bridge(b"2\x00vw\x005\x00val\x00two")
    assert send == B.BridgeSend(2, b"vw\x005\x00val\x00two")
    assert B.parse_hardware(send.hardware).values == [b"val", b"two"]
    assert B.parse_bridge(b"V3\x00dw\x001\x001").bridge_pin == 3
    for bad in (b"", b"1", b"1\x00i", b"x\x00i\x00tok"):
        with pytest.raises(BodyError):
            B.parse_bridge(bad)


def test_redirect():
    assert B.redirect_body("blynk.example.com", 8442) == b"blynk.example.com\x008442"
    assert B.parse_redirect(b"blynk.example.com\x008442") == ("blynk.example.com", 8442)
    assert B.parse_redirect(b"host") == ("host", None)
    for bad in (b"", b"\x00443", b"\xff\x00443", b"host\x0065536", b"host\x00" + b"9" * 5000):
        with pytest.raises(BodyError):
            B.parse_redirect(bad)


# --- garbage ----------------------------------------------------------------------------------

PARSERS = [
    B.parse_hardware,
    B.parse_sync,
    B.parse_info,
    B.parse_internal,
    B.parse_property,
    B.parse_event_log,
    B.parse_event_clear,
    B.parse_group,
    B.parse_bridge,
    B.parse_redirect,
]

field_bytes = st.sampled_from([b"vw", b"vr", b"pm", b"dw", b"1", b"V5", b"A0", b"i", b"out", b"", b"\xff", b"256"])
structured = st.lists(st.one_of(field_bytes, st.binary(max_size=5)), max_size=6).map(b"\0".join)


@pytest.mark.parametrize("parse", PARSERS, ids=lambda f: f.__name__)
@settings(max_examples=300, deadline=None)
@given(body=st.one_of(st.binary(max_size=40), structured))
def test_parsers_raise_only_body_errors(parse, body):
    try:
        parse(body)
    except BodyError:
        pass
