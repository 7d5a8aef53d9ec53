"""Typed template metadata ("metafields"): the types, how a value of each is checked, and the JSON
shape each answers with. Plain functions over ``model.MetaField``; the domain applies them to devices,
provisioning to declarations, the doors render with ``typed``.

Types follow Blynk's (its JSON ``type`` names in ``BLYNK_TYPES``, which ``device/meta`` answers with).
Values are stored as text; ``check`` returns the canonical text of a valid value or raises ``ValueError``
with the reason.
"""

from __future__ import annotations

import json
import math
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from blynk_server.model import MetaField

# Our type name -> Blynk's JSON type name (the ``type`` of ``device/meta`` and of the Platform API).
BLYNK_TYPES = {
    "text": "Text",
    "number": "Number",
    "range": "Range",
    "switch": "Switch",
    "list": "List",
    "contact": "Contact",
    "location": "Location",
    "coordinates": "Coordinates",
    "timezone": "Tz",
    "email": "Email",
    "phone": "Phone",
    "image": "Image",
    "hotspot": "Hotspot",
    "time": "Time",
    "imei": "IMEI",
    "iccid": "ICCID",
    "device_name": "DeviceName",
    "device_owner": "DeviceOwner",
    "device_reference": "DeviceReference",
    "auth_token": "AuthToken",
}
TYPES = tuple(BLYNK_TYPES)
NEEDS_OPTIONS = frozenset({"list", "switch"})  # a value is one of ``options`` (a switch has exactly two)
READ_ONLY = frozenset({"auth_token"})
MAX_TEXT = 255  # characters of a text-like value (Blynk's console: 255 for Text, 200 for most others)
MAX_DEVICE_NAME = 50  # Blynk's limit for a device name
CONTACT_KEYS = (
    "firstName",
    "lastName",
    "email",
    "phone",
    "streetAddress",
    "streetAddress2",
    "city",
    "state",
    "zip",
    "country",
)
EMAIL = re.compile(r"[^@\s,;<>\"']+@[^@\s,;<>\"']+\.[^@\s,;<>\"']+")
PHONE = re.compile(r"\+?[0-9][0-9 ()./-]{2,31}")
HHMM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")
IMAGE_URL = re.compile(r"https?://[^\s]+")


def _text(value: str, what: str = "text") -> str:
    if len(value) > MAX_TEXT or not value.isprintable():
        raise ValueError(f"A {what} value is at most {MAX_TEXT} printable characters.")
    return value


def _number(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise ValueError("Not a number.") from None
    if not math.isfinite(x):
        raise ValueError("Not a finite number.")
    return x


def _format(x: float) -> str:
    return str(int(x)) if x == int(x) and abs(x) < 1e15 else repr(x)


def _contact(value: str) -> str:
    try:
        d = json.loads(value)
    except (ValueError, RecursionError):
        raise ValueError("A contact is a JSON object of " + ", ".join(CONTACT_KEYS) + ".") from None
    if not isinstance(d, dict) or not set(d) <= set(CONTACT_KEYS) or not all(isinstance(v, str) for v in d.values()):
        raise ValueError("A contact is a JSON object of " + ", ".join(CONTACT_KEYS) + " (strings).")
    for v in d.values():
        _text(v, "contact")
    if d.get("email") and not EMAIL.fullmatch(d["email"]):
        raise ValueError("The contact's email is not an e-mail address.")
    return json.dumps({k: d[k] for k in CONTACT_KEYS if k in d}, separators=(",", ":"))


def _coordinates(value: str) -> str:
    parts = value.replace(" ", ",").split(",")
    parts = [p for p in parts if p]
    if len(parts) != 2:
        raise ValueError("Coordinates are 'lat,lon'.")
    lat, lon = _number(parts[0]), _number(parts[1])
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError("Coordinates are out of range (lat -90..90, lon -180..180).")
    return f"{_format(lat)},{_format(lon)}"


def check_device_name(value: str) -> str:
    """The one device-name rule (provisioning's rename, the ``device_name`` field): 1..50 printable
    characters once trimmed (Blynk's limit)."""
    name = value.strip()
    if not 1 <= len(name) <= MAX_DEVICE_NAME or not name.isprintable():
        raise ValueError(f"A device name is 1..{MAX_DEVICE_NAME} printable characters.")
    return name


def check(field: MetaField, value: str) -> str:
    """The canonical text of ``value`` for ``field``, or ``ValueError`` saying why it is refused."""
    kind = field.type
    if kind in READ_ONLY:
        raise ValueError(f"{field.name} is read-only.")
    if kind in ("text", "location", "device_owner", "hotspot"):
        return _text(value)
    if kind == "device_name":
        return check_device_name(value)
    if kind == "number":
        x = _number(value)
        if (field.min is not None and x < field.min) or (field.max is not None and x > field.max):
            raise ValueError("The number is out of the field's range.")
        return _format(x)
    if kind in NEEDS_OPTIONS:
        if value not in field.options:
            raise ValueError("Not one of the field's options.")
        return value
    if kind == "timezone":
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("Not a time zone (an IANA name such as Europe/Kyiv).") from None
        return value
    if kind == "email":
        if len(value) > MAX_TEXT or not EMAIL.fullmatch(value):
            raise ValueError("Not an e-mail address.")
        return value
    if kind == "phone":
        if not PHONE.fullmatch(value):
            raise ValueError("Not a phone number.")
        return value
    if kind == "image":
        if len(value) > 1024 or not IMAGE_URL.fullmatch(value):
            raise ValueError("An image is an http(s) URL of at most 1024 characters.")
        return value
    if kind == "time":
        if not HHMM.fullmatch(value):
            raise ValueError("A time is HH:MM.")
        return value
    if kind == "range":
        start, _, end = value.partition("-")
        if not (HHMM.fullmatch(start) and HHMM.fullmatch(end)):
            raise ValueError("A range is HH:MM-HH:MM.")
        return value
    if kind == "imei":
        if not (value.isascii() and value.isdigit() and len(value) == 15):
            raise ValueError("An IMEI is 15 digits.")
        return value
    if kind == "iccid":
        if not (value.isascii() and value.isdigit() and 18 <= len(value) <= 22):
            raise ValueError("An ICCID is 18..22 digits.")
        return value
    if kind == "device_reference":
        if not (value.isascii() and value.isdigit() and 0 < len(value) <= 18):
            raise ValueError("A device reference is a device id.")
        return str(int(value))
    if kind == "contact":
        return _contact(value)
    if kind == "coordinates":
        return _coordinates(value)
    raise ValueError(f"Unknown metafield type {kind!r}.")


def typed(field: MetaField | None, value: str) -> object:
    """The JSON value of a stored value: a number for number fields, ``{"lat", "lon"}`` for
    coordinates, the object of a contact, text otherwise (free-form metadata, ``field`` None, too)."""
    kind = field.type if field is not None else "text"
    try:
        if kind == "number":
            x = float(value)
            return int(x) if x == int(x) and abs(x) < 1e15 else x
        if kind == "coordinates":
            lat, lon = (float(p) for p in value.split(","))
            return {"lat": lat, "lon": lon}
        if kind == "contact":
            return json.loads(value)
        if kind == "device_reference":
            return int(value)
    except (ValueError, TypeError, OverflowError):
        pass  # a value stored before the field was declared or its type changed: as text
    return value


def blynk_type(field: MetaField | None) -> str:
    return BLYNK_TYPES.get(field.type, "Text") if field is not None else "Text"
