"""Message bodies: NUL-separated fields kept as bytes, so binary values survive untouched.

Parsers raise ``BodyError`` (a ``ValueError``) with a reason; the server turns it into the status
the reference names (ILLEGAL_COMMAND, ILLEGAL_COMMAND_BODY, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

SEP = b"\0"

# Keys of the INTERNAL info message, old and new sets (reference protocol.md §4.3).
INFO_KEYS = frozenset(
    {
        b"mcu",
        b"ncp",
        b"fw",
        b"fw-type",
        b"ver",
        b"blynk",
        b"build",
        b"h-beat",
        b"buff-in",
        b"dev",
        b"cpu",
        b"con",
        b"conn",
        b"tmpl",
    }
)
INTERNAL_SUBCOMMANDS = frozenset({b"rtc", b"utc", b"meta", b"ota", b"dbg", b"vfs", b"acon", b"adis"})
PIN_KINDS = {"v": "v", "d": "d", "a": "a"}
HARDWARE_OPS = frozenset({"vw", "vr", "dw", "dr", "aw", "ar", "pm"})
MAX_PIN = 255
MAX_PIN_MODES = 3 * (MAX_PIN + 1)  # pin/mode pairs in one ``pm``: one per pin of each kind
MAX_PIN_FIELDS = 3 * (MAX_PIN + 1)  # pin fields a property, distinct ones a sync, may name ("5", "V5", "05")
MAX_INFO_NUMBER = 65535  # h-beat and buff-in are clamped to 1..this (a frame's length is 16 bits)


class BodyError(ValueError):
    """A body that does not follow its command's grammar."""


def to_bytes(value: object) -> bytes:
    """Render one field the way the devices do: bytes as-is, text as UTF-8, numbers as decimal."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, (int, float)):
        return str(value).encode()
    raise TypeError(f"cannot put {type(value).__name__} in a message body")


def join_fields(*fields: object) -> bytes:
    """Join fields with NUL (no trailing NUL, as the C++ library sends)."""
    return SEP.join(to_bytes(f) for f in fields)


def split_fields(body: bytes) -> list[bytes]:
    """Split a body on NUL. An empty body has no fields."""
    return body.split(SEP) if body else []


def parse_uint(text: bytes | str, limit: int) -> int:
    """A decimal integer 0..``limit`` of ASCII digits only; ``BodyError`` otherwise.

    The digits are counted before ``int()`` sees them, so a field of any length costs O(digits of
    ``limit``): Python refuses to convert more than 4,300 digits (a ValueError from deep inside), and
    huge numbers overflow where they meet floats or SQLite's 64-bit integers."""
    s = text.decode("ascii", "replace") if isinstance(text, (bytes, bytearray, memoryview)) else text
    if not s or not s.isascii() or not s.isdigit():
        raise BodyError(f"not a number in 0..{limit}: {s[:24]!r}")
    digits = s.lstrip("0") or "0"  # leading zeros are harmless ("007" is 7)
    if len(digits) > len(str(limit)):
        raise BodyError(f"{s[:24]}... is out of range 0..{limit}")
    n = int(digits)
    if n > limit:
        raise BodyError(f"{n} is out of range 0..{limit}")
    return n


# --- pins ---------------------------------------------------------------------------------


class Pin(NamedTuple):
    """A pin: kind ``v``/``d``/``a`` and a number 0..255."""

    kind: str
    number: int

    def __str__(self) -> str:
        return f"{self.kind.upper()}{self.number}"

    @property
    def key(self) -> str:
        """Lower-case name used as a storage key and in JSON output: ``v5``."""
        return f"{self.kind}{self.number}"


def parse_pin(text: bytes | str, default_kind: str = "v") -> Pin:
    """Parse ``V5``, ``v5``, ``5`` (of ``default_kind``), ``A0``, ``d3`` into a Pin."""
    s = text.decode("ascii", "replace") if isinstance(text, (bytes, bytearray)) else text
    s = s.strip()
    if not s:
        raise BodyError("empty pin")
    kind = default_kind
    if s[0].lower() in PIN_KINDS:
        kind = s[0].lower()
        s = s[1:]
    try:
        return Pin(kind, parse_uint(s, MAX_PIN))
    except BodyError:
        raise BodyError(f"bad pin {s[:24]!r}") from None


