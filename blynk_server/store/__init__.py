"""Persistence: the ``Store`` interface and its SQLite implementation."""

from blynk_server.store.sqlite import SqliteStore

__all__ = ["SqliteStore"]
