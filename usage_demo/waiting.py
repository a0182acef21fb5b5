"""Waiting on a condition with a deadline: how tests, fault scenarios and the bench synchronise
(never a bare sleep).

Two forms with the same parameters:

* :func:`wait_until` (async): ``predicate`` may be a plain function or return an awaitable.
* :func:`wait_until_sync`: for threads and the fault tier's child-process scenarios.

A failure raises ``AssertionError`` naming what was awaited (``message``, else the
predicate), how long, and, if ``explain`` is given, what it says about the state then.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

#: Long enough for a loaded 2-core machine shared by several test runs.
DEFAULT_WITHIN = 15.0
DEFAULT_INTERVAL = 0.02


async def wait_until(
    predicate: Callable[[], object | Awaitable[object]],
    within: float = DEFAULT_WITHIN,
    *,
    interval: float = DEFAULT_INTERVAL,
    message: str = "",
    explain: Callable[[], object] | None = None,
) -> None:
    """Poll ``predicate`` (sync or async) until it is truthy; fail after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(_failure(predicate, within, message, explain))
        await asyncio.sleep(interval)


def wait_until_sync(
    predicate: Callable[[], object],
    within: float = DEFAULT_WITHIN,
    *,
    interval: float = DEFAULT_INTERVAL,
    message: str = "",
    explain: Callable[[], object] | None = None,
) -> None:
    """Poll ``predicate`` until it is truthy, blocking; fail after ``within`` s."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(_failure(predicate, within, message, explain))
        time.sleep(interval)


def _failure(
    predicate: object, within: float, message: str, explain: Callable[[], object] | None
) -> str:
    detail = f" ({explain()})" if explain is not None else ""
    return f"timed out after {within:g} s waiting for {message or predicate!r}{detail}"
