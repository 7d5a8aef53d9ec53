"""Persistence: the SQLite store (``sqlite``), its write-behind batches (``batch``), recovery files
(``recovery``) and retention (``retention``)."""

from blynk_server.store.sqlite import SqliteStore

__all__ = ["SqliteStore"]
