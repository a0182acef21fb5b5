"""SIGTERM / SIGINT as a stop request, installed for a block and restored after it."""

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
