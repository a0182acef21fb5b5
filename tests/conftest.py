"""Shared pytest set-up. Fixtures live in one module per concern, loaded as plugins."""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.databases",
    "tests.fixtures.nats",
    "tests.fixtures.billing",
    "tests.fixtures.shipper",
]