# --- HARDWARE (20) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HardwareOp:
    """One HARDWARE body. For writes ``value`` is the whole tail after the pin, NULs included
    (multi-value writes are stored whole). For ``pm`` the pairs are in ``modes``."""

    op: str  # "vw", "vr", "dw", "dr", "aw", "ar", "pm"
    pin: Pin | None
    value: bytes = b""
    modes: tuple[tuple[str, str], ...] = ()

    @property
    def is_write(self) -> bool:
        return self.op[1] == "w"

    @property
    def values(self) -> list[bytes]:
        """The values of a multi-value write."""
        return self.value.split(SEP)


def parse_hardware(body: bytes) -> HardwareOp:
    """Parse a HARDWARE (or forwarded BRIDGE) body."""
    if len(body) < 4:
        raise BodyError("hardware body shorter than 4 bytes")
    parts = body.split(SEP, 2)
    op = parts[0].decode("ascii", "replace")
    if len(op) != 2 or op[0].lower() not in "vdap" or op[1] not in "wrm":
        raise BodyError(f"unknown hardware operation {parts[0]!r}")
    op = op[0].lower() + op[1]
    if op not in HARDWARE_OPS:  # e.g. "pw", "vm"
        raise BodyError(f"unknown hardware operation {parts[0]!r}")
    if op == "pm":
        fields = split_fields(body)[1:]
        if fields and fields[-1] == b"":
            fields.pop()
        if not fields or len(fields) % 2:
            raise BodyError("pm needs pin/mode pairs")
        if len(fields) > 2 * MAX_PIN_MODES:
            raise BodyError(f"pm names more than {MAX_PIN_MODES} pins")
        try:
            modes = tuple((fields[i].decode(), fields[i + 1].decode()) for i in range(0, len(fields), 2))
        except UnicodeDecodeError as exc:
            raise BodyError(f"pm pin/mode is not text: {exc}") from None
        return HardwareOp("pm", None, modes=modes)
    if len(parts) < 2:
        raise BodyError("missing pin")
    pin = parse_pin(parts[1], default_kind=op[0])
    if op[1] == "w":
        if len(parts) < 3 or parts[2] == b"":
            raise BodyError("write without a value")
        return HardwareOp(op, Pin(op[0], pin.number), parts[2])
    return HardwareOp(op, Pin(op[0], pin.number))


def hardware_write(pin: Pin, *values: object) -> bytes:
    """Body of a server→device write: ``vw\\0<pin>\\0<v1>[\\0<v2>…]``."""
    return join_fields(f"{pin.kind}w", pin.number, *values)


def hardware_write_raw(pin: Pin, value: bytes) -> bytes:
    """Body of a write whose (possibly multi-value) tail is already encoded."""
    return f"{pin.kind}w\0{pin.number}\0".encode() + value


def parse_sync(body: bytes) -> list[Pin] | None:
    """HARDWARE_SYNC: ``None`` means sync all; otherwise the listed pins (``vr\\0p1\\0p2``), each once
    in first-named order, so one frame naming a pin 16,000 times is answered with one value."""
    if not body:
        return None
    fields = split_fields(body)
    if fields[-1] == b"":
        fields.pop()
    if len(fields) < 2 or not fields[0]:
        raise BodyError("sync body needs a read operation and at least one pin")
    op = fields[0].decode("ascii", "replace").lower()
    if len(op) != 2 or op[1] != "r" or op[0] not in "vda":
        raise BodyError(f"sync operation {fields[0]!r} is not a read")
    kind = op[0]
    named = dict.fromkeys(fields[1:])  # repeats dropped before any parsing: a 32 KB frame costs ~1 ms
    if len(named) > MAX_PIN_FIELDS:
        raise BodyError(f"sync names more than {MAX_PIN_FIELDS} distinct pins")
    return list(dict.fromkeys(Pin(kind, parse_pin(f, kind).number) for f in named))


