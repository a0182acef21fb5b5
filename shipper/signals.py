"""Stop requests: SIGTERM / SIGINT as one (installed for a block and restored after it),
and a sleep that a stop cuts short."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator

logger = logging.getLogger("shipper.signals")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(request: Callable[[], None], *, enabled: bool = True) -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT call ``request`` (e.g. ``Shipper.stop``)
    instead of killing the process. ``enabled=False`` leaves signals alone (tests,
    embedding in another application)."""
    if not enabled:
        yield
        return
    loop = asyncio.get_running_loop()

    def request_stop(signum: signal.Signals) -> None:
        logger.info("received %s, stopping", signum.name, extra={"action": "stop_requested"})
        request()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, request_stop, signum)
    try:
        yield
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake at once when ``stop`` is set: a stop must not wait out a backoff."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
