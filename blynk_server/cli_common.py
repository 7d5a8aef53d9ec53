"""What the ``blynk-server`` commands share: their errors, settings, and who does the work.

A provisioning command either asks the server that runs on the data dir (over its control socket,
through the admin API: :class:`Remote`) or, when none runs, takes the data dir's lock and works on the
store itself (:class:`Local`). :func:`open_data_dir` makes that choice; ``cli.py`` and ``ota/cli.py``
write each command once against both.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlencode

from blynk_server import config
from blynk_server.control import ControlClient, ControlError, DataDirBusy, DataDirLock, error_message
from blynk_server.domain import DeviceState, Domain
from blynk_server.eventdefs import load_rows
from blynk_server.hub import Hub
from blynk_server.store import SqliteStore
from blynk_server.store.sqlite import StoreUnavailable


class CliError(Exception):
    """A user error (a bad argument, a refused request): printed as one line on stderr, exit status 2."""


class ServerFailed(Exception):
    """The running server did not answer or failed (5xx): printed as one line on stderr, exit status 1."""


def add_common(p: argparse.ArgumentParser) -> None:
    """``--config`` and ``--data-dir`` of a sub-command. Absent, they leave what the main parser took:
    ``blynk-server --data-dir D device list`` works as ``blynk-server device list --data-dir D``."""
    p.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="TOML settings file")
    p.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help="data directory (default ./blynk-data)")


SETTING_FLAGS = (
    "data_dir",
    "host",
    "port",
    "tls_port",
    "cert",
    "key",
    "admin_host",
    "admin_port",
    "external_url",
    "flush_interval",
    "message_rate",
    "history_days",
    "events_days",
    "log_level",
    "smtp_host",
    "smtp_port",
    "smtp_user",
    "smtp_password",
    "smtp_from",
    "smtp_starttls",
    "platform_on_device_port",
)


def settings_from(args: argparse.Namespace) -> config.Settings:
    overrides = {name: getattr(args, name, None) for name in SETTING_FLAGS}
    return config.load(getattr(args, "config", None), overrides=overrides)


def open_store(args: argparse.Namespace) -> SqliteStore:
    return SqliteStore(settings_from(args).data_dir)


@dataclass
class Local:
    """No server runs: this command holds the data dir's lock and has the store to itself."""

    settings: config.Settings
    store: SqliteStore

    def domain(self) -> Domain:
        """The store's templates, devices and declared events in memory, as a server holds them: what
        the services (provisioning, events, webhooks, automations) work on without a server."""
        domain = Domain(self.store, Hub(), self.settings)
        domain.load_snapshot(self.store.load_all())
        domain.event_defs.load(*load_rows(self.store))
        return domain

    @staticmethod
    def device(domain: Domain, ref: str) -> DeviceState:
        """The device named by ``ref``: an id, else a token (all digits may be either)."""
        dev = domain.device(int(ref)) if ref.isdigit() else None
        dev = dev or domain.device_by_token(ref)
        if dev is None:
            raise CliError(f"no device {ref!r}")
        return dev


@dataclass
class Remote:
    """A server runs on the data dir: every change goes through its admin API."""

    settings: config.Settings
    client: ControlClient

    def device(self, ref: str) -> dict:
        """The admin API's device named by ``ref``: an id, else a token (all digits may be either)."""
        if ref.isdigit():
            try:
                return self.call("GET", f"/api/devices/{ref}", not_found="")[1]
            except CliError:
                pass  # no such id: it may be an all-digit token
        # Matched here too: the token is the whole key, whatever the query matches.
        found = [d for d in self.call("GET", "/api/devices?" + urlencode({"token": ref}))[1] if d["token"] == ref]
        if not found:
            raise CliError(f"no device {ref!r}")
        return found[0]

    def call(
        self,
        method: str,
        path: str,
        json_body: object = None,
        *,
        body: bytes | BinaryIO | None = None,
        headers: dict[str, str] | None = None,
        not_found: str | None = None,
    ) -> tuple[int, object]:
        """``(status, body)`` of a 2xx answer. A 4xx is a :class:`CliError` with the server's message
        (``not_found`` instead for a 404, when given); anything else is :class:`ServerFailed`."""
        try:
            status, data = self.client.request(method, path, json_body, body=body, headers=headers)
        except ControlError as exc:
            raise ServerFailed(str(exc)) from None
        if 200 <= status < 300:
            return status, data
        if status == 404 and not_found is not None:
            raise CliError(not_found)
        if 400 <= status < 500:
            raise CliError(error_message(data, status))
        raise ServerFailed(f"the server failed: {error_message(data, status)}")


@contextlib.contextmanager
def open_data_dir(args: argparse.Namespace) -> Iterator[Local | Remote]:
    """The running server's :class:`Remote`, or the store under this command's lock (:class:`Local`).

    Another command holding the lock is a :class:`~blynk_server.control.DataDirBusy` (exit 2): commands
    do not queue behind each other."""
    settings = settings_from(args)
    data_dir = settings.data_dir
    lock = DataDirLock(data_dir, role="cli")
    for _ in range(3):  # the holder may let go between our try and our look at it
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if lock.acquire():
                break
        except OSError as exc:
            raise StoreUnavailable(f"cannot use the data dir {data_dir}: {exc.strerror or exc}") from None
        holder = lock.holder()
        if holder is None:
            continue
        if holder.role == "cli":
            raise DataDirBusy(data_dir, holder)
        yield Remote(settings, ControlClient(data_dir))
        return
    else:
        raise DataDirBusy(data_dir, lock.holder())
    try:
        store = SqliteStore(data_dir)
        try:
            yield Local(settings, store)
        finally:
            store.close()
    finally:
        lock.release()


__all__ = [
    "CliError",
    "Local",
    "Remote",
    "ServerFailed",
    "add_common",
    "open_data_dir",
    "open_store",
    "settings_from",
]
