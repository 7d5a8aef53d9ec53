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

from blynk_server import eventdefs, metafields
from blynk_server.domain import BUILTIN_FIELDS, Domain
from blynk_server.eventdefs import LEVELS, SYSTEM_CODES, EventDef
from blynk_server.model import (
    DATASTREAM_TYPES,
    MAX_DATASTREAM_ID,
    NO_ID,
    Datastream,
    DeviceRecord,
    MetaField,
    Template,
    assign_datastream_ids,
    new_token,
)
from blynk_server.store import SqliteStore
from protocol.body import BodyError, parse_pin, parse_uint

log = logging.getLogger(__name__)

INT64_MAX = 2**63 - 1
TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "-_")
SPEC_FIELDS = frozenset({"pin", "name", "type", "min", "max", "default", "enum", "id", "alias"})
MAX_ALIAS = 100
SPEC_FLAGS = frozenset({"history", "sync"})
EVENT_CODE_CHARS = frozenset(string.ascii_letters + string.digits + "_-. ")
MAX_EVENT_NAME = 100
MAX_EVENT_DESCRIPTION = 300
MAX_EVENT_EMAILS = 20
MAX_EMAIL = 254
MAX_EVERY_S = 366 * 86_400  # a year: more is a typo
MAX_OFFLINE_IGNORE_S = 7 * 86_400
EMAIL = metafields.EMAIL
METAFIELD_SPEC_FIELDS = frozenset({"id", "name", "type", "default", "options", "min", "max"})


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
    id: object = None,
    alias: object = None,
) -> Datastream:
    """A checked datastream: a pin ``v0..v255``/``d``/``a``, a known type, finite min/max (min ≤ max),
    64-bit enum values, an id 0..``MAX_DATASTREAM_ID`` (none: ``NO_ID``, the template's default rule
    applies when it is stored), an alias of 1..100 printable characters (none: the name). The one
    validation both forms below go through."""
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
    ds_id = NO_ID
    if id is not None and id != "":
        try:
            ds_id = parse_uint(str(id) if not isinstance(id, bool) else "", MAX_DATASTREAM_ID)
        except BodyError:
            raise ProvisioningError(f"A datastream id is an integer 0..{MAX_DATASTREAM_ID}.") from None
    alias_text = "" if alias is None else str(alias)
    if len(alias_text) > MAX_ALIAS or not alias_text.isprintable():
        raise ProvisioningError(f"A datastream alias is at most {MAX_ALIAS} printable characters.")
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
        ds_id,
        alias_text,
    )


def parse_datastream_spec(spec: str) -> Datastream:
    """The command line's form:
    ``pin=v1,id=1,name=Temp,alias=Temperature,type=double,min=-40,max=125,default=0,enum=0|1,history,sync``."""
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
        values.get("id"),
        values.get("alias"),
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
        d.get("id"),
        d.get("alias"),
    )


def _check_unique(datastreams: list[Datastream]) -> None:
    """Refuse two datastreams of one template with one id or one alias (Blynk's rule)."""
    ids = [ds.id for ds in datastreams if ds.id != NO_ID]
    if len(set(ids)) != len(ids):
        raise Conflict("Two datastreams with one id in the template.")
    aliases = [ds.alias for ds in datastreams]
    if len(set(aliases)) != len(aliases):
        raise Conflict("Two datastreams with one alias in the template (give one alias=).")


