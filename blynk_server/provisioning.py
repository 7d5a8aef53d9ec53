"""Templates, datastreams, devices and tokens: the one place that creates, changes and deletes them.

The admin API and the CLI both call ``Provisioning`` (the CLI through the running server's control
socket, or on its own store when no server runs), so a token, a datastream or a template is checked by
the same rules whatever door it came through. Each change goes to the store (on its writer thread)
and to the live domain together: a running server applies it at once, without a restart.
"""

from __future__ import annotations

import logging
import math
import secrets
import sqlite3
import string
from collections.abc import Iterable
from dataclasses import dataclass

from blynk_server.domain import Domain
from blynk_server.model import DATASTREAM_TYPES, Datastream, DeviceRecord, Template, new_token
from blynk_server.store import SqliteStore
from protocol.body import BodyError, parse_pin

log = logging.getLogger(__name__)

INT64_MAX = 2**63 - 1
TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "-_")
SPEC_FIELDS = frozenset({"pin", "name", "type", "min", "max", "default", "enum"})
SPEC_FLAGS = frozenset({"history", "sync"})


class ProvisioningError(Exception):
    """A refused change; ``status`` is the HTTP status the admin API answers with."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ProvisioningError):
    status = 404


class Conflict(ProvisioningError):
    status = 409


def check_token(token: str) -> None:
    """The one token rule: 8..64 characters of letters, digits, ``-`` and ``_`` (Blynk issues 32)."""
    if not isinstance(token, str) or not 8 <= len(token) <= 64 or not TOKEN_CHARS.issuperset(token):
        raise ProvisioningError("A token is 8..64 characters of letters, digits, '-' and '_' (Blynk's are 32).")


def new_template_id() -> str:
    """``TMPL`` and 8 random letters and digits, the form of Blynk's template ids."""
    alphabet = string.ascii_letters + string.digits
    return "TMPL" + "".join(secrets.choice(alphabet) for _ in range(8))


def make_datastream(
    pin: str,
    name: object = None,
    type: object = "string",
    min: object = None,
    max: object = None,
    default: object = None,
    enum_values: Iterable[object] = (),
    history: object = False,
    sync: object = False,
) -> Datastream:
    """A checked datastream: a pin ``v0..v255``/``d``/``a``, a known type, finite min/max (min ≤ max),
    64-bit enum values. The one validation both forms below go through."""
    try:
        p = parse_pin(str(pin))
    except BodyError:
        raise ProvisioningError(f"Wrong pin format: {str(pin)[:16]!r}.") from None
    typ = str(type or "string").lower()
    if typ not in DATASTREAM_TYPES:
        raise ProvisioningError(f"type must be one of {', '.join(DATASTREAM_TYPES)}.")
    try:
        mn = None if min is None else float(min)
        mx = None if max is None else float(max)
        enum = tuple(int(x) for x in enum_values)
    except (TypeError, ValueError, OverflowError):
        raise ProvisioningError("min, max and enum values must be numbers.") from None
    if not all(math.isfinite(x) for x in (mn, mx) if x is not None) or not all(
        -INT64_MAX - 1 <= x <= INT64_MAX for x in enum
    ):
        raise ProvisioningError("min, max and enum values must be finite numbers within 64 bits.")
    if mn is not None and mx is not None and mn > mx:
        raise ProvisioningError("min is greater than max.")
    return Datastream(
        p.key,
        str(name) if name else str(p),
        typ,
        mn,
        mx,
        None if default is None else str(default),
        enum,
        bool(history),
        bool(sync),
    )


def parse_datastream_spec(spec: str) -> Datastream:
    """The command line's form: ``pin=v1,name=Temp,type=double,min=-40,max=125,default=0,enum=0|1,history,sync``."""
    values: dict[str, str] = {}
    flags: set[str] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            k, v = part.split("=", 1)
            values[k.strip().lower()] = v.strip()
        else:
            flags.add(part.lower())
    unknown = (set(values) - SPEC_FIELDS) | (flags - SPEC_FLAGS)
    if unknown:
        raise ProvisioningError(f"unknown datastream field(s) {sorted(unknown)} in {spec!r}")
    if "pin" not in values:
        raise ProvisioningError(f"datastream {spec!r} needs pin=")
    enum = values["enum"].split("|") if "enum" in values else ()
    return make_datastream(
        values["pin"],
        values.get("name"),
        values.get("type", "string"),
        values.get("min"),
        values.get("max"),
        values.get("default"),
        enum,
        "history" in flags,
        "sync" in flags,
    )


def datastream_from_json(pin: object, d: dict) -> Datastream:
    """The JSON form (the fields ``Datastream.as_dict`` gives), or a spec string as on the command line."""
    if isinstance(d, str):
        return parse_datastream_spec(d)
    if not isinstance(d, dict):
        raise ProvisioningError("A datastream is a JSON object or a spec string.")
    enum = d.get("enum_values") or ()
    if not isinstance(enum, list | tuple):
        raise ProvisioningError("enum_values must be a list of numbers.")
    return make_datastream(
        str(pin if pin is not None else d.get("pin", "")),
        d.get("name"),
        d.get("type", "string"),
        d.get("min"),
        d.get("max"),
        d.get("default"),
        enum,
        d.get("history", False),
        d.get("sync", False),
    )


