"""The ``blnkinf`` tag the Blynk C++ library compiles into every firmware (reference ota.md §2).

Layout, as it sits in the binary::

    "blnkinf" 00  key1 00 value1 00  ...  keyN 00 valueN 00  00  [00]

i.e. the 8-byte magic, key/value pairs of NUL-terminated printable ASCII strings, an explicit extra
NUL that ends the list (an empty string), and, in a compiled binary, the C string's own terminator.
Keys: ``mcu`` (firmware version; ``ncp`` in NCP builds), ``fw-type``, ``build``, ``blynk`` (library
version) in libraries >= 1.3; ``ver`` (library version), ``h-beat``, ``buff-in``, ``dev``, ``cpu``,
``con``, ``fw-type``, ``fw`` (firmware version), ``build`` in 1.0-1.2. ``tmpl`` is added only at
run time, so it is not in the tag; ``fw-type`` defaults to the template id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

MAGIC = b"blnkinf\0"
MAX_TAG = 1024  # bytes of key/value pairs after the magic; real tags are ~150
_MAX_CANDIDATES = 64  # occurrences of the magic looked at before giving up


@dataclass(frozen=True)
class FirmwareTag:
    """What a firmware binary says about itself. Absent keys are ``None``."""

    type: str | None = None  # fw-type: which devices may take this image (defaults to the template id)
    version: str | None = None  # mcu (>= 1.3), else fw (1.0-1.2); never ``ver``, the library version
    build: str | None = None  # __DATE__ " " __TIME__, compared as a string by the legacy server
    library_version: str | None = None  # blynk (>= 1.3), else ver (<= 1.2)
    board: str | None = None  # dev
    cpu: str | None = None
    connection: str | None = None  # con
    ncp_version: str | None = None  # ncp, in Blynk.NCP builds
    fields: dict[str, str] = field(default_factory=dict, hash=False)  # every pair, in tag order


def _parse_at(data, start: int) -> dict[str, str] | None:
    """The pairs of a tag whose pairs begin at ``start``, or None if they are not a well-formed tag."""
    window = bytes(data[start : start + MAX_TAG + 2])
    end = window.find(b"\0\0")
    if end <= 0:  # no end within the cap, or no pairs at all
        return None
    strings = window[: end + 1].split(b"\0")[:-1]  # "k\0v\0...vN\0" -> [k, v, ..., vN]
    if len(strings) % 2:
        return None
    pairs: dict[str, str] = {}
    for i in range(0, len(strings), 2):
        try:
            key = strings[i].decode("ascii")
            value = strings[i + 1].decode("ascii")
        except UnicodeDecodeError:
            return None
        if not (key.isprintable() and value.isprintable()):
            return None
        pairs.setdefault(key, value)
    return pairs


def find_tag(data) -> FirmwareTag | None:
    """Find and parse the first well-formed ``blnkinf`` tag in a firmware image.

    ``data`` is anything with ``find`` and slicing (bytes, bytearray, mmap); a memoryview is copied.
    The magic is located with ``find`` (a 4 MB image takes about a millisecond); the pairs are
    capped at ``MAX_TAG`` bytes and must be printable ASCII. Returns ``None`` when there is no tag
    or none is well formed (a compressed or encrypted image shows no tag).
    """
    if isinstance(data, memoryview):
        data = data.tobytes()
    pos = data.find(MAGIC)
    for _ in range(_MAX_CANDIDATES):
        if pos < 0:
            return None
        pairs = _parse_at(data, pos + len(MAGIC))
        if pairs:
            return _tag(pairs)
        pos = data.find(MAGIC, pos + 1)
    return None


def _tag(pairs: dict[str, str]) -> FirmwareTag:
    def first(*keys: str) -> str | None:
        for key in keys:
            if key in pairs:
                return pairs[key]
        return None

    return FirmwareTag(
        type=first("fw-type"),
        version=first("mcu", "fw"),
        build=first("build"),
        library_version=first("blynk", "ver"),
        board=first("dev"),
        cpu=first("cpu"),
        connection=first("con", "conn"),
        ncp_version=first("ncp"),
        fields=dict(pairs),
    )


_KWARG_KEYS = {"fw_type": "fw-type", "h_beat": "h-beat", "buff_in": "buff-in"}


def build_tag(pairs: Mapping[str, object] | None = None, /, **fields: object) -> bytes:
    """Build a tag byte for byte as the C++ library lays it out in a compiled binary.

    Pairs come from ``pairs`` (any key) and then the keyword arguments, in order; ``fw_type``,
    ``h_beat`` and ``buff_in`` stand for ``fw-type``, ``h-beat`` and ``buff-in``. Values are
    rendered with ``str``. The result is ``blnkinf\\0``, ``k\\0v\\0`` per pair, the extra ``\\0`` and
    the string terminator ``\\0`` (C++ ``"blnkinf\\0" BLYNK_PARAM_KV(...) ... "\\0"``)::

        build_tag(mcu="1.0.2", fw_type="TMPLabc", build="Apr 25 2026 10:00:00", blynk="1.4.0")
    """
    items = list((pairs or {}).items()) + [(_KWARG_KEYS.get(k, k), v) for k, v in fields.items()]
    if not items:
        raise ValueError("a tag needs at least one key/value pair")
    out = bytearray(MAGIC)
    for key, value in items:
        for text in (key, str(value)):
            if not text or not text.isascii() or not text.isprintable():
                raise ValueError(f"tag keys and values must be non-empty printable ASCII, got {text!r}")
            out += text.encode("ascii") + b"\0"
    if len(out) - len(MAGIC) > MAX_TAG:
        raise ValueError(f"tag longer than {MAX_TAG} bytes")
    out += b"\0\0"
    return bytes(out)