def make_metafield(
    id: object,
    name: object,
    type: object = "text",
    default: object = None,
    options: Iterable[object] = (),
    min: object = None,
    max: object = None,
    max_size: int = 1024,
) -> MetaField:
    """A checked metafield: an id 0..``MAX_DATASTREAM_ID``, a name of 1..``max_size`` bytes of printable
    characters that is not a built-in's other than by type, a known type, options (list: at least
    one; switch: exactly two; ``max_size`` bytes in all), finite min ≤ max (number), and a default its
    type accepts. The one validation the CLI and the admin API share."""
    try:
        mid = parse_uint(str(id) if not isinstance(id, bool) else "", MAX_DATASTREAM_ID)
    except BodyError:
        raise ProvisioningError(f"A metafield id is an integer 0..{MAX_DATASTREAM_ID}.") from None
    name = "" if name is None else str(name)
    if not name.strip() or not name.isprintable() or len(name.encode()) > max_size:
        raise ProvisioningError(f"A metafield name is 1..{max_size} bytes of printable characters.")
    typ = str(type or "text").lower()
    if typ not in metafields.TYPES:
        raise ProvisioningError(f"type must be one of {', '.join(metafields.TYPES)}.")
    builtin = BUILTIN_FIELDS.get(name)
    if builtin is not None and builtin.type != typ:
        raise ProvisioningError(f"{name!r} is a built-in field of type {builtin.type}.")
    if isinstance(options, str):
        options = options.split("|")
    opts = tuple(dict.fromkeys(str(o) for o in options))
    if not all(o and o.isprintable() for o in opts) or len("".join(opts).encode()) + len(opts) > max_size:
        raise ProvisioningError(f"Options are non-empty printable texts, {max_size} bytes in all.")
    if typ == "list" and not opts:
        raise ProvisioningError("A list metafield needs options.")
    if typ == "switch" and len(opts) != 2:
        raise ProvisioningError("A switch metafield needs exactly two options.")
    if typ not in metafields.NEEDS_OPTIONS and opts:
        raise ProvisioningError("Only list and switch metafields have options.")
    try:
        mn = None if min is None or min == "" else float(min)
        mx = None if max is None or max == "" else float(max)
    except (TypeError, ValueError, OverflowError):
        raise ProvisioningError("min and max must be numbers.") from None
    if not all(math.isfinite(x) for x in (mn, mx) if x is not None) or (mn is not None and mx is not None and mn > mx):
        raise ProvisioningError("min and max must be finite, min ≤ max.")
    if typ != "number" and (mn is not None or mx is not None):
        raise ProvisioningError("Only number metafields have min and max.")
    mf = MetaField(mid, name, typ, None, opts, mn, mx)
    if default is not None and default != "":
        if typ in metafields.READ_ONLY or typ == "device_name":
            raise ProvisioningError(f"A {typ} metafield has no default (its value is the device's).")
        try:
            mf.default = metafields.check(mf, str(default))
        except ValueError as exc:
            raise ProvisioningError(f"default: {exc}") from None
        if len(mf.default.encode()) > max_size:
            raise ProvisioningError(f"default is longer than {max_size} bytes.")
    return mf


def parse_metafield_spec(spec: str, max_size: int = 1024) -> MetaField:
    """The command line's form: ``id=1,name=Serial Number,type=text,default=none,options=a|b,min=0,max=9``."""
    values: dict[str, str] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ProvisioningError(f"metafield field {part.strip()!r} in {spec!r} needs a value (key=value)")
        k, v = part.split("=", 1)
        values[k.strip().lower()] = v.strip()
    unknown = set(values) - METAFIELD_SPEC_FIELDS
    if unknown:
        raise ProvisioningError(f"unknown metafield field(s) {sorted(unknown)} in {spec!r}")
    if "id" not in values or "name" not in values:
        raise ProvisioningError(f"metafield {spec!r} needs id= and name=")
    return make_metafield(
        values["id"],
        values["name"],
        values.get("type", "text"),
        values.get("default"),
        values["options"].split("|") if "options" in values else (),
        values.get("min"),
        values.get("max"),
        max_size,
    )


def metafield_from_json(mid: object, d: object, max_size: int = 1024) -> MetaField:
    """The JSON form (``MetaField.as_dict``'s fields; ``mid`` from the path wins), or a spec string."""
    if isinstance(d, str):
        return parse_metafield_spec(d, max_size)
    if not isinstance(d, dict):
        raise ProvisioningError("A metafield is a JSON object or a spec string.")
    options = d.get("options") or ()
    if not isinstance(options, list | tuple):
        raise ProvisioningError("options must be a list of texts.")
    return make_metafield(
        mid if mid is not None else d.get("id"),
        d.get("name"),
        d.get("type", "text"),
        d.get("default"),
        options,
        d.get("min"),
        d.get("max"),
        max_size,
    )


def make_event_def(
    code: object,
    name: object = None,
    level: object = "info",
    description: object = "",
    every_s: object = 0,
    emails: Iterable[object] = (),
    max_code: int = 64,
) -> EventDef:
    """A checked event definition: a code of letters, digits, ``_ - .`` and spaces (≤ ``max_code``
    chars, as devices send it), a name ≤ 100 chars (the code when none), a level of ``LEVELS``, a
    description ≤ 300 chars, ``every_s`` 0..a year, ≤ 20 plain e-mail addresses. The one validation the
    CLI and the admin API share."""
    code = str(code or "")
    if not 1 <= len(code) <= max_code or not EVENT_CODE_CHARS.issuperset(code) or code.strip() != code:
        raise ProvisioningError(f"An event code is 1..{max_code} letters, digits, '_', '-', '.' and inner spaces.")
    name = str(name if name is not None else "") or code
    if len(name) > MAX_EVENT_NAME or not name.isprintable():
        raise ProvisioningError(f"An event name is 1..{MAX_EVENT_NAME} printable characters.")
    level = str(level or "info").lower()
    if level not in LEVELS:
        raise ProvisioningError(f"level must be one of {', '.join(LEVELS)}.")
    description = str(description or "")
    if len(description) > MAX_EVENT_DESCRIPTION:
        raise ProvisioningError(f"An event description is at most {MAX_EVENT_DESCRIPTION} characters.")
    try:
        every = float(every_s or 0)
    except (TypeError, ValueError, OverflowError):
        raise ProvisioningError("every_s must be a number of seconds.") from None
    if not math.isfinite(every) or not 0 <= every <= MAX_EVERY_S:
        raise ProvisioningError(f"every_s must be 0..{MAX_EVERY_S} seconds.")
    if isinstance(emails, str):
        emails = [emails]
    addresses = tuple(dict.fromkeys(str(e).strip() for e in emails))
    if len(addresses) > MAX_EVENT_EMAILS:
        raise ProvisioningError(f"At most {MAX_EVENT_EMAILS} e-mail recipients per event.")
    for address in addresses:
        if len(address) > MAX_EMAIL or not EMAIL.fullmatch(address):
            raise ProvisioningError(f"Not an e-mail address: {address[:64]!r}.")
    return EventDef(code, name, level, description, every, addresses)


