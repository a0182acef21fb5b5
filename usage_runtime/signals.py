"""Stop requests: SIGTERM / SIGINT as one (installed for a block and restored after it),
and a sleep and an await that a stop cuts short.

Handlers are installed by the command lines only (never by a constructor), so tests and
programs embedding the shipper or the consumer keep their own; the previous handlers are
restored on exit, and ``enabled=False`` makes it a no-op."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

logger = logging.getLogger("usage_runtime.signals")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(
    request: Callable[[], None],
    *,
    signals: Sequence[signal.Signals] = STOP_SIGNALS,
    enabled: bool = True,
) -> Iterator[None]:
    """While the block runs, each of ``signals`` calls ``request`` (``Shipper.stop``, an
    event's ``set``) instead of killing the process; a second signal calls it again."""
    if not enabled:
        yield
        return
    loop = asyncio.get_running_loop()
    previous = {signum: signal.getsignal(signum) for signum in signals}

    def request_stop(signum: signal.Signals) -> None:
        logger.info("received %s, stopping", signum.name, extra={"action": "stop_requested"})
        request()

    for signum in signals:
        loop.add_signal_handler(signum, request_stop, signum)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            loop.remove_signal_handler(signum)
            if handler is not None:
                signal.signal(signum, handler)


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake at once when ``stop`` is set: a stop must not wait out a backoff."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def unless_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """``work``'s result, or None when ``stop`` is set first (``work`` is then cancelled).
    For calls that never look at ``stop`` themselves, such as nats-py's first connect,
    which retries each server for a while (for ever with ``max_reconnect_attempts=-1``)."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        await cancel_until_done(task)
        await asyncio.gather(stopping, return_exceptions=True)
    if not task.done() or task.cancelled():
        return None
    return task.result()


#: How long :func:`cancel_until_done` keeps cancelling before it gives up on a task.
CANCEL_WITHIN = 2.0
_CANCEL_AGAIN = 0.05


async def cancel_until_done(task: asyncio.Future[Any], within: float = CANCEL_WITHIN) -> bool:
    """Cancel ``task`` and wait for it to end, cancelling it again every 50 ms: on Python
    3.11 ``asyncio.wait_for`` loses a cancel that arrives as its inner call fails, and
    nats-py's first connect (with ``max_reconnect_attempts=-1``) then retries for ever,
    every ``reconnect_time_wait`` (seen: ``usage-billing run`` still connecting 10 s after
    SIGTERM). False when it had not ended after ``within`` seconds (it is left running)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not task.done():
        task.cancel()
        await asyncio.wait((task,), timeout=min(_CANCEL_AGAIN, max(0.0, deadline - loop.time())))
        if loop.time() >= deadline:
            break
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: the caller decides what an ending like that means
    return task.done()
