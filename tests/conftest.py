"""Shared test fixtures. Fixture families live in their own modules, loaded here."""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.media",
    "tests.fixtures.mqtt",
    "tests.fixtures.rtsp",
]