def event_def_from_json(d: dict, max_code: int = 64) -> EventDef:
    """The JSON form (``EventDef.as_dict``'s fields)."""
    if not isinstance(d, dict):
        raise ProvisioningError("An event is a JSON object.")
    emails = d.get("emails") or ()
    if not isinstance(emails, list | tuple | str):
        raise ProvisioningError("emails must be a list of addresses.")
    return make_event_def(
        d.get("code"), d.get("name"), d.get("level"), d.get("description"), d.get("every_s"), emails, max_code
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
        self,
        name: str | None,
        datastreams: list[Datastream],
        template_id: str | None = None,
        fields: list[MetaField] = (),
    ) -> Template:
        tid = template_id or new_template_id()
        if not 1 <= len(tid) <= 64 or not tid.isprintable():
            raise ProvisioningError("A template id is 1..64 printable characters.")
        if self.domain.template(tid) is not None:
            raise Conflict(f"Template {tid!r} already exists.")
        pins = [ds.pin for ds in datastreams]
        if len(set(pins)) != len(pins):
            raise ProvisioningError("Two datastreams on one pin.")
        _check_unique(datastreams)
        assign_datastream_ids(datastreams)
        self._check_metafields(list(fields))
        try:
            tpl = await self.store.run(self.store.create_template, tid, name or tid, datastreams, list(fields))
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
        """Add or replace a datastream; devices online are validated against it from the next write.
        Replacing one without an id keeps its id; a new one without an id gets the default rule's."""
        tpl = self.template(template_id)
        others = [d for k, d in tpl.datastreams.items() if k != ds.pin]
        if ds.id == NO_ID and ds.pin in tpl.datastreams:
            ds.id = tpl.datastreams[ds.pin].id
        _check_unique([*others, ds])
        assign_datastream_ids([*others, ds])
        await self.store.run(self.store.put_datastream, template_id, ds)
        self.domain.put_datastream(template_id, ds)
        log.info("datastream set template=%s pin=%s id=%d type=%s", template_id, ds.pin, ds.id, ds.type)
        return ds

    async def delete_datastream(self, template_id: str, pin_key: str) -> None:
        tpl = self.template(template_id)
        if pin_key not in tpl.datastreams:
            raise NotFound("Datastream not found.")
        await self.store.run(self.store.delete_datastream, template_id, pin_key)
        self.domain.delete_datastream(template_id, pin_key)
        log.info("datastream deleted template=%s pin=%s", template_id, pin_key)

    # --- metafields ---------------------------------------------------------------------------

    def _check_metafields(self, fields: list[MetaField]) -> None:
        """Refuse two fields of one id or one name, or more than ``max_meta_fields`` in a template."""
        if len({mf.id for mf in fields}) != len(fields) or len({mf.name for mf in fields}) != len(fields):
            raise Conflict("Two metafields with one id or one name in the template.")
        if len(fields) > self.domain.max_meta_fields:
            raise ProvisioningError(f"A template may declare at most {self.domain.max_meta_fields} metafields.")

    async def put_metafield(self, template_id: str, mf: MetaField) -> MetaField:
        """Declare or replace the metafield of ``mf.id``. Devices' values are stored by field name, so a
        field's name does not change (delete it and declare it anew: values under the name come back)."""
        tpl = self.template(template_id)
        old = tpl.metafields.get(mf.id)
        if old is not None and old.name != mf.name:
            raise Conflict(
                f"Metafield {mf.id} is named {old.name!r}: a name cannot change (its values are stored by it)."
            )
        self._check_metafields([*(f for k, f in tpl.metafields.items() if k != mf.id), mf])
        await self.store.run(self.store.put_metafield, template_id, mf)
        self.domain.put_metafield(template_id, mf)
        log.info("metafield set template=%s id=%d type=%s", template_id, mf.id, mf.type)
        return mf

    async def delete_metafield(self, template_id: str, metafield_id: int) -> None:
        """Drop a declaration; devices' values under its name stay stored (readable by name)."""
        tpl = self.template(template_id)
        if metafield_id not in tpl.metafields:
            raise NotFound("Metafield not found.")
        await self.store.run(self.store.delete_metafield, template_id, metafield_id)
        self.domain.delete_metafield(template_id, metafield_id)
        log.info("metafield deleted template=%s id=%d", template_id, metafield_id)

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

    async def rename_device(self, device_id: int, name: object) -> DeviceRecord:
        """A device's new name: 1..50 printable characters (Blynk's limit)."""
        dev = self.domain.device(device_id)
        if dev is None:
            raise NotFound("Device not found.")
        try:
            name = metafields.check_device_name(str(name if name is not None else ""))
        except ValueError as exc:
            raise ProvisioningError(str(exc)) from None
        await self.store.run(self.store.rename_device, device_id, name)
        dev.record.name = name
        log.info("device renamed device=%d", device_id)
        return dev.record

    async def replace_token(self, device_id: int, token: str | None = None) -> DeviceRecord:
        """A new token for a device that keeps its id and data (Blynk's re-provisioning): the old token
        is refused from now on and a session logged in with it is closed."""
        if self.domain.device(device_id) is None:
            raise NotFound("Device not found.")
        token = token or new_token()
        check_token(token)
        if self.domain.device_by_token(token) is not None:
            raise Conflict("A device with that token already exists.")
        try:
            await self.store.run(self.store.execute, "UPDATE devices SET token = ? WHERE id = ?", (token, device_id))
        except sqlite3.IntegrityError:
            raise Conflict("A device with that token already exists.") from None
        dev = self.domain.device(device_id)
        if dev is None:  # deleted while the store wrote
            raise NotFound("Device not found.")
        self.domain.replace_token(device_id, token)
        log.info("device token replaced device=%d", device_id)
        return dev.record

    async def delete_device(self, device_id: int) -> None:
        """Disconnect the device at once, refuse its token everywhere, then remove it and all its rows."""
        if self.domain.device(device_id) is None:
            raise NotFound("Device not found.")
        self.domain.remove_device(device_id, "device deleted")
        await self.store.run(self.store.delete_device, device_id)
        log.info("device deleted device=%d", device_id)

    # --- template events ----------------------------------------------------------------------

    def event_defs(self, template_id: str) -> list[EventDef]:
        self.template(template_id)
        return self.domain.event_defs.declared(template_id)

    async def put_event_def(self, template_id: str, d: EventDef, replace: bool = True) -> EventDef:
        """Declare (or, with ``replace``, redeclare) an event; its devices may log it at once. A system
        code may be declared to change its name, level and recipients (devices still cannot log it)."""
        self.template(template_id)
        registry = self.domain.event_defs
        declared = {e.code for e in registry.declared(template_id)}
        if d.code in declared and not replace:
            raise Conflict(f"Event {d.code!r} already exists.")
        if d.code not in declared and len(declared) >= self.domain.max_event_codes:
            raise ProvisioningError(f"A template may declare at most {self.domain.max_event_codes} events.")
        await self.store.run(eventdefs.save_def, self.store, template_id, d)
        registry.put(template_id, d)
        log.info(
            "event declared template=%s code=%s level=%s every_s=%g recipients=%d%s",
            template_id,
            d.code,
            d.level,
            d.every_s,
            len(d.emails),
            " (system event)" if d.code in SYSTEM_CODES else "",
        )
        return d

    async def delete_event_def(self, template_id: str, code: str) -> None:
        self.template(template_id)
        registry = self.domain.event_defs
        if code not in {e.code for e in registry.declared(template_id)}:
            raise NotFound("Event not found.")
        await self.store.run(eventdefs.delete_def, self.store, template_id, code)
        registry.remove(template_id, code)
        log.info("event deleted template=%s code=%s", template_id, code)

    async def set_offline_ignore(self, template_id: str, seconds: object) -> float:
        """The template's offline-ignore period: a device away for less is not recorded offline."""
        self.template(template_id)
        try:
            value = float(seconds)  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            raise ProvisioningError("offline_ignore_s must be a number of seconds.") from None
        if not math.isfinite(value) or not 0 <= value <= MAX_OFFLINE_IGNORE_S:
            raise ProvisioningError(f"offline_ignore_s must be 0..{MAX_OFFLINE_IGNORE_S} seconds.")
        await self.store.run(eventdefs.save_settings, self.store, template_id, value)
        self.domain.event_defs.set_offline_ignore(template_id, value)
        log.info("offline ignore period template=%s seconds=%g", template_id, value)
        return value
