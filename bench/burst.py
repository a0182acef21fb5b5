"""Burst-run benchmark: what a ``usage-shipper run --exit-when-idle`` of a fresh backlog
costs with each vacuum setting, beside the same run with the vacuum off.

    .venv/bin/python -m bench.burst              # 50,000 events, each setting twice
    .venv/bin/python -m bench.burst --quick      # 10,000 events, once each

Each run: a fresh outbox file filled with ``--events`` events through ``Outbox`` (as a
service writes them), then a shipper with ``exit_when_idle`` (in this process, against an
embedded nats-server) from start to exit, timed. Settings, in alternating order so drift on
a shared machine hits them alike:

* ``default``: ``ShipperConfig`` as a new user gets it (no vacuum setting given);
* ``vacuum 0``: ``--vacuum-pages 0``, the floor: drain only;
* ``vacuum 64``: ``--vacuum-pages 64`` given explicitly: the run also gives the drained
  backlog's pages back before it exits.

Printed: run time (median over the repeats), file size (db+wal) after the run, pages given
back, and the ratio to the floor. Goal (issue 15 item 6): the default costs a new user
nothing they did not ask for, i.e. ``default`` <= 1.15x ``vacuum 0`` (noise allowance).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from outbox import Outbox
from outbox.sqlite import sqlite_url
from shipper.collector import tune_collector
from shipper.config import ShipperConfig
from shipper.worker import Shipper
from usage_demo.natsserver import NatsServer
from usage_demo.traffic import usage_args

SETTINGS: dict[str, int | None] = {"default": None, "vacuum 0": 0, "vacuum 64": 64}
GOAL_RATIO = 1.15


@dataclass
class Runs:
    seconds: list[float] = field(default_factory=list)
    size_after: int = 0
    vacuumed: int = 0


def _size(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-writelock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def _fill(path: Path, events: int) -> None:
    async with Outbox(path) as outbox:
        for start in range(0, events, 10_000):
            await outbox.record_many(
                usage_args(i) for i in range(start, min(events, start + 10_000))
            )


async def _burst(path: Path, server: NatsServer, vacuum_pages: int | None) -> tuple[float, int]:
    settings: dict[str, object] = {
        "database_url": sqlite_url(path),
        "nats_servers": (server.url,),
        "exit_when_idle": True,
    }
    if vacuum_pages is not None:
        settings["vacuum_pages"] = vacuum_pages
    shipper = Shipper(ShipperConfig(**settings).validate())  # type: ignore[arg-type]
    tune_collector()  # as the daemon does (usage-shipper run)
    started = time.perf_counter()
    stats = await shipper.run()
    return time.perf_counter() - started, stats.vacuumed_pages


async def main_async(events: int, repeats: int) -> dict[str, Runs]:
    results = {name: Runs() for name in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="bench-burst-") as tmp:
        work = Path(tmp)
        server = NatsServer(work / "nats").start()
        try:
            for repeat in range(repeats):
                names = list(SETTINGS) if repeat % 2 == 0 else list(reversed(SETTINGS))
                for name in names:
                    path = work / f"outbox-{repeat}-{name.replace(' ', '')}.db"
                    await _fill(path, events)
                    seconds, vacuumed = await _burst(path, server, SETTINGS[name])
                    runs = results[name]
                    runs.seconds.append(seconds)
                    runs.size_after, runs.vacuumed = _size(path), vacuumed
                    _remove(path)
        finally:
            server.stop()
    return results


def print_table(events: int, results: dict[str, Runs]) -> bool:
    floor = statistics.median(results["vacuum 0"].seconds)
    print(f"burst runs (--exit-when-idle) of a fresh {events:,}-event backlog")
    print(
        f"{'setting':10} {'runs':>4} {'run s (median)':>15} {'all runs s':>22} "
        f"{'after MiB':>10} {'pages back':>10} {'vs vacuum 0':>11}"
    )
    for name, runs in results.items():
        median = statistics.median(runs.seconds)
        each = " ".join(f"{s:.2f}" for s in runs.seconds)
        print(
            f"{name:10} {len(runs.seconds):>4} {median:>15.2f} {each:>22} "
            f"{runs.size_after / 2**20:>10.2f} {runs.vacuumed:>10,} {median / floor:>10.2f}x"
        )
    ratio = statistics.median(results["default"].seconds) / floor
    passed = ratio <= GOAL_RATIO
    print(
        f"default costs {ratio:.2f}x the vacuum-off run (floor, same run): goal <= "
        f"{GOAL_RATIO}x: {'PASS' if passed else 'MISS'}"
    )
    return passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="10,000 events, one run each")
    args = parser.parse_args()
    events, repeats = (10_000, 1) if args.quick else (args.events, args.repeats)
    results = asyncio.run(main_async(events, repeats))
    return 0 if print_table(events, results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
