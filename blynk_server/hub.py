"""Who is online and the one place that delivers a server→device message."""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger(__name__)


class DeviceLink(Protocol):
    """What the hub, OTA and the doors may use of a connected device (a hardware session, a WebSocket
    session); nothing else of a session is read from outside it."""

    device: object  # the DeviceState logged in on this link (None before login)
    info_acked: bool  # the device's info message was answered: server pushes may start (OTA waits for it)
    buff_in: int | None  # the device's receive buffer from its info message; None when not reported

    def local_host(self) -> str | None:
        """The local address this connection reached the server on (for links a device can follow)."""
        ...

    def push(self, command: int, body: bytes, msg_id: int | None = None) -> bool: ...

    def close(self, reason: str) -> None: ...


class Hub:
    def __init__(self) -> None:
        self._links: dict[int, DeviceLink] = {}

    def __len__(self) -> int:
        return len(self._links)

    def attach(self, device_id: int, link: DeviceLink) -> DeviceLink | None:
        """Register the newest connection of a device; returns the one it replaces, if any."""
        old = self._links.get(device_id)
        self._links[device_id] = link
        return old if old is not link else None

    def detach(self, device_id: int, link: DeviceLink) -> bool:
        """Forget ``link`` if it is still the device's current one (a replaced link is not)."""
        if self._links.get(device_id) is link:
            del self._links[device_id]
            return True
        return False

    def link(self, device_id: int) -> DeviceLink | None:
        return self._links.get(device_id)

    def is_online(self, device_id: int) -> bool:
        return device_id in self._links

    def send(self, device_id: int, command: int, body: bytes, msg_id: int | None = None) -> bool:
        """Deliver to the device's current connection; False when it is offline or the frame was dropped."""
        link = self._links.get(device_id)
        return link.push(command, body, msg_id) if link is not None else False

    def close(self, device_id: int, reason: str) -> None:
        link = self._links.get(device_id)
        if link is not None:
            link.close(reason)

    def links(self) -> list[DeviceLink]:
        return list(self._links.values())
