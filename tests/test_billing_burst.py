"""``usage-billing run --burst`` on a terminal: it says how far it got, and SIGTERM stops it.

The real CLI as a subprocess with its stderr on a pseudo-terminal (progress is printed
only on a terminal), a stream of events billed one per transaction so the run lasts
several seconds.
"""

from __future__ import annotations

import asyncio
import os
import pty
import signal
import sys
import time
from pathlib import Path

from nats.js import JetStreamContext

from billing import jetstream as billing_js
from billing.config import BillingConfig
from tests.fixtures.billing import usage_event

REPO = Path(__file__).resolve().parents[1]


def _read_available(fd: int, into: bytearray) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            return
        if not chunk:
            return
        into.extend(chunk)


async def test_burst_on_a_terminal_prints_progress_and_stops_on_sigterm(
    nats_url: str, jetstream: JetStreamContext, tmp_path: Path
) -> None:
    await billing_js.ensure_stream(jetstream, BillingConfig(nats_url=nats_url))
    # Enough that one event per transaction takes well over the 2 s between progress lines
    # (about 6,000/s measured with the batch's transaction in one thread), published
    # pipelined with every PubAck checked.
    events = 40_000
    acks = []
    for i in range(events):
        event = usage_event(f"u{i % 7}", "gpt-4", input_tokens=i + 1)
        acks.append(
            await jetstream.publish_async(event.subject, event.payload, headers=event.headers)
        )
    assert not [ack for ack in await asyncio.gather(*acks) if ack.duplicate]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BILLING_", "USAGE_", "NATS_"))}
    env.update(
        NATS_URL=nats_url,
        BILLING_DATABASE_URL=str(tmp_path / "b.db"),
        PYTHONPATH=str(REPO),
        BILLING_LOG_LEVEL="WARNING",
    )
    controller, terminal = pty.openpty()
    os.set_blocking(controller, False)
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "billing", "run", "--burst", "--batch-size", "1"),
        env=env,
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=terminal,
    )
    os.close(terminal)
    seen = bytearray()
    try:
        deadline = time.monotonic() + 60
        while b"left in the stream" not in seen:
            assert process.returncode is None, f"exited early: {bytes(seen)!r}"
            assert time.monotonic() < deadline, f"no progress line: {bytes(seen)!r}"
            _read_available(controller, seen)
            await asyncio.sleep(0.05)
        line = next(x for x in seen.decode().splitlines() if "left in the stream" in x)
        assert line.startswith("billed ") and "messages/s" in line
        process.send_signal(signal.SIGTERM)
        assert process.stdout is not None
        out = (await asyncio.wait_for(process.stdout.read(), 15)).decode()
        code = await asyncio.wait_for(process.wait(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        os.close(controller)
    assert code == 0
    counters = dict(line.rsplit(None, 1) for line in out.splitlines() if line.strip())
    received = int(counters["received"])
    assert 0 < received < events, "stopped by the signal, not by running out of events"
