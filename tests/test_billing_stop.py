"""``usage-billing run`` (and ``run --burst``) against a NATS that does not answer: a
supervisor's SIGTERM or SIGINT ends it within seconds, with exit 0 (a clean stop during an
outage is not a failure)."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.fixtures.shipper import REPO
from usage_demo.processes import CliProcess, module_command
from usage_demo.waiting import wait_until_sync


def _migrated(path: Path) -> bool:
    try:
        with closing(sqlite3.connect(path, timeout=5)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            return "billing_records" in tables
    except sqlite3.Error:
        return False


@pytest.fixture
def refused_url(refused_nats_url: str) -> str:
    return refused_nats_url


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A port that accepts connections and never says a word (a hung or firewalled NATS)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"nats://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(
    ("burst", "signum", "server"),
    [
        (False, signal.SIGTERM, "refused_url"),
        (False, signal.SIGINT, "silent_url"),
        (True, signal.SIGTERM, "silent_url"),
        (True, signal.SIGINT, "refused_url"),
    ],
)
def test_billing_stops_within_seconds_while_nats_is_unreachable(
    tmp_path: Path,
    burst: bool,
    signum: signal.Signals,
    server: str,
    request: pytest.FixtureRequest,
) -> None:
    url = request.getfixturevalue(server)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "BILLING_"))}
    env.update(
        {
            "BILLING_DATABASE_URL": str(tmp_path / "billing.db"),
            "NATS_URL": url,
            "BILLING_CONNECT_TIMEOUT": "2",
            "BILLING_METRICS_PORT": "0",
            "PYTHONPATH": str(REPO),
        }
    )
    log_path = tmp_path / "billing.log"
    command = module_command("billing", "run", *(["--burst"] if burst else []))
    process = CliProcess(command, env=env, log_path=log_path).start()
    try:
        # Signal handlers in place (the metrics port is served after them) and the
        # database migrated: what is left is the connect, the state the user saw hang.
        wait_until_sync(
            lambda: "serving /metrics" in log_path.read_text(), 30, message="billing started"
        )
        wait_until_sync(lambda: _migrated(tmp_path / "billing.db"), 30, message="migrated")
        process.send_signal(signum)
        signalled = time.monotonic()
        try:
            code = process.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 10 s after {signum.name}: {log_path.read_text()}")
        took = time.monotonic() - signalled
    finally:
        process.close()
    output = log_path.read_text()
    assert code == 0, output
    assert took < 5, f"{took:.1f} s to stop"
    assert "Traceback" not in output
