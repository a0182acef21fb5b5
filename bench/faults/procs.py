"""Child processes of the fault scenarios: :class:`Proc` (one CLI run as a child,
SIGKILLable and restartable, its log appended across restarts) and :func:`crash_loop`
(SIGKILL a process at random moments N times, restarting it each time).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Self

from usage_demo.processes import CliProcess, child_env
from usage_demo.waiting import wait_until_sync

REPO = Path(__file__).resolve().parents[2]


def clean_env(**values: str) -> dict[str, str]:
    """The environment of a child: no inherited NATS/shipper/billing settings."""
    return child_env(values, pythonpath=REPO)


class Proc:
    """One child process (a :class:`CliProcess`) with its output appended to ``log_path``;
    restartable, counting its starts and kills."""

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.starts = 0
        self.kills = 0
        self._child = CliProcess(argv, env=env, log_path=log_path, cwd=REPO, name=name)
        self._started = False
        self._log_offset = 0

    @property
    def running(self) -> bool:
        return self._child.running

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._started else None

    @property
    def returncode(self) -> int | None:
        return self._child.returncode

    def start(self) -> Self:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._child.start()
        self._started = True
        self.starts += 1
        return self

    def kill(self) -> None:
        """SIGKILL (no clean-up of any kind runs in the child), then reap it."""
        if self.running:
            self._child.kill()
            self.kills += 1

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it has not exited within ``timeout``."""
        return self._child.stop(timeout).returncode if self._started else None

    def restart(self) -> Self:
        self.kill()
        return self.start()

    def wait(self, timeout: float) -> int:
        assert self._started, f"{self.name} never started"
        return self._child.wait(timeout)

    def log_text(self) -> str:
        return self._child.output()

    def log_since_start(self) -> str:
        """The log of the current run only."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.returncode}"
        return f"<Proc {self.name} pid={self.pid} {state} starts={self.starts} kills={self.kills}>"


def settings_env(prefix: str, settings: Mapping[str, object]) -> dict[str, str]:
    """``{"lease_ttl": 1.0}`` -> ``{"<prefix>LEASE_TTL": "1.0"}``: CLI settings as env."""
    return {f"{prefix}{key.upper()}": str(value) for key, value in settings.items()}


def crash_loop(
    proc: Proc,
    *,
    kills: int,
    rng: random.Random,
    ready: Callable[[], bool],
    delay: tuple[float, float],
    keep_going: Callable[[], bool] = lambda: False,
    early: float = 0.2,
    ready_timeout: float = 30.0,
) -> int:
    """SIGKILL ``proc`` at random moments and restart it at once; return the kills made.

    Goes on until ``kills`` kills are done and ``keep_going()`` is false (e.g. "writers are
    still writing"). The moment of each kill: with probability ``early``, anywhere in the
    first second after the restart (during start-up, migration, lease wait); otherwise
    once ``ready()`` says the new process is working, after a random ``delay`` (uniform,
    seconds). The random sleeps are the fault schedule, not synchronisation. Returns once
    the last restart is ready too.
    """
    made = 0
    while made < kills or keep_going():
        if rng.random() < early:
            time.sleep(rng.uniform(0.0, 1.0))
        else:
            wait_until_sync(
                lambda: ready() or not proc.running,
                ready_timeout,
                message=f"{proc.name} ready after restart {made}",
                interval=0.05,
            )
            time.sleep(rng.uniform(*delay))
        if not proc.running:
            tail = proc.log_since_start()[-3000:]
            raise AssertionError(f"{proc.name} exited on its own:\n{tail}")
        proc.kill()
        made += 1
        proc.start()
    # The last restart too must come up working (and a SIGTERM sent before it has its
    # signal handlers installed would end it with -15, not a clean stop).
    wait_until_sync(
        lambda: ready() or not proc.running,
        ready_timeout,
        message=f"{proc.name} ready at the end",
        interval=0.05,
    )
    if not proc.running:
        raise AssertionError(f"{proc.name} exited on its own:\n{proc.log_since_start()[-3000:]}")
    return made
