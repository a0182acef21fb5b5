"""Stopping work that loses a cancel (usage_runtime.signals): Python 3.11's wait_for can
swallow one, and nats-py's first connect then retries for ever."""

from __future__ import annotations

import asyncio
import contextlib
import time

from usage_runtime.signals import cancel_until_done, unless_stopped


async def _loses_the_first_cancel() -> str:
    # As asyncio.wait_for does on 3.11 when its inner call fails at that moment:
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(30)
    await asyncio.sleep(30)
    return "ran on"


async def test_work_that_loses_a_cancel_is_cancelled_again_until_it_ends() -> None:
    task = asyncio.ensure_future(_loses_the_first_cancel())
    await asyncio.sleep(0)
    started = time.monotonic()
    assert await cancel_until_done(task, within=5)
    assert task.cancelled()
    assert time.monotonic() - started < 1


async def test_a_stop_ends_unless_stopped_even_when_the_work_loses_a_cancel() -> None:
    stop = asyncio.Event()
    stop.set()  # the stop came first (a SIGTERM during start-up)
    started = time.monotonic()
    assert await unless_stopped(_loses_the_first_cancel(), stop) is None
    assert time.monotonic() - started < 1


async def test_a_task_that_will_not_end_is_given_up_after_the_deadline() -> None:
    released = asyncio.Event()

    async def refuses() -> None:
        while not released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(30)

    task = asyncio.ensure_future(refuses())
    await asyncio.sleep(0)
    assert not await cancel_until_done(task, within=0.3)
    assert not task.done()
    released.set()
    assert await cancel_until_done(task, within=1)
