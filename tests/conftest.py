"""Shared fixtures; builders live in tests/factories.py."""

from __future__ import annotations

import pytest

from landmarks.hourglass import LandmarkHourglass
from tests.factories import make_tiny_core


@pytest.fixture
def tiny_core() -> LandmarkHourglass:
    return make_tiny_core()
