"""A shipper pointed at an outbox file that does not exist (no database configured, or a
wrong path) creates nothing and says so with the absolute path: at start-up, in
``/readyz`` (not ready) and in ``status``; it starts shipping once the file is there."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from tests.fixtures.shipper import (
    WATCHED_RUN,
    CliProcesses,
    pending,
    run_cli,
    shipper_env,
    write_events,
)
from tests.metrics_http import ready, served_url
from usage_demo.natsserver import NatsServer
from usage_demo.waiting import wait_until


async def test_no_database_configured_waits_for_the_file_and_says_where(
    tmp_path: Path, nats_server: NatsServer, cli_processes: CliProcesses
) -> None:
    expected = tmp_path / "usage-outbox.db"  # the default, in the working directory
    log = tmp_path / "shipper.log"
    process = cli_processes.start(
        *WATCHED_RUN,
        env=shipper_env(NATS_URL=nats_server.url),
        log_path=log,
        cwd=tmp_path,
    )
    await wait_until(lambda: "no outbox database at" in log.read_text(), 20)
    assert f"no outbox database at {expected}: waiting for the service" in log.read_text()
    url = served_url(log)
    assert url is not None, log.read_text()
    code, body = await ready(url)
    assert code == 503 and f"no outbox database at {expected}" in body, body
    assert not expected.exists(), "the shipper created the outbox it looks for"

    status = await asyncio.to_thread(run_cli, "status", cwd=tmp_path)
    assert status.returncode == 2
    assert status.stderr.startswith(f"usage-shipper: no outbox database at {expected} ")

    await write_events(expected, 4)  # the service starts and creates it
    await wait_until(lambda: pending(expected) == 0, 20, message="shipped once it exists")
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0, log.read_text()


def test_a_burst_run_on_a_missing_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "wrong" / ".." / "typo.db"
    result = run_cli("run", "--exit-when-idle", "--database-url", str(missing), env=shipper_env())
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"usage-shipper: no outbox database at {missing.resolve()}: point --database-url / "
        "USAGE_OUTBOX_URL at the service's outbox, or create it with usage-shipper migrate"
    )
    assert not missing.resolve().exists()
