"""The shipper's run around the drain: losing the lease (one exit code by either route)
and side tasks that die (the shipper stops loudly instead of running on unwatched)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from outbox import leases
from shipper import Shipper
from shipper.errors import LeaseLost, SideTaskDied
from shipper.lease import LEASE_LOST
from shipper.testing import InMemoryLink
from tests.fixtures.shipper import REPO, shipper_env, write_events
from tests.unit.helpers import NO_NATS, lease_row, steal_lease, unit_config
from usage_demo.waiting import wait_until, wait_until_sync


def _holds_lease(path: Path, shipper: Shipper) -> bool:
    lease = lease_row(path)
    return lease is not None and lease["owner"] == shipper.owner


async def test_losing_the_lease_to_the_keepers_renewal_ends_the_run_with_lease_lost(
    outbox_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = unit_config(outbox_path, exit_when_idle=False, lease_ttl=0.6)
    shipper = Shipper(config, link=InMemoryLink())
    task = asyncio.create_task(shipper.run())
    await wait_until(lambda: _holds_lease(outbox_path, shipper), message="lease taken")
    await asyncio.to_thread(steal_lease, outbox_path)  # the loop keeps running meanwhile
    with pytest.raises(LeaseLost, match="lost the outbox lease"):
        await asyncio.wait_for(task, 10)
    lost = [r for r in caplog.records if getattr(r, "action", "") == "lease_lost"]
    assert len(lost) == 1 and lost[0].levelno == logging.ERROR
    assert lost[0].getMessage() == LEASE_LOST


async def test_losing_the_lease_found_by_a_claim_ends_the_run_the_same_way(
    outbox_path: Path,
) -> None:
    """The keeper renews once a minute here: the drain's next claim finds out first, and
    what it claimed is left alone for the lease's new holder."""
    config = unit_config(outbox_path, exit_when_idle=False, lease_ttl=180)
    link = InMemoryLink()
    shipper = Shipper(config, link=link)
    task = asyncio.create_task(shipper.run())
    await wait_until(lambda: link.connects == 1, message="shipping")
    await asyncio.to_thread(steal_lease, outbox_path)
    ids = await write_events(outbox_path, 5)
    with pytest.raises(LeaseLost, match="lost the outbox lease"):
        await asyncio.wait_for(task, 10)
    assert link.sent_ids == []
    assert lease_row(outbox_path)["owner"] == "another-host:1:thief"  # type: ignore[index]
    assert len(ids) == 5


async def test_a_killed_lease_keeper_stops_the_shipper_loudly(
    outbox_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shipper = Shipper(unit_config(outbox_path, exit_when_idle=False), link=InMemoryLink())
    task = asyncio.create_task(shipper.run())
    await wait_until(lambda: _holds_lease(outbox_path, shipper), message="lease taken")
    (keeper,) = [t for t in asyncio.all_tasks() if t.get_name() == "lease-keeper"]
    keeper.cancel()
    with pytest.raises(SideTaskDied, match="side task lease-keeper died"):
        await asyncio.wait_for(task, 10)
    died = [r for r in caplog.records if getattr(r, "action", "") == "side_task_died"]
    assert len(died) == 1 and died[0].levelno == logging.ERROR
    assert lease_row(outbox_path) is None  # stopped cleanly: the lease handed back


async def test_a_crashing_lease_keeper_stops_the_shipper_with_its_error(
    outbox_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipper = Shipper(
        unit_config(outbox_path, exit_when_idle=False, lease_ttl=0.6), link=InMemoryLink()
    )
    task = asyncio.create_task(shipper.run())
    await wait_until(lambda: _holds_lease(outbox_path, shipper), message="lease taken")

    def broken(*_args: object, **_kwargs: object) -> bool:
        raise RuntimeError("a bug in the renewal")

    monkeypatch.setattr(leases, "take_lease", broken)  # the keeper's next renewal
    with pytest.raises(SideTaskDied, match="RuntimeError: a bug in the renewal") as raised:
        await asyncio.wait_for(task, 10)
    assert isinstance(raised.value.__cause__, RuntimeError)


def test_the_cli_exits_1_with_one_line_when_the_lease_is_lost(
    outbox_path: Path, tmp_path: Path
) -> None:
    """The real CLI, pointed at a NATS nobody serves: it takes the lease and backs off;
    its lease keeper finds the lease taken and the process ends with exit 1."""
    env = shipper_env(USAGE_OUTBOX_URL=str(outbox_path), NATS_URL=NO_NATS)
    args = ("run", "--lease-ttl", "0.6", "--backoff-cap", "0.2", "--log-format", "json")
    with (tmp_path / "stderr").open("w+") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "shipper", *args],
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:

            def holds() -> bool:
                lease = lease_row(outbox_path)
                return lease is not None and f":{process.pid}:" in lease["owner"]

            wait_until_sync(holds, 20, message="the CLI took the lease")
            steal_lease(outbox_path)
            assert process.wait(20) == 1
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        stderr.seek(0)
        lines = stderr.read().splitlines()
    assert f"usage-shipper: {LEASE_LOST}" in lines
    assert sum("lease_lost" in line for line in lines) == 1  # one log line, then the summary
