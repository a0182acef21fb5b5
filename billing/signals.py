"""SIGTERM/SIGINT set a stop event, for as long as a ``with`` block runs.

Handlers are installed by the command line only (never by the consumer's constructor),
so tests and programs embedding the consumer keep their own; the previous handlers are
restored on exit. ``enabled=False`` makes it a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator, Sequence

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(
    stop: asyncio.Event,
    signals: Sequence[signal.Signals] = STOP_SIGNALS,
    *,
    enabled: bool = True,
) -> Iterator[None]:
    """Within the block, each of ``signals`` sets ``stop`` (a second one does too)."""
    if not enabled:
        yield
        return
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            if handler is not None:
                signal.signal(sig, handler)
