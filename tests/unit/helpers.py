"""What the unit tests share: a shipper on a real SQLite outbox with an in-memory link.

Imports nothing that can start a nats-server (``test_tier.py`` checks it).
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from shipper import Shipper, ShipperConfig, ShipperStats
from shipper.testing import InMemoryLink
from tests.fixtures.shipper import shipper_config

#: Where the shipper would look for NATS: nothing listens there, and the in-memory link
#: never looks.
NO_NATS = "nats://127.0.0.1:9"


def unit_config(path: Path, **overrides: Any) -> ShipperConfig:
    return shipper_config(path, NO_NATS, **overrides)


async def ship(
    config: ShipperConfig, link: InMemoryLink | None = None, *, within: float = 20.0
) -> tuple[ShipperStats, InMemoryLink]:
    """Run a shipper on ``link`` to its end (burst mode) within ``within`` seconds."""
    link = link if link is not None else InMemoryLink()
    stats = await asyncio.wait_for(Shipper(config, link=link).run(), within)
    return stats, link


def lease_row(path: Path) -> sqlite3.Row | None:
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        row: sqlite3.Row | None = conn.execute("SELECT * FROM usage_outbox_lease").fetchone()
        return row


def steal_lease(path: Path, owner: str = "another-host:1:thief") -> None:
    """Another shipper takes the lease (as one would after this one's expired)."""
    with closing(sqlite3.connect(path, timeout=30)) as conn, conn:
        conn.execute(
            "UPDATE usage_outbox_lease SET owner = ?, expires_at = strftime('%s','now') + 600",
            (owner,),
        )