@dataclass(frozen=True, slots=True)
class NewDevice:
    """One device to create: its template, name and (optional) static token."""

    template_id: str
    name: str
    token: str | None = None


class Provisioning:
    """Template, datastream and device changes: checked, stored (awaited on the store's thread) and
    applied to the live domain, in that order, so what the API answers is what a restart would load."""

    def __init__(self, store: SqliteStore, domain: Domain) -> None:
        self.store = store
        self.domain = domain

    # --- templates ----------------------------------------------------------------------------

    def templates(self) -> list[Template]:
        return self.domain.templates()

    def template(self, template_id: str) -> Template:
        tpl = self.domain.template(template_id)
        if tpl is None:
            raise NotFound("Template not found.")
        return tpl

    async def create_template(
        self, name: str | None, datastreams: list[Datastream], template_id: str | None = None
    ) -> Template:
        tid = template_id or new_template_id()
        if not 1 <= len(tid) <= 64 or not tid.isprintable():
            raise ProvisioningError("A template id is 1..64 printable characters.")
        if self.domain.template(tid) is not None:
            raise Conflict(f"Template {tid!r} already exists.")
        pins = [ds.pin for ds in datastreams]
        if len(set(pins)) != len(pins):
            raise ProvisioningError("Two datastreams on one pin.")
        try:
            tpl = await self.store.run(self.store.create_template, tid, name or tid, datastreams)
        except sqlite3.IntegrityError:
            raise Conflict(f"Template {tid!r} already exists.") from None
        self.domain.put_template(tpl)
        log.info("template created template=%s datastreams=%d", tid, len(datastreams))
        return tpl

    async def delete_template(self, template_id: str) -> None:
        self.template(template_id)
        if self.domain.devices(template_id):
            raise Conflict("Template has devices; delete them first.")
        await self.store.run(self.store.delete_template, template_id)
        self.domain.remove_template(template_id)
        log.info("template deleted template=%s", template_id)

    async def put_datastream(self, template_id: str, ds: Datastream) -> Datastream:
        """Add or replace a datastream; devices online are validated against it from the next write."""
        self.template(template_id)
        await self.store.run(self.store.put_datastream, template_id, ds)
        self.domain.put_datastream(template_id, ds)
        log.info("datastream set template=%s pin=%s type=%s", template_id, ds.pin, ds.type)
        return ds

    async def delete_datastream(self, template_id: str, pin_key: str) -> None:
        tpl = self.template(template_id)
        if pin_key not in tpl.datastreams:
            raise NotFound("Datastream not found.")
        await self.store.run(self.store.delete_datastream, template_id, pin_key)
        self.domain.delete_datastream(template_id, pin_key)
        log.info("datastream deleted template=%s pin=%s", template_id, pin_key)

    # --- devices ------------------------------------------------------------------------------

    def devices(self, template_id: str | None = None) -> list[DeviceRecord]:
        return [dev.record for dev in self.domain.devices(template_id)]

    async def create_device(self, template_id: str, name: str | None, token: str | None = None) -> DeviceRecord:
        return (await self.import_devices([NewDevice(template_id, name or "Device", token)]))[0]

    async def import_devices(self, rows: list[NewDevice]) -> list[DeviceRecord]:
        """Create devices all or none: every template must exist and every token be new and valid."""
        seen: set[str] = set()
        for i, row in enumerate(rows):
            where = f"device {i + 1}: " if len(rows) > 1 else ""
            if self.domain.template(row.template_id) is None:
                raise NotFound(f"{where}Template {row.template_id!r} not found.")
            if row.token is not None:
                try:
                    check_token(row.token)
                except ProvisioningError as exc:
                    raise ProvisioningError(where + exc.message) from None
                if row.token in seen or self.domain.device_by_token(row.token) is not None:
                    raise Conflict(f"{where}A device with that token already exists.")
                seen.add(row.token)
        try:
            records = await self.store.run(
                self.store.import_devices, [(r.template_id, r.name, r.token or new_token()) for r in rows]
            )
        except sqlite3.IntegrityError:
            raise Conflict("A device with that token already exists.") from None
        for record in records:
            self.domain.add_device(record)
            log.info("device created device=%d template=%s", record.id, record.template_id)
        return records

    async def delete_device(self, device_id: int) -> None:
        """Disconnect the device at once, refuse its token everywhere, then remove it and all its rows."""
        if self.domain.device(device_id) is None:
            raise NotFound("Device not found.")
        self.domain.remove_device(device_id, "device deleted")
        await self.store.run(self.store.delete_device, device_id)
        log.info("device deleted device=%d", device_id)
