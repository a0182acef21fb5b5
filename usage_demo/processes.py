"""Our own CLIs as child processes: the one way the demo, the benchmarks and the tests start
``python -m shipper`` / ``python -m billing`` (or any module) and stop them again.

:class:`CliProcess` starts the command with a given environment, its stdout and stderr
together in a file (a file, not a pipe: a pipe nobody reads fills and blocks the child),
waits for a log line or a condition with a deadline (failing at once if the child exits
first), and stops it with SIGTERM, then SIGKILL after a timeout, returning the exit code
and the output as a :class:`Finished`. It uses :class:`subprocess.Popen`, which works the
same from plain code and from inside an event loop; the waits come in both forms.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

#: Settings a child must not inherit from the caller's environment by accident.
SETTING_PREFIXES = ("NATS_", "CONSUL_", "SHIPPER_", "USAGE_", "BILLING_")


def child_env(
    values: Mapping[str, str] | None = None, *, pythonpath: Path | None = None
) -> dict[str, str]:
    """This process's environment without any shipper/billing/NATS/Consul settings, plus
    ``values``; ``pythonpath`` (a checkout) makes its packages importable in the child."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES)}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    env.update(values or {})
    return env


def module_command(module: str, *args: str) -> list[str]:
    """``python -m module args...`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


@dataclass(frozen=True)
class Finished:
    """How a child ended: its exit code (negative: the signal that ended it) and output."""

    returncode: int
    output: str


class ProcessFailed(RuntimeError):
    """A child exited, or a wait on it passed its deadline; the message ends with the
    tail of its output."""


class CliProcess:
    """One child process with its output in ``log_path``; restartable (output appended)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str = "",
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.log_path = log_path
        self.cwd = cwd
        self.name = name or " ".join(self.argv[1:4])
        self._process: subprocess.Popen[bytes] | None = None

    # -- starting ------------------------------------------------------------------------

    def start(self, *, fresh: bool = False) -> Self:
        """Start the child (again, if it ran before); its output goes to the end of the log,
        or, if ``fresh``, replaces what the log held."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open(
            "wb" if fresh else "ab"
        ) as log:  # the child keeps its own copy of the fd
            self._process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float | None = None) -> int:
        """The exit code, waiting up to ``timeout`` s (``subprocess.TimeoutExpired`` after)."""
        return self.process.wait(timeout)

    async def wait_async(self, within: float | None = None) -> int:
        """:meth:`wait` without blocking the event loop."""
        return await asyncio.to_thread(self.process.wait, within)

    # -- output --------------------------------------------------------------------------

    def output(self) -> str:
        """Everything the child (all its runs) wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def has_line(self, pattern: str | re.Pattern[str]) -> bool:
        """Whether the output so far contains ``pattern`` (a substring, or a regex)."""
        text = self.output()
        return pattern in text if isinstance(pattern, str) else bool(pattern.search(text))

    # -- waiting -------------------------------------------------------------------------

    def wait_for_line(
        self, pattern: str | re.Pattern[str], within: float, *, interval: float = 0.02
    ) -> None:
        """Block until the output contains ``pattern``; :class:`ProcessFailed` if the child
        exits first or ``within`` s pass."""
        self.wait_for(lambda: self.has_line(pattern), within, f"{pattern!r}", interval=interval)

    async def wait_for_line_async(
        self, pattern: str | re.Pattern[str], within: float, *, interval: float = 0.02
    ) -> None:
        """:meth:`wait_for_line` without blocking the event loop."""
        await self.wait_for_async(
            lambda: self.has_line(pattern), within, f"{pattern!r}", interval=interval
        )

    def wait_for(
        self, condition: Callable[[], object], within: float, what: str, *, interval: float = 0.02
    ) -> None:
        """Block until ``condition()`` is truthy, while the child is alive."""
        deadline = time.monotonic() + within
        while not self._check(condition, deadline, within, what):
            time.sleep(interval)

    async def wait_for_async(
        self, condition: Callable[[], object], within: float, what: str, *, interval: float = 0.02
    ) -> None:
        """:meth:`wait_for` without blocking the event loop."""
        deadline = time.monotonic() + within
        while True:  # polling a file and a pid: there is no event to await
            if self._check(condition, deadline, within, what):
                return
            await asyncio.sleep(interval)

    def _check(
        self, condition: Callable[[], object], deadline: float, within: float, what: str
    ) -> bool:
        if condition():
            return True
        if not self.running:
            raise ProcessFailed(
                f"{self.name} exited with {self.returncode} before {what}:\n{self.tail()}"
            )
        if time.monotonic() >= deadline:
            raise ProcessFailed(f"{self.name}: no {what} within {within:g} s:\n{self.tail()}")
        return False

    # -- stopping ------------------------------------------------------------------------

    def stop(self, grace: float = 10.0, *, signum: int = signal.SIGTERM) -> Finished:
        """Send ``signum`` (if it still runs), SIGKILL after ``grace`` s; how it ended."""
        process = self.process
        if process.poll() is None:
            process.send_signal(signum)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return Finished(process.returncode, self.output())

    async def stop_async(self, grace: float = 10.0, *, signum: int = signal.SIGTERM) -> Finished:
        """:meth:`stop` without blocking the event loop."""
        return await asyncio.to_thread(self.stop, grace, signum=signum)

    def kill(self) -> Finished:
        """SIGKILL (no clean-up of any kind runs in the child, as in a crash); how it ended."""
        process = self.process
        if process.poll() is None:
            process.kill()
            process.wait(30)
        return Finished(process.returncode, self.output())

    def close(self) -> None:
        """Kill the child if it still runs: for teardown."""
        if self._process is not None:
            self.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
