"""The admin API key: stored only as a hash, checked in constant time.

The plain key is shown once at first start and kept for the operator in ``<data dir>/admin-api-key``
(mode 0600); the database holds ``sha256:<hex>``, so a copy of ``blynk.sqlite3`` does not open the
admin API.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX = "sha256:"


def new_key() -> str:
    return secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """What the store keeps for ``key``. The key is 256 random bits, so one round of SHA-256 is enough."""
    return PREFIX + hashlib.sha256(key.encode()).hexdigest()


def is_hashed(stored: str) -> bool:
    return stored.startswith(PREFIX)


def check_key(presented: str | None, stored_hash: str) -> bool:
    """Does ``presented`` match the stored hash? False when either is empty."""
    if not presented or not stored_hash:
        return False
    return hmac.compare_digest(hash_key(presented).encode(), stored_hash.encode())
