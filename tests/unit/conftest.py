"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def keep_umask():
    """The CLI's main() makes the process's umask private; give the test process its own back."""
    umask = os.umask(0o077)
    yield
    os.umask(umask)