# --- INTERNAL (17) ------------------------------------------------------------------------


@dataclass(slots=True)
class DeviceInfo:
    """The device info message (INTERNAL key/value list), old and new key sets alike."""

    firmware_version: str | None = None  # mcu (≥1.3) or fw (≤1.2)
    ncp_version: str | None = None
    firmware_type: str | None = None  # fw-type
    build: str | None = None
    library_version: str | None = None  # blynk (≥1.3) or ver (≤1.2, Python, JS)
    heartbeat: int | None = None  # h-beat, seconds
    buff_in: int | None = None
    device: str | None = None  # dev
    cpu: str | None = None
    connection: str | None = None  # con / conn
    template_id: str | None = None  # tmpl
    extra: dict[str, str] = field(default_factory=dict)  # unknown keys, kept

    def as_dict(self) -> dict[str, object]:
        return {
            "firmware_version": self.firmware_version,
            "ncp_version": self.ncp_version,
            "firmware_type": self.firmware_type,
            "build": self.build,
            "library_version": self.library_version,
            "heartbeat": self.heartbeat,
            "buff_in": self.buff_in,
            "device": self.device,
            "cpu": self.cpu,
            "connection": self.connection,
            "template_id": self.template_id,
            "extra": dict(self.extra),
        }


_INFO_FIELDS = {
    "mcu": "firmware_version",
    "fw": "firmware_version",
    "ncp": "ncp_version",
    "fw-type": "firmware_type",
    "build": "build",
    "blynk": "library_version",
    "ver": "library_version",
    "dev": "device",
    "cpu": "cpu",
    "con": "connection",
    "conn": "connection",
    "tmpl": "template_id",
}


def _info_number(text: str) -> int | None:
    """h-beat or buff-in: digits of any length clamped to 1..MAX_INFO_NUMBER; 0 or not a number is
    None (the setting is left as it was)."""
    s = text.strip()
    if not s.isascii() or not s.isdigit():
        return None
    digits = s.lstrip("0")
    if len(digits) > len(str(MAX_INFO_NUMBER)):  # never int() of a huge digit string
        return MAX_INFO_NUMBER
    return min(int(digits or "0"), MAX_INFO_NUMBER) or None


def is_info(body: bytes) -> bool:
    """Is this INTERNAL body the info message (its first key is an info key)?"""
    return body.split(SEP, 1)[0] in INFO_KEYS


def parse_info(body: bytes) -> DeviceInfo:
    """Parse the info message by key, in any order; a trailing NUL and unknown keys are fine."""
    fields = split_fields(body)
    if fields and fields[-1] == b"":
        fields.pop()
    if len(fields) % 2:
        fields.append(b"")
    info = DeviceInfo()
    for i in range(0, len(fields), 2):
        key = fields[i].decode("utf-8", "replace")
        value = fields[i + 1].decode("utf-8", "replace")
        if key == "h-beat":
            info.heartbeat = _info_number(value)
        elif key == "buff-in":
            info.buff_in = _info_number(value)
        elif key in _INFO_FIELDS:
            attr = _INFO_FIELDS[key]
            # "mcu" wins over "fw", "blynk" over "ver", "con" over "conn": the newer key set.
            if key in ("fw", "ver", "conn") and getattr(info, attr) is not None:
                continue
            setattr(info, attr, value)
        elif key:
            info.extra[key] = value
    return info


def parse_internal(body: bytes) -> tuple[str, list[bytes]]:
    """Split an INTERNAL body into its sub-command and arguments."""
    if not body:
        raise BodyError("empty internal body")
    fields = split_fields(body)
    return fields[0].decode("utf-8", "replace"), fields[1:]


def internal_body(sub: str, *args: object) -> bytes:
    """Body of a server→device INTERNAL message: ``rtc``, ``utc``, ``meta``, ``ota``, ``dbg``."""
    return join_fields(sub, *args)


