"""Dynamic provisioning: a device with no token obtains one (Blynk's "dynamic AuthTokens", the Edgent
flow), and is activated when it first logs in with it.

How Blynk does it, and so how it works here: the app reads the device's ``/board_info.json`` over the
device's own access point (its template id, ``tmpl_id``), asks the cloud for a provision token for that
template (``POST /api/v1/organization/device/provision/token`` → ``{token, deviceId}``: the device is
created then), and hands the token to the device (``/config?blynk=…&host=…``). The device joins the
network, logs in with the token and sends its info message; when the info's ``tmpl`` is the template's
id the device is activated. Re-provisioning gives an existing device a new token, keeping its id and
data. A template allows it (off by default); tokens are bounded (pending per template), expire, are
rate-limited and counted. Devices are created, renamed and re-keyed only through ``Provisioning``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from blynk_server.config import Settings
from blynk_server.domain import DeviceState, Domain
from blynk_server.http.common import ApiError, device_or_404, json_object
from blynk_server.http.limits import token_device
from blynk_server.model import now_ms
from blynk_server.provisioning import NotFound, Provisioning, ProvisioningError

log = logging.getLogger(__name__)

TABLES = """
-- No foreign key: the setting outlives a deleted template as the set in memory does, so a template
-- made again with the same id is in the same state before and after a restart.
CREATE TABLE IF NOT EXISTS provision_templates (
    template_id TEXT PRIMARY KEY,
    allowed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS provision_pending (
    device_id INTEGER PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS device_claims (
    device_id INTEGER PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    owner TEXT,
    claimed_at INTEGER NOT NULL
);
"""

NEW, REPROVISION = "new", "reprovision"
MAX_OWNER = 254  # an e-mail address at most
SWEEP_INTERVAL = 60.0  # seconds between looks for expired tokens (shorter when the TTL is)


class Forbidden(ProvisioningError):
    status = 403


class TooMany(ProvisioningError):
    status = 429


@dataclass(slots=True)
class Pending:
    """A provision token issued and not used yet: the device it opens, and until when."""

    device_id: int
    template_id: str
    kind: str  # NEW: the device was created for it; REPROVISION: an existing device got a new token
    issued_at: int
    expires_at: int

    def as_dict(self) -> dict:
        return {
            "device_id": self.device_id,
            "template_id": self.template_id,
            "kind": self.kind,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
        }


@dataclass(frozen=True, slots=True)
class ProvisionToken:
    """An issued token. ``as_blynk`` is the Platform API's answer (``{token, deviceId}``)."""

    token: str
    device_id: int
    template_id: str
    kind: str
    expires_at: int

    def as_blynk(self) -> dict:
        return {"token": self.token, "deviceId": self.device_id}

    def as_dict(self) -> dict:
        return self.as_blynk() | {"template_id": self.template_id, "kind": self.kind, "expires_at": self.expires_at}


@dataclass(slots=True)
class ProvisionStats:
    issued: Counter = field(default_factory=Counter)  # by kind
    activated: Counter = field(default_factory=Counter)  # by kind
    refused: Counter = field(default_factory=Counter)  # by reason
    expired: int = 0  # devices created for a token that expired unused, deleted
    pending: Callable[[], int] = lambda: 0


class IssueRate:
    """Token bucket over every issued token: ``per_minute`` a minute, as many at once (0 = no limit)."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(1.0, per_minute)
        self.clock = clock
        self.level = self.burst
        self.at = clock()

    def take(self) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock()
        self.level = min(self.burst, self.level + (now - self.at) * self.rate)
        self.at = now
        if self.level < 1.0:
            return False
        self.level -= 1.0
        return True


class DeviceProvisioning:
    """Which templates allow dynamic provisioning, the pending tokens, activation and claims.

    ``load`` installs its two checks on the domain (``login_gate``, ``activation_check``): a device with
    a pending token logs in only before the token expires, and is activated by its first info message
    naming its template (any other ``tmpl`` is refused as an invalid token)."""

    def __init__(self, provisioning: Provisioning, settings: Settings, clock: Callable[[], int] = now_ms) -> None:
        self.provisioning = provisioning
        self.store = provisioning.store
        self.domain = provisioning.domain
        self.ttl_ms = int(settings.provision_token_ttl * 1000)
        self.max_pending = settings.provision_max_pending
        self.rate = IssueRate(settings.provision_tokens_per_minute)
        self.clock = clock
        self.allowed: set[str] = set()
        self.pending: dict[int, Pending] = {}
        self.stats = ProvisionStats(pending=lambda: len(self.pending))
        self._task: asyncio.Task | None = None

    # --- life -----------------------------------------------------------------------------------

    async def load(self) -> None:
        """Create the tables, read them, and put the checks on the domain."""
        await self.store.run(self.store.execute_script, TABLES)
        rows = await self.store.run(self.store.query, "SELECT template_id FROM provision_templates WHERE allowed = 1")
        self.allowed = {r[0] for r in rows}
        rows = await self.store.run(
            self.store.query,
            "SELECT p.device_id, d.template_id, p.kind, p.issued_at, p.expires_at"
            " FROM provision_pending p JOIN devices d ON d.id = p.device_id",
        )
        self.pending = {r[0]: Pending(*r) for r in rows}
        self.domain.login_gate = self._may_log_in
        self.domain.activation_check = self._activate

    async def start(self) -> None:
        await self.load()
        self._task = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _sweep_forever(self) -> None:
        interval = max(1.0, min(SWEEP_INTERVAL, self.ttl_ms / 1000))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("provision sweep failed")

    # --- templates ------------------------------------------------------------------------------

    def template_state(self, template_id: str) -> dict:
        self.provisioning.template(template_id)
        return {
            "template_id": template_id,
            "allowed": template_id in self.allowed,
            "pending": sum(1 for p in self._live() if p.template_id == template_id),
        }

    async def set_allowed(self, template_id: str, allowed: object) -> dict:
        """Allow (or stop) dynamic provisioning on a template. Stopping it keeps the tokens issued."""
        self.provisioning.template(template_id)
        if not isinstance(allowed, bool):
            raise ProvisioningError("allowed must be true or false.")
        await self.store.run(
            self.store.execute,
            "INSERT INTO provision_templates (template_id, allowed) VALUES (?, ?)"
            " ON CONFLICT(template_id) DO UPDATE SET allowed = excluded.allowed",
            (template_id, int(allowed)),
        )
        (self.allowed.add if allowed else self.allowed.discard)(template_id)
        log.info("dynamic provisioning template=%s allowed=%s", template_id, allowed)
        return self.template_state(template_id)

    # --- tokens ---------------------------------------------------------------------------------

    async def issue_provision_token(self, template_id: str, name: str | None = None) -> ProvisionToken:
        """A new device of the template and its token, pending until the device logs in with it (or
        the token expires: the device is then deleted). The Platform API's "Get provision token"."""
        tpl = self.provisioning.template(template_id)
        self._may_issue(template_id)
        record = await self.provisioning.create_device(template_id, name or tpl.name)
        return await self._pend(record.id, template_id, NEW, record.token)

    async def issue_reprovision_token(self, device_id: int) -> ProvisionToken:
        """A new token for an existing device, keeping its id and data (Blynk's re-provisioning): the
        old token is refused at once; the new one must be used before it expires."""
        dev = self.domain.device(device_id)
        if dev is None:
            raise NotFound("Device not found.")
        self._may_issue(dev.template.id)
        kind = self.pending[device_id].kind if device_id in self.pending else REPROVISION
        record = await self.provisioning.replace_token(device_id)
        return await self._pend(device_id, record.template_id, kind, record.token)

    def pending_tokens(self, template_id: str | None = None) -> list[dict]:
        """The tokens not used yet (expired ones included until swept), oldest first; never the token."""
        now = self.clock()
        return [
            p.as_dict() | {"expired": p.expires_at <= now}
            for p in sorted(self.pending.values(), key=lambda p: (p.issued_at, p.device_id))
            if template_id is None or p.template_id == template_id
        ]

    def _live(self) -> Iterator[Pending]:
        now = self.clock()
        return (p for p in self.pending.values() if p.expires_at > now and self.domain.device(p.device_id))

    def _may_issue(self, template_id: str) -> None:
        if template_id not in self.allowed:
            self.stats.refused["disabled"] += 1
            raise Forbidden("Dynamic provisioning is not allowed for this template.")
        if sum(1 for p in self._live() if p.template_id == template_id) >= self.max_pending:
            self.stats.refused["pending_limit"] += 1
            raise TooMany(f"Too many pending provision tokens for this template (at most {self.max_pending}).")
        if not self.rate.take():
            self.stats.refused["rate"] += 1
            raise TooMany(f"Too many provision tokens: at most {self.rate.burst:g} per minute.")

    async def _pend(self, device_id: int, template_id: str, kind: str, token: str) -> ProvisionToken:
        issued = self.clock()
        p = Pending(device_id, template_id, kind, issued, issued + self.ttl_ms)
        await self.store.run(
            self.store.execute,
            "INSERT OR REPLACE INTO provision_pending (device_id, kind, issued_at, expires_at) VALUES (?, ?, ?, ?)",
            (device_id, kind, p.issued_at, p.expires_at),
        )
        self.pending[device_id] = p
        self.stats.issued[kind] += 1
        log.info("provision token issued device=%d template=%s kind=%s", device_id, template_id, kind)
        return ProvisionToken(token, device_id, template_id, kind, p.expires_at)

    async def sweep(self) -> int:
        """Delete the devices created for tokens that expired unused; the number deleted. A device
        re-provisioned with a token that expired stays (with its data), refused until a new token."""
        now = self.clock()
        for p in [p for p in self.pending.values() if self.domain.device(p.device_id) is None]:
            del self.pending[p.device_id]  # deleted meanwhile (its row went with it)
        gone = [p for p in self.pending.values() if p.kind == NEW and p.expires_at <= now]
        for p in gone:
            self.pending.pop(p.device_id, None)
            try:
                await self.provisioning.delete_device(p.device_id)  # its pending row goes with it
            except NotFound:
                pass
            self.stats.expired += 1
            log.info("provision token expired unused device=%d template=%s: device deleted", p.device_id, p.template_id)
        return len(gone)

    # --- the domain's checks (on the loop, from the device's session) ---------------------------

    def _may_log_in(self, dev: DeviceState) -> bool:
        p = self.pending.get(dev.id)
        if p is None or p.expires_at > self.clock():
            return True
        self.stats.refused["expired"] += 1
        return False

    def _activate(self, dev: DeviceState, template_id: str | None) -> bool:
        p = self.pending.get(dev.id)
        if p is None:
            return True
        if p.expires_at <= self.clock():
            self.stats.refused["expired"] += 1
            return False
        if template_id != dev.template.id:
            self.stats.refused["template"] += 1
            log.info("provision refused device=%d template=%s: info names another template", dev.id, dev.template.id)
            return False
        del self.pending[dev.id]
        self.stats.activated[p.kind] += 1
        fut = self.store.submit(self.store.execute, "DELETE FROM provision_pending WHERE device_id = ?", (dev.id,))
        fut.add_done_callback(_log_failure)
        log.info("device activated device=%d template=%s kind=%s", dev.id, dev.template.id, p.kind)
        return True

    # --- claim ----------------------------------------------------------------------------------

    async def claim(self, device_id: int, name: object = None, owner: object = None) -> dict:
        """Record who owns an activated device (free text, e.g. an e-mail) and optionally rename it."""
        if self.domain.device(device_id) is None:
            raise NotFound("Device not found.")
        if device_id in self.pending:
            raise ProvisioningError("The device is not activated yet.")
        owner_text = None if owner is None else str(owner).strip()
        if owner_text is not None and (not 1 <= len(owner_text) <= MAX_OWNER or not owner_text.isprintable()):
            raise ProvisioningError(f"An owner is 1..{MAX_OWNER} printable characters.")
        if name is not None:
            await self.provisioning.rename_device(device_id, name)
        claimed = self.clock()
        await self.store.run(
            self.store.execute,
            "INSERT OR REPLACE INTO device_claims (device_id, owner, claimed_at) VALUES (?, ?, ?)",
            (device_id, owner_text, claimed),
        )
        dev = self.domain.device(device_id)
        log.info("device claimed device=%d", device_id)
        return {
            "id": device_id,
            "name": dev.record.name if dev is not None else None,
            "owner": owner_text,
            "claimed_at": claimed,
        }


def _log_failure(fut) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("provision row not written: %s", fut.exception())


def provision_metrics(stats: ProvisionStats) -> Iterator[Metric]:
    issued = CounterMetricFamily("blynk_provision_tokens_issued", "Provision tokens issued", labels=["kind"])
    activated = CounterMetricFamily(
        "blynk_provision_activations", "Devices activated by a provision token", labels=["kind"]
    )
    for kind in (NEW, REPROVISION):
        issued.add_metric([kind], stats.issued[kind])
        activated.add_metric([kind], stats.activated[kind])
    refused = CounterMetricFamily(
        "blynk_provision_refused", "Provision tokens refused (issue or use), by reason", labels=["reason"]
    )
    for reason in ("disabled", "pending_limit", "rate", "expired", "template"):
        refused.add_metric([reason], stats.refused[reason])
    yield issued
    yield activated
    yield refused
    yield CounterMetricFamily(
        "blynk_provision_expired", "Devices created for a provision token that expired unused", value=stats.expired
    )
    yield GaugeMetricFamily(
        "blynk_provision_pending", "Provision tokens issued and not used yet", value=stats.pending()
    )


# --- device API -----------------------------------------------------------------------------------


def add_device_routes(app: web.Application, domain: Domain) -> None:
    """``GET /external/api/provision?token=&templateId=`` (Blynk's device HTTPS API): completes the
    activation of a device with a pending provision token over HTTP, as its first info message does.
    200 with an empty body; a token unknown, expired, or of another template: ``400 Invalid token.``"""

    async def provision(request: web.Request) -> web.Response:
        dev = token_device(domain, request, request.query.get("token"))
        if not domain.activate(dev, request.query.get("templateId")):
            raise ApiError("Invalid token.")
        return web.Response(status=200)

    app.router.add_get("/external/api/provision", provision)
    app.router.add_get("/external/api/provision/", provision)


# --- admin API ------------------------------------------------------------------------------------


def add_admin_routes(app: web.Application, service: DeviceProvisioning) -> None:
    """Allow provisioning on a template, issue (re-)provision tokens, list pending ones, claim a device."""
    domain = service.domain

    def text(body: dict, key: str) -> str | None:
        value = body.get(key)
        if value is not None and not isinstance(value, str):
            raise ApiError(f"{key} must be a string.")
        return value

    async def get_template(request: web.Request) -> web.Response:
        return web.json_response(service.template_state(request.match_info["template_id"]))

    async def put_template(request: web.Request) -> web.Response:
        body = await json_object(request, empty_ok=True)
        return web.json_response(await service.set_allowed(request.match_info["template_id"], body.get("allowed")))

    async def issue(request: web.Request) -> web.Response:
        body = await json_object(request, empty_ok=True)
        tid = text(body, "template_id") or text(body, "templateId")
        if not tid:
            raise ApiError("template_id is required.")
        issued = await service.issue_provision_token(tid, text(body, "name"))
        return web.json_response(issued.as_dict(), status=201)

    async def reissue(request: web.Request) -> web.Response:
        dev = device_or_404(domain, request)
        return web.json_response((await service.issue_reprovision_token(dev.id)).as_dict(), status=201)

    async def pending(request: web.Request) -> web.Response:
        tid = request.query.get("template_id")
        if tid is not None:
            service.provisioning.template(tid)
        return web.json_response(service.pending_tokens(tid))

    async def claim(request: web.Request) -> web.Response:
        dev = device_or_404(domain, request)
        body = await json_object(request, empty_ok=True)
        return web.json_response(await service.claim(dev.id, text(body, "name"), text(body, "owner")))

    r = app.router
    r.add_get("/api/templates/{template_id}/provisioning", get_template)
    r.add_put("/api/templates/{template_id}/provisioning", put_template)
    r.add_post("/api/provision/token", issue)
    r.add_get("/api/provision/pending", pending)
    r.add_post("/api/devices/{device_id}/provision/token", reissue)
    r.add_post("/api/devices/{device_id}/claim", claim)


__all__ = [
    "DeviceProvisioning",
    "Pending",
    "ProvisionStats",
    "ProvisionToken",
    "add_admin_routes",
    "add_device_routes",
    "provision_metrics",
]
