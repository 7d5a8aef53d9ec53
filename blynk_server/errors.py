"""The one shape of a refusal the doors answer: a message for the client and the HTTP status."""

from __future__ import annotations

from protocol import Status


class Refused(Exception):
    """A refused request or definition; each part subclasses it so its callers can tell them apart."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class InvalidValue(ValueError):
    """A value the server will not store (wrong type, bad timestamp, over a limit); the message is the
    one the client gets (the Blynk cloud's wording where it has one). ``status`` is the device's
    answer; HTTP clients get 400."""

    status = Status.ILLEGAL_COMMAND
