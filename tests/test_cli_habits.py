"""Command-line habits, through the real command lines: yes/no options are flags in both,
``--help`` shows every default, a plain ``sqlite:///path`` URL works, ``status`` and
``dead list`` read a file this user cannot write, and the start and stop lines are
short sentences (the full settings only at DEBUG)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.cli_help import option_entries
from tests.fixtures.shipper import (
    msg_ids,
    read_stream,
    run_cli,
    run_module,
    shipper_env,
    write_events,
)
from usage_demo.natsserver import NatsServer


def _help(*argv: str) -> str:
    result = run_module(*argv, "--help", timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ("shipper", "run"),
        ("shipper", "status"),
        ("shipper", "dead", "list"),
        ("shipper", "migrate"),
        ("billing", "run"),
        ("billing", "rejected"),
    ],
    ids=" ".join,
)
def test_help_shows_every_default(argv: tuple[str, ...]) -> None:
    helps = option_entries(_help(*argv))
    assert helps, "no options found: the parser of this test is broken"
    for flag, text in helps.items():
        if flag in ("--burst", "--stamp"):  # plain switches: off unless given
            continue
        assert "default" in text, f"{flag} shows no default: {text}"


@pytest.mark.parametrize(
    ("argv", "flags"),
    [
        (("shipper", "run"), ["--exit-when-idle", "--no-create-stream", "--parse-payloads"]),
        (("billing", "run"), ["--no-create-stream", "--no-migrate"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else "",
)
def test_yes_no_options_are_flags_in_both_command_lines(
    argv: tuple[str, ...], flags: list[str]
) -> None:
    text = _help(*argv)
    for flag in flags:
        assert flag in text, flag


async def test_a_plain_sqlalchemy_sqlite_url_and_a_flag_run_a_burst(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    path = tmp_path / "outbox.db"
    ids = await write_events(path, 5)
    result = run_cli(
        "run",
        "--exit-when-idle",
        "--database-url",
        f"sqlite:///{path}",
        env=shipper_env(NATS_URL=nats_server.url),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(msg_ids(await read_stream(nats_server.url))) == sorted(ids)
    lines = result.stderr.strip().splitlines()
    # The start line is a summary; the settings dump is a DEBUG line, not shown at INFO.
    assert lines[0].endswith(
        f"INFO shipper: starting: outbox sqlite+aiosqlite:///{path} -> NATS "
        f"{nats_server.url}, stream billing-stream; shipping until idle"
    ), lines[0]
    assert "max_in_flight" not in result.stderr and "ShipperStats" not in result.stderr
    assert re.search(
        r"INFO shipper: stopped after [\d.]+ s: 5 published, 0 duplicates, 0 retried later, "
        r"0 dead, 0 handed back, 1 batches, 1 connections$",
        lines[-1],
    ), lines[-1]


@pytest.fixture
def read_only_outbox() -> Iterator[Path]:
    """A migrated outbox with one dead row, read-only, in a read-only directory (for root
    too once its capabilities are dropped: see the test)."""
    directory = Path(tempfile.mkdtemp(prefix="usage-outbox-ro-"))
    path = directory / "outbox.db"
    try:
        assert run_cli("migrate", "--database-url", str(path)).returncode == 0
        import sqlite3
        from contextlib import closing

        with closing(sqlite3.connect(path)) as conn, conn:
            conn.execute(
                "INSERT INTO usage_outbox (event_id, subject, headers, payload, created_at, "
                "state, last_error) VALUES ('e-1', 's', '{}', x'00', 1, 'dead', 'refused')"
            )
        path.chmod(0o444)
        directory.chmod(0o555)
        yield path
    finally:
        directory.chmod(stat.S_IRWXU)
        shutil.rmtree(directory)


@pytest.mark.parametrize("argv", [["status"], ["dead", "list"]], ids=" ".join)
def test_status_and_dead_list_work_on_a_read_only_file(
    read_only_outbox: Path, argv: list[str]
) -> None:
    # root may write any file: run it without its capabilities then (CAP_DAC_OVERRIDE
    # above all), so read-only is real. Not as another user: that user might not be able
    # to read the checkout (a clone in a private temporary directory).
    as_user: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv is not None, "setpriv (util-linux) runs the command without capabilities"
        as_user = [setpriv, "--bounding-set=-all", "--inh-caps=-all"]
    result = subprocess.run(
        [*as_user, sys.executable, "-m", "shipper", *argv, "--database-url", str(read_only_outbox)],
        env=shipper_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    if argv == ["status"]:
        assert "dead                1" in result.stdout
    else:
        assert "refused" in result.stdout and "(1 dead rows shown)" in result.stdout
