"""Permanent and transient problems, as a user meets them through ``usage-shipper``.

* permanent (waiting cannot fix it): ``run`` ends with one line and a non-zero exit;
* transient (an outage): retried, and visible while it lasts, in ``usage-shipper status``
  (the problem and since when, who holds the lease until when) and in ``/readyz``;
* a burst run (``--exit-when-idle``) with ``--burst-deadline`` ends non-zero when the
  deadline passes, the rows kept.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.shipper import (
    WATCHED_RUN,
    CliProcesses,
    pending,
    run_cli,
    shipper_env,
    write_events,
)
from tests.metrics_http import ready, served_url
from usage_demo.waiting import wait_until


@pytest.fixture
def refused_nats(refused_nats_url: str) -> str:
    return refused_nats_url


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_a_file_that_is_not_a_database_ends_run_with_one_line(
    tmp_path: Path, refused_nats: str
) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is a text file, not an SQLite database\n" * 100)
    started = time.monotonic()
    result = run_cli(
        "run",
        "--exit-when-idle",
        env=shipper_env(USAGE_OUTBOX_URL=str(path), NATS_URL=refused_nats),
    )
    assert result.returncode == 1
    assert time.monotonic() - started < 20
    assert _last_line(result) == (
        f"usage-shipper: cannot use the outbox sqlite+aiosqlite:///{path}: file is not a database"
    )


async def test_an_outage_is_visible_in_status_and_readyz_while_it_is_retried(
    tmp_path: Path, refused_nats: str, cli_processes: CliProcesses
) -> None:
    path = tmp_path / "outbox.db"
    await write_events(path, 3)
    log = tmp_path / "shipper.log"
    process = cli_processes.start(
        *WATCHED_RUN,
        env=shipper_env(USAGE_OUTBOX_URL=str(path), NATS_URL=refused_nats),
        log_path=log,
    )
    await wait_until(lambda: served_url(log), 20, message="metrics served")
    url = served_url(log)
    assert url is not None

    def status() -> str:
        result = run_cli("status", env=shipper_env(USAGE_OUTBOX_URL=str(path)))
        assert result.returncode == 0, result.stderr
        return result.stdout

    await wait_until(lambda: "problem" in status(), 20, message="status shows the problem")
    shown = status()
    problem = next(line for line in shown.splitlines() if line.startswith("problem"))
    assert f"cannot connect to nats {refused_nats}: connection refused" in problem, shown
    assert re.search(r"\(since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\)$", problem), problem
    lease = next(line for line in shown.splitlines() if line.startswith("lease"))
    assert f"held by {socket.gethostname()}:{process.pid}:" in lease, shown
    assert re.search(r"until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(in \d+ s", lease), lease

    code, body = await ready(url)
    assert code == 503
    assert f"cannot connect to nats {refused_nats}" in body and "(since " in body, body

    assert process.poll() is None, "an outage is retried, not an exit"
    assert pending(path) == 3
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0, log.read_text()


async def test_a_burst_deadline_ends_a_run_that_cannot_drain(
    tmp_path: Path, refused_nats: str
) -> None:
    path = tmp_path / "outbox.db"
    await write_events(path, 3)
    started = time.monotonic()
    result = run_cli(
        "run",
        "--exit-when-idle",
        "--burst-deadline",
        "2",
        env=shipper_env(USAGE_OUTBOX_URL=str(path), NATS_URL=refused_nats),
    )
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert took < 15, f"{took:.1f} s"
    last = _last_line(result)
    assert last.startswith(
        "usage-shipper: the burst deadline (2 s) passed before the outbox was drained; "
        f"last problem: cannot connect to nats {refused_nats}: connection refused"
    ), last
    assert pending(path) == 3


def test_a_burst_deadline_needs_a_burst_run(tmp_path: Path) -> None:
    result = run_cli(
        "run", "--burst-deadline", "5", env=shipper_env(USAGE_OUTBOX_URL=str(tmp_path / "o.db"))
    )
    assert result.returncode == 2
    assert _last_line(result) == (
        "usage-shipper: burst deadline: only a burst run (--exit-when-idle) has one"
    )


def test_status_after_a_clean_stop_says_the_lease_is_free(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    assert run_cli("migrate", "--database-url", str(path)).returncode == 0
    result = run_cli("status", "--database-url", str(path))
    assert result.returncode == 0, result.stderr
    assert "lease               free (no shipper running)" in result.stdout
