"""The one shape of a refusal the doors answer: a message for the client and the HTTP status."""

from __future__ import annotations


class Refused(Exception):
    """A refused request or definition; each part subclasses it so its callers can tell them apart."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
