"""The blnkinf firmware tag (protocol.firmware), found in a ~4 MB image."""

from __future__ import annotations

import mmap
import random

import pytest

from protocol.firmware import MAGIC, MAX_TAG, FirmwareTag, build_tag, find_tag

# The bytes the C++ library compiles in, spelled the way the C preprocessor concatenates them:
# "blnkinf\0" BLYNK_PARAM_KV("mcu", BLYNK_FIRMWARE_VERSION) ... "\0" plus the literal's terminator.
CPP_13_TAG = (
    b"blnkinf\0"
    b"mcu\0" b"1.0.2\0"
    b"fw-type\0" b"TMPLabc123\0"
    b"build\0" b"Apr 25 2026 10:00:00\0"
    b"blynk\0" b"1.4.0\0"
    b"h-beat\0" b"45\0"
    b"buff-in\0" b"1024\0"
    b"dev\0" b"ESP32\0"
    b"cpu\0" b"ESP32\0"
    b"con\0" b"WiFi\0"
    b"\0" b"\0"
)  # fmt: skip
CPP_10_TAG = (
    b"blnkinf\0"
    b"ver\0" b"1.2.0\0"
    b"h-beat\0" b"45\0"
    b"buff-in\0" b"1024\0"
    b"dev\0" b"NodeMCU\0"
    b"con\0" b"ESP8266\0"
    b"fw-type\0" b"Blynk-ESP8266\0"
    b"fw\0" b"3.1.4\0"
    b"build\0" b"Jan  5 2025 09:08:07\0"
    b"\0" b"\0"
)  # fmt: skip


def _image(tag: bytes, size: int = 4 * 1024 * 1024, seed: int = 1, at: int | None = None) -> tuple[bytes, int]:
    rnd = random.Random(seed)
    blob = bytearray(rnd.randbytes(size))
    offset = rnd.randrange(size - len(tag)) if at is None else at
    blob[offset : offset + len(tag)] = tag
    return bytes(blob), offset


def test_build_tag_matches_the_cpp_layout():
    assert (
        build_tag(
            mcu="1.0.2",
            fw_type="TMPLabc123",
            build="Apr 25 2026 10:00:00",
            blynk="1.4.0",
            h_beat=45,
            buff_in=1024,
            dev="ESP32",
            cpu="ESP32",
            con="WiFi",
        )
        == CPP_13_TAG
    )
    old = {"ver": "1.2.0", "h-beat": "45", "buff-in": "1024", "dev": "NodeMCU", "con": "ESP8266"}
    assert build_tag(old, fw_type="Blynk-ESP8266", fw="3.1.4", build="Jan  5 2025 09:08:07") == CPP_10_TAG
    assert CPP_13_TAG.endswith(b"WiFi\0\0\0")  # last value's NUL, the extra NUL, the terminator


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cpp_13_tag_in_4mb_image(seed):
    image, _ = _image(CPP_13_TAG, seed=seed)
    tag = find_tag(image)
    assert tag == FirmwareTag(
        type="TMPLabc123",
        version="1.0.2",
        build="Apr 25 2026 10:00:00",
        library_version="1.4.0",
        board="ESP32",
        cpu="ESP32",
        connection="WiFi",
        ncp_version=None,
        fields={
            "mcu": "1.0.2",
            "fw-type": "TMPLabc123",
            "build": "Apr 25 2026 10:00:00",
            "blynk": "1.4.0",
            "h-beat": "45",
            "buff-in": "1024",
            "dev": "ESP32",
            "cpu": "ESP32",
            "con": "WiFi",
        },
    )
    assert list(tag.fields) == ["mcu", "fw-type", "build", "blynk", "h-beat", "buff-in", "dev", "cpu", "con"]


def test_cpp_10_tag_ver_is_the_library_version():
    image, _ = _image(CPP_10_TAG, seed=7)
    tag = find_tag(image)
    assert (tag.version, tag.library_version, tag.type, tag.board) == ("3.1.4", "1.2.0", "Blynk-ESP8266", "NodeMCU")
    assert tag.build == "Jan  5 2025 09:08:07" and tag.cpu is None and tag.connection == "ESP8266"


def test_ver_alone_is_not_a_firmware_version():
    tag = find_tag(b"xx" + build_tag(ver="0.6.1", build="Jan  1 2020 00:00:00"))
    assert tag.version is None and tag.library_version == "0.6.1"


def test_ncp_tag():
    tag = find_tag(build_tag(ncp="0.9.1", fw_type="Blynk-NCP", build="May  1 2026 00:00:00", blynk="1.3.2"))
    assert tag.ncp_version == "0.9.1" and tag.version is None and tag.type == "Blynk-NCP"


def test_absent_tag():
    image, _ = _image(b"", seed=4)
    assert find_tag(image) is None
    assert find_tag(b"") is None
    assert find_tag(b"blnkinf") is None


def test_tag_at_the_very_end_and_start():
    for tag_bytes in (CPP_13_TAG, CPP_13_TAG[:-1]):  # with and without the C terminator
        image = random.Random(5).randbytes(100_000) + tag_bytes
        assert find_tag(image).version == "1.0.2"
        assert find_tag(tag_bytes).version == "1.0.2"


@pytest.mark.parametrize(
    "tag",
    [
        b"blnkinf\0\0\0",  # no pairs
        b"blnkinf\0mcu\0",  # truncated at the end of the file
        b"blnkinf\0mcu\x001.0\0build",  # no end
        b"blnkinf\0mcu\0\0\0",  # odd number of strings
        b"blnkinf\0mcu\x001.0\0fw-type\0\0\0",
        b"blnkinf\0mcu\x001.\xff0\0\0\0",  # not ASCII
        b"blnkinf\0mcu\x001.0\n\0\0\0",  # not printable
        b"blnkinf\0mcu\0" + b"1" * (MAX_TAG + 10) + b"\0\0\0",  # over the cap
    ],
)
def test_malformed_tag(tag):
    image = random.Random(6).randbytes(10_000).replace(MAGIC, b"") + tag
    assert find_tag(image) is None


def test_malformed_candidate_is_skipped_for_a_good_one():
    image = b"blnkinf\0\xff\xfe garbage" + bytes(100) + CPP_10_TAG
    assert find_tag(image).version == "3.1.4"


def test_bytes_like_inputs(tmp_path):
    image, _ = _image(CPP_13_TAG, size=200_000, seed=8)
    assert find_tag(bytearray(image)).version == "1.0.2"
    assert find_tag(memoryview(image)).version == "1.0.2"
    path = tmp_path / "fw.bin"
    path.write_bytes(image)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        assert find_tag(mm).version == "1.0.2"


def test_found_at_the_end_of_4mb():
    # How long the search takes is measured in benchmarks/test_bench_firmware.py, not asserted here.
    image, _ = _image(CPP_13_TAG, seed=9, at=4 * 1024 * 1024 - len(CPP_13_TAG) - 3)
    tag = find_tag(image)
    assert tag is not None and tag.version == "1.0.2"


def test_build_tag_refuses_what_cannot_round_trip():
    for bad in ({"mcu": ""}, {"": "1"}, {"mcu": "a\0b"}, {"mcu": "caf\u00e9"}, {"mcu": "x\ny"}, {"mcu": "1" * MAX_TAG}):
        with pytest.raises(ValueError):
            build_tag(bad)
    with pytest.raises(ValueError):
        build_tag()


def test_tag_is_hashable_and_frozen():
    tag = find_tag(CPP_13_TAG)
    hash(tag)
    with pytest.raises(AttributeError):
        tag.version = "2"
