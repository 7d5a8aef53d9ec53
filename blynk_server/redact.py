"""Device tokens kept out of log lines, including lines of libraries (aiohttp logs the raw request
line of a request it refuses) and tracebacks.

A token opens a device; logs are read by more people than the data dir. The formatter replaces
``token=<value>``, the token segment of a legacy ``/<token>/...`` path, and any word shaped like an
issued token (32 URL-safe base64 characters, not all hex, so MD5 sums stay readable) with ``***``.
"""

from __future__ import annotations

import logging
import re

MASK = "***"
_QUERY = re.compile(r"((?:[?&;\s,(]|^)token=)[^&\s\"',;)]+", re.IGNORECASE)
_LEGACY_PATH = re.compile(
    r"(/)[A-Za-z0-9_\-.~%]{4,256}(/(?:get|update|pin|extra|isHardwareConnected|isAppConnected|notify|email|qr|"
    r"project|rtc|data)\b)"
)
_TOKEN_WORD = re.compile(r"(?<![A-Za-z0-9_\-])[A-Za-z0-9_\-]{32}(?![A-Za-z0-9_\-])")
_HEX = frozenset("0123456789abcdefABCDEF")


def _word(m: re.Match) -> str:
    word = m.group(0)
    return word if all(c in _HEX for c in word) else MASK


def redact(text: str) -> str:
    """``text`` with every device token in it masked."""
    if not text:
        return text
    text = _QUERY.sub(lambda m: m.group(1) + MASK, text)
    text = _LEGACY_PATH.sub(lambda m: m.group(1) + MASK + m.group(2), text)
    return _TOKEN_WORD.sub(_word, text)


class RedactingFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose output, traceback included, has no device token in it."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
