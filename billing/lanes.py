"""The consumer's loop: steps in one or several lanes until stopped or idle.

One lane is the consumer's ``step`` (which fetches the next batch while this one is
applied). Several lanes each run the consumer's lane step (fetch, one lane at a time, then
apply in a transaction of its own): on PostgreSQL the server works on one lane's batch
while the others are decoded, applied and acknowledged in this process. Each lane
acknowledges its own batch after its own commit; the lanes lock wallets in the same order,
as separate processes on one durable do, so they cannot deadlock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final

from usage_runtime.signals import sleep_unless_stopped

#: Wait after a failed fetch before the next one (a broker restart, a lost connection).
FETCH_BACKOFF: Final = 0.5

#: Fetch and apply one batch waiting up to the given seconds: how many messages it
#: handled, 0 when none came, None after a fetch error.
Step = Callable[[float], Awaitable[int | None]]


async def run_lanes(
    step: Step,
    lanes: int,
    wait: float,
    stop: asyncio.Event | None,
    *,
    until_idle: bool,
    progress: Callable[[], Awaitable[None]] | None = None,
    every: float = 2.0,
) -> None:
    """Run ``lanes`` loops of ``step(wait)`` until ``stop`` is set (or, ``until_idle``,
    until a step waited ``wait`` s for nothing); back off after a fetch error; await
    ``progress`` at most every ``every`` seconds. A lane that raises cancels the others
    and its exception is raised."""
    shown = time.monotonic()

    async def lane() -> None:
        nonlocal shown
        while stop is None or not stop.is_set():
            handled = await step(wait)
            if handled == 0 and until_idle:
                return
            if handled is None:
                if stop is None:
                    await asyncio.sleep(FETCH_BACKOFF)
                else:
                    await sleep_unless_stopped(stop, FETCH_BACKOFF)
            if progress is not None and time.monotonic() - shown >= every:
                shown = time.monotonic()
                await progress()

    if lanes == 1:
        await lane()
        return
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(lanes):
                group.create_task(lane())
    except BaseExceptionGroup as failed:
        # One lane failed (the others were cancelled): raise what it raised.
        raise failed.exceptions[0] from None