def ota_body(url: str) -> bytes:
    return internal_body("ota", url)


# --- PROPERTY (19), EVENT_LOG (64), EVENT_CLEAR (65), GROUP (21) -----------------------------


@dataclass(frozen=True, slots=True)
class PropertyUpdate:
    """``setProperty``: one or several pins (leading numeric fields), a name, one or more values."""

    pins: tuple[Pin, ...]
    name: str
    values: tuple[bytes, ...]


def parse_property(body: bytes) -> PropertyUpdate:
    fields = split_fields(body)
    pins: dict[bytes, Pin] = {}  # each distinct field parsed once
    i = 0
    while i < len(fields):
        if i >= MAX_PIN_FIELDS:  # no legitimate property names so many pins; the loop stays short
            raise BodyError(f"property names more than {MAX_PIN_FIELDS} pins")
        if fields[i] not in pins:
            try:
                pins[fields[i]] = parse_pin(fields[i], "v")
            except BodyError:
                break
        i += 1
    if not pins:
        raise BodyError("property body has no pin")
    if i >= len(fields) or not fields[i]:
        raise BodyError("property name missing")
    values = tuple(fields[i + 1 :])
    if not values or values == (b"",):
        raise BodyError("property value missing")
    # Each pin once: the store is written once per pin.
    return PropertyUpdate(tuple(dict.fromkeys(pins.values())), fields[i].decode("utf-8", "replace"), values)


def parse_event_log(body: bytes) -> tuple[str, str | None]:
    """``code[\\0description]``."""
    fields = split_fields(body)
    if not fields or not fields[0]:
        raise BodyError("event code missing")
    description = fields[1].decode("utf-8", "replace") if len(fields) > 1 else None
    return fields[0].decode("utf-8", "replace"), description


def parse_event_clear(body: bytes) -> tuple[str, bool]:
    """``code`` (resolve the latest) or ``code\\0all``."""
    fields = split_fields(body)
    if not fields or not fields[0]:
        raise BodyError("event code missing")
    return fields[0].decode("utf-8", "replace"), len(fields) > 1 and fields[1] == b"all"


def parse_group(body: bytes, max_ts: int = 2**63 - 1) -> tuple[str, int | None]:
    """``b`` → ("begin", None); ``t\\0<ms>`` → ("begin", ms) with 0 < ms <= ``max_ts``; ``e`` → ("end", None)."""
    fields = split_fields(body)
    if fields == [b"b"]:
        return "begin", None
    if fields == [b"e"]:
        return "end", None
    if len(fields) == 2 and fields[0] == b"t":
        ts = parse_uint(fields[1], max_ts)
        if ts > 0:
            return "begin", ts
    raise BodyError(f"bad group body {body[:32]!r}")


# --- BRIDGE (15), REDIRECT (41) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BridgeInit:
    bridge_pin: int
    token: str


@dataclass(frozen=True, slots=True)
class BridgeSend:
    bridge_pin: int
    hardware: bytes  # the forwarded HARDWARE body, e.g. vw\0pin\0value


def parse_bridge(body: bytes) -> BridgeInit | BridgeSend:
    parts = body.split(SEP, 2)
    if len(parts) < 3:
        raise BodyError("bridge body needs at least 3 fields")
    bridge_pin = parse_pin(parts[0], "v").number
    if parts[1] == b"i":
        return BridgeInit(bridge_pin, parts[2].decode("utf-8", "replace").strip())
    return BridgeSend(bridge_pin, body[len(parts[0]) + 1 :])


def redirect_body(host: str, port: int) -> bytes:
    return join_fields(host, port)


def parse_redirect(body: bytes) -> tuple[str, int | None]:
    fields = split_fields(body)
    if not fields or not fields[0]:
        raise BodyError("redirect without a host")
    port = parse_uint(fields[1], 65535) if len(fields) > 1 and fields[1].isdigit() else None
    try:
        return fields[0].decode(), port
    except UnicodeDecodeError as exc:
        raise BodyError(f"redirect host is not text: {exc}") from None
