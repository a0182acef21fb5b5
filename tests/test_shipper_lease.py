"""One shipper per outbox file: a second one waits for the lease and takes over when the
first is gone (stopped cleanly, or killed on this host: at once; otherwise once its
lease expires)."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.shipper import (
    CliProcesses,
    ShipperRunner,
    execute,
    lease,
    msg_ids,
    pending,
    read_stream,
    shipper_config,
    shipper_env,
    write_events,
)
from usage_demo.natsserver import NatsServer
from usage_demo.waiting import wait_until

TTL = 2.0


def _records(caplog: pytest.LogCaptureFixture, action: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "action", None) == action]


async def test_a_second_shipper_waits_and_takes_over_at_once_when_the_first_is_killed(
    outbox_path: Path,
    nats_server: NatsServer,
    run_shipper: ShipperRunner,
    cli_processes: CliProcesses,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    ids = await write_events(outbox_path, 100)
    first = cli_processes.start(
        "run",
        env=shipper_env(
            USAGE_OUTBOX_URL=str(outbox_path),
            NATS_URL=nats_server.url,
            SHIPPER_LEASE_TTL=str(TTL),
            SHIPPER_BACKOFF_CAP="0.5",
        ),
        log_path=tmp_path / "first.log",
    )
    await wait_until(lambda: pending(outbox_path) == 0, 15, message="the first one ships")
    holder = lease(outbox_path)
    assert holder is not None and f":{first.pid}:" in holder["owner"]

    second, _task = run_shipper.start(
        shipper_config(outbox_path, nats_server.url, exit_when_idle=False, lease_ttl=TTL)
    )
    await wait_until(lambda: _records(caplog, "lease_wait"), message="the second one waits")
    (waiting,) = _records(caplog, "lease_wait")
    assert holder["owner"] in waiting.getMessage() and "waiting" in waiting.getMessage()

    # While the first lives, it alone ships; the second does not even connect.
    ids += await write_events(outbox_path, 100)
    await wait_until(lambda: pending(outbox_path) == 0, 10, message="the first ships more")
    assert second.stats.published == 0 and second.stats.connections == 0
    assert lease(outbox_path)["owner"] == holder["owner"]  # type: ignore[index]

    expires_before_kill = lease(outbox_path)["expires_at"]  # type: ignore[index]
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    ids += await write_events(outbox_path, 100)
    await wait_until(lambda: pending(outbox_path) == 0, TTL + 10, message="the second took over")

    # Same host, its process gone: nobody can renew that lease, so no waiting it out.
    (over,) = _records(caplog, "lease_taken_over")
    assert holder["owner"] in over.getMessage() and f"no process {first.pid}" in over.getMessage()
    (taken,) = _records(caplog, "lease_taken")
    assert taken.created < expires_before_kill
    assert lease(outbox_path)["owner"] == second.owner  # type: ignore[index]
    assert second.stats.published == 100  # exactly the events written after the kill
    counts = Counter(msg_ids(await read_stream(nats_server.url)))
    assert counts == Counter(ids)  # every event once, whoever shipped it


async def test_a_clean_stop_hands_the_lease_over_at_once(
    outbox_path: Path,
    nats_server: NatsServer,
    run_shipper: ShipperRunner,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    long_ttl = 4.5  # the waiting one looks every ttl/3
    first, first_task = run_shipper.start(
        shipper_config(outbox_path, nats_server.url, exit_when_idle=False, lease_ttl=long_ttl)
    )
    await wait_until(lambda: first.stats.connections == 1, message="first connected")
    second, _task = run_shipper.start(
        shipper_config(outbox_path, nats_server.url, exit_when_idle=False, lease_ttl=long_ttl)
    )
    await wait_until(lambda: _records(caplog, "lease_wait"), message="second waits")
    ids = await write_events(outbox_path, 30)
    await wait_until(lambda: pending(outbox_path) == 0, message="first ships")
    assert (first.stats.published, second.stats.published) == (30, 0)

    expires = lease(outbox_path)["expires_at"]  # type: ignore[index]
    first.stop()
    await first_task
    ids += await write_events(outbox_path, 30)
    await wait_until(lambda: pending(outbox_path) == 0, long_ttl, message="handover")
    (taken,) = _records(caplog, "lease_taken")[1:]  # the first one's, then the second's
    assert taken.created < expires  # handed over, not waited out
    assert second.stats.published == 30
    assert Counter(msg_ids(await read_stream(nats_server.url))) == Counter(ids)


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The PID of a process that stays alive for the test."""
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) as alive:
        try:
            yield alive.pid
        finally:
            alive.kill()


@pytest.mark.parametrize("holder", ["another-host:{pid}:0a1b2c3d", "{host}:{pid}:0a1b2c3d"])
async def test_a_holder_not_provably_gone_is_waited_for(
    outbox_path: Path,
    nats_server: NatsServer,
    run_shipper: ShipperRunner,
    caplog: pytest.LogCaptureFixture,
    live_pid: int,
    holder: str,
) -> None:
    """A lease held from another host (its PID means nothing here), or by a live process
    on this one, blocks a successor until it expires."""
    caplog.set_level(logging.INFO)
    ids = await write_events(outbox_path, 10)
    owner = holder.format(pid=live_pid, host=socket.gethostname())
    expires = time.time() + TTL
    execute(
        outbox_path,
        "INSERT INTO usage_outbox_lease (name, owner, expires_at) VALUES ('shipper', ?, ?)",
        owner,
        expires,
    )
    stats = await run_shipper.run(
        shipper_config(outbox_path, nats_server.url, lease_ttl=TTL), TTL + 15
    )
    assert stats.published == len(ids)
    assert _records(caplog, "lease_wait") and not _records(caplog, "lease_taken_over")
    (taken,) = _records(caplog, "lease_taken")
    assert taken.created >= expires


async def test_a_cli_shipper_whose_claim_finds_the_lease_taken_exits_1(
    outbox_path: Path, nats_server: NatsServer, cli_processes: CliProcesses, tmp_path: Path
) -> None:
    """The drain's route to a lost lease (the keeper renews only every 20 s here): the
    next claim after the lease was taken ends the process with the same exit code and
    line as the keeper's route (tests/unit/test_lifecycle.py), and ships nothing more."""
    await write_events(outbox_path, 10)
    log = tmp_path / "shipper.log"
    process = cli_processes.start(
        "run",
        env=shipper_env(
            USAGE_OUTBOX_URL=str(outbox_path),
            NATS_URL=nats_server.url,
            SHIPPER_LEASE_TTL="60",
            SHIPPER_BACKOFF_CAP="0.5",
        ),
        log_path=log,
    )
    await wait_until(lambda: pending(outbox_path) == 0, 15, message="it ships")
    execute(
        outbox_path,
        "UPDATE usage_outbox_lease SET owner = 'another-host:1:thief', expires_at = ?",
        time.time() + 600,
    )
    await write_events(outbox_path, 5)
    await wait_until(lambda: process.poll() is not None, 15, message="the shipper exits")
    assert process.returncode == 1
    lines = log.read_text().splitlines()
    assert "usage-shipper: lost the outbox lease to another shipper; stopping" in lines
    assert pending(outbox_path) == 5  # left for the lease's new holder
    assert len(await read_stream(nats_server.url)) == 10
