"""SIGTERM in the middle of a large backlog: a prompt exit 0, nothing lost, and the next
run finishes the rest."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.fixtures.shipper import (
    CliProcesses,
    ShipperRunner,
    lease,
    msg_ids,
    outbox_rows,
    pending,
    read_stream,
    shipper_config,
    shipper_env,
    stream_count,
    write_events,
)
from usage_demo.natsserver import NatsServer
from usage_demo.waiting import wait_until

BACKLOG = 50_000
SHUTDOWN_TIMEOUT = 5.0


async def _shipped(url: str) -> int:
    try:
        return await stream_count(url)
    except Exception:  # the stream does not exist yet
        return 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_signal_mid_backlog_exits_0_promptly_and_loses_nothing(
    outbox_path: Path,
    nats_server: NatsServer,
    run_shipper: ShipperRunner,
    cli_processes: CliProcesses,
    tmp_path: Path,
    signum: signal.Signals,
) -> None:
    ids = await write_events(outbox_path, BACKLOG if signum is signal.SIGTERM else 10_000)
    written = len(ids)
    log_path = tmp_path / "shipper.log"
    process = cli_processes.start(
        "run",
        env=shipper_env(
            USAGE_OUTBOX_URL=str(outbox_path),
            NATS_URL=nats_server.url,
            SHIPPER_BATCH_SIZE="500",
            SHIPPER_MAX_IN_FLIGHT="500",
            SHIPPER_SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
        ),
        log_path=log_path,
    )
    await wait_until(
        lambda: _shipped(nats_server.url), 20, interval=0.005, message="shipping started"
    )
    process.send_signal(signum)
    signalled = time.monotonic()
    try:
        code = process.wait(SHUTDOWN_TIMEOUT + 2)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {SHUTDOWN_TIMEOUT + 2} s after {signum.name}")
    took = time.monotonic() - signalled
    log = log_path.read_text()
    assert code == 0, log
    assert took < SHUTDOWN_TIMEOUT, f"{took:.1f} s to stop"
    assert f"received {signum.name}, stopping" in log and "stopped after" in log
    assert "Traceback" not in log

    left, in_stream = pending(outbox_path), await stream_count(nats_server.url)
    assert 0 < left < written, "the signal landed outside the run: make the backlog larger"
    assert left + in_stream == written  # everything acked was deleted; nothing else was
    assert lease(outbox_path) is None  # released on the way out
    assert all(row["attempts"] == 0 for row in outbox_rows(outbox_path)[:10])

    stats = await run_shipper.run(
        shipper_config(outbox_path, nats_server.url, batch_size=1000, max_in_flight=4000), 60
    )
    assert stats.published == left and stats.duplicates == 0
    assert pending(outbox_path) == 0
    counts = Counter(msg_ids(await read_stream(nats_server.url)))
    assert len(counts) == written and set(counts) == set(ids)
    assert max(counts.values()) == 1


async def test_a_stop_with_nats_hung_still_ends_within_the_shutdown_timeout(
    outbox_path: Path, nats_server: NatsServer, run_shipper: ShipperRunner
) -> None:
    """NATS frozen (SIGSTOP) with a batch in flight: no PubAck will come, and closing the
    connection cannot flush; the stop must still end on time, and nothing is lost."""
    ids = await write_events(outbox_path, 20_000)
    shipper, task = run_shipper.start(
        shipper_config(
            outbox_path,
            nats_server.url,
            exit_when_idle=False,
            batch_size=500,
            max_in_flight=500,
            publish_timeout=10.0,  # longer than the shutdown timeout: the stop must win
            shutdown_timeout=2.0,
        )
    )
    await wait_until(lambda: shipper.stats.published >= 1000, message="shipping")
    nats_server.freeze()
    try:
        shipper.stop()
        stopped = time.monotonic()
        await asyncio.wait_for(asyncio.shield(task), 10)
        took = time.monotonic() - stopped
    finally:
        nats_server.thaw()
    assert took < 2.0 + 0.5, f"{took:.1f} s to stop"
    assert lease(outbox_path) is None

    stats = await run_shipper.run(shipper_config(outbox_path, nats_server.url), 60)
    assert pending(outbox_path) == 0
    counts = Counter(msg_ids(await read_stream(nats_server.url)))
    assert set(counts) == set(ids) and max(counts.values()) == 1
    assert stats.delivered == len(ids) - shipper.stats.published
