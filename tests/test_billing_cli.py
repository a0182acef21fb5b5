"""``usage-billing``: operator commands in-process, ``run`` as a real subprocess that is
stopped by SIGTERM, and settings from flags and environment."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from billing.apply import apply_batch
from billing.cli import main
from billing.config import ENV, BillingConfig
from billing.database import BillingDatabase
from billing.decode import decode_usage_event
from billing.errors import BillingConfigError
from billing.items import Delivery, Rejection, Usage
from outbox.stream_spec import DEFAULT_STREAM
from tests.fixtures.billing import publish, usage_event
from usage_demo.processes import CliProcess, module_command
from usage_demo.waiting import wait_until


def _run_cli(
    capsys: pytest.CaptureFixture[str], *argv: str, env: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    code = main(list(argv), env=env or {})
    out, err = capsys.readouterr()
    return code, out, err


def _seed(path: Path) -> None:
    """Two users' events straight through the store (no broker needed for these commands)."""

    async def seed() -> None:
        async with BillingDatabase(f"sqlite+aiosqlite:///{path}") as db:
            await db.set_price("gpt-4", "token", "0.00003")
            events = [
                usage_event("alice", "gpt-4", input_tokens=1000),
                usage_event("alice", "gpt-4", input_tokens=500),
                usage_event("bob", "gpt-4", input_tokens=100),
                usage_event("bob", "dall-e", input_units=2),
            ]
            items: list[Usage | Rejection] = [
                Usage(
                    Delivery(DEFAULT_STREAM, seq, e.subject),
                    decode_usage_event(e.payload),
                    e.payload,
                )
                for seq, e in enumerate(events, 1)
            ]
            items.append(
                Rejection(Delivery(DEFAULT_STREAM, 9, "billing.usage.recorded.x"), b"{", "bad JSON")
            )
            async with db.engine.begin() as conn:
                await conn.run_sync(apply_batch, items)

    asyncio.run(seed())


def test_prices_set_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "b.db")
    code, out, _ = _run_cli(
        capsys, "prices", "set", "--database-url", db, "gpt-4.1", "token", "0.000000075"
    )
    assert code == 0 and "0.000000075" in out
    env = {"BILLING_DATABASE_URL": db}
    assert _run_cli(capsys, "prices", "set", "gpt-4.1", "token", "0.00000008", env=env)[0] == 0
    code, out, _ = _run_cli(capsys, "prices", "list", env=env)
    assert code == 0
    assert "gpt-4.1" in out and "0.000000080000" in out and "0.000000075" not in out


def test_a_price_that_would_need_rounding_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "b.db")
    code, _, err = _run_cli(
        capsys, "prices", "set", "--database-url", db, "m", "token", "0.0000000000001"
    )
    assert code == 1
    assert err.strip() == "usage-billing: price '0.0000000000001' has more than 12 decimal places"


def test_report_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "b.db"
    _seed(path)
    code, out, _ = _run_cli(capsys, "report", "--database-url", str(path))
    assert code == 0
    lines = out.splitlines()
    alice = next(line for line in lines if line.startswith("alice"))
    assert alice.split() == ["alice", "2", "0", "0.045000000", "-0.045000000"]
    bob = next(line for line in lines if line.startswith("bob"))
    assert bob.split() == ["bob", "1", "1", "0.003000000", "-0.003000000"]
    assert "rejected events: 1" in out
    assert "dall-e per request: 1 event(s)" in out

    code, out, _ = _run_cli(capsys, "report", "--json", "--database-url", str(path))
    data = json.loads(out)
    assert data["total_charged"] == "0.048000000"
    assert (data["billed_events"], data["unpriced_events"], data["rejected_events"]) == (3, 1, 1)
    assert Decimal(data["total_balance"]) == -Decimal(data["total_charged"])


def test_audit_and_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "b.db"
    _seed(path)
    code, out, _ = _run_cli(capsys, "audit", "--database-url", str(path))
    assert code == 0 and out.strip().endswith("ok")
    code, out, _ = _run_cli(capsys, "rejected", "--database-url", str(path))
    assert code == 0 and "reason:  bad JSON" in out
    # Tamper with a wallet: the audit must notice and exit 1.
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE wallets SET balance = balance + 1 WHERE user_id = 'bob'")
    code, out, _ = _run_cli(capsys, "audit", "--database-url", str(path))
    assert code == 1
    assert "wallet bob: balance" in out


def test_read_commands_do_not_create_a_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.db"
    code, _, err = _run_cli(capsys, "report", "--database-url", str(missing))
    assert code == 2
    assert err.strip() == f"usage-billing: no billing database at {missing}"
    assert not missing.exists()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BILLING_BATCH_SIZE": "many"}, "$BILLING_BATCH_SIZE: bad value 'many'"),
        ({"NATS_URL": "http://x:1"}, "nats url 'http://x:1': expected nats://host:port"),
        ({"BILLING_BATCH_SIZE": "500", "BILLING_MAX_ACK_PENDING": "100"}, "max ack pending (100)"),
        ({"USAGE_STREAM": "a.b"}, "stream 'a.b'"),
        ({"BILLING_ACK_WAIT": "0.5"}, "ack wait must be longer than the fetch timeout"),
    ],
)
def test_bad_settings_end_with_one_line_and_exit_2(
    env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run_cli(capsys, "run", env=env)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_flags_override_env_which_overrides_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    config = BillingConfig.from_env({"BILLING_BATCH_SIZE": "64", "USAGE_STREAM": "S1"})
    assert (config.batch_size, config.stream, config.durable) == (64, "S1", "billing")
    assert BillingConfig.from_env({}, batch_size=8).batch_size == 8
    with pytest.raises(BillingConfigError, match="BILLING_MIGRATE"):
        BillingConfig.from_env({"BILLING_MIGRATE": "perhaps"})
    # Every run flag names its environment variable in --help.
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for variable in ENV.values():
        assert f"[env {variable}]" in help_text, variable


def test_redacted_config_hides_passwords() -> None:
    config = BillingConfig(
        database_url="postgresql+psycopg://billing:s3cret@db/billing",
        nats_url="nats://u:p4ss@127.0.0.1:4223",
    )
    shown = repr(config.redacted())
    assert "s3cret" not in shown and "p4ss" not in shown


# -- the run command as a process -------------------------------------------------------------


def _cli_env(nats_url: str, db: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "BILLING_DATABASE_URL": str(db),
            "NATS_URL": nats_url,
            "BILLING_FETCH_TIMEOUT": "0.2",
            "BILLING_LOG_LEVEL": "INFO",
            **extra,
        }
    )
    return env


async def test_run_consumes_until_sigterm_then_exits_cleanly(
    nats_url: str, jetstream: JetStreamContext, tmp_path: Path
) -> None:
    db = tmp_path / "run.db"
    log = tmp_path / "run.log"
    process = CliProcess(
        module_command("billing", "run"), env=_cli_env(nats_url, db), log_path=log
    ).start()
    try:

        async def durable_exists() -> bool:
            try:
                await jetstream.consumer_info(DEFAULT_STREAM, "billing")
                return True
            except Exception:
                return False

        await wait_until(durable_exists, message="the consumer set up the stream and durable")
        events = [usage_event(f"user-{i % 3}", "gpt-4", input_tokens=i + 1) for i in range(25)]
        for event in events:
            await publish(jetstream, event)

        async def all_recorded() -> bool:
            async with BillingDatabase(f"sqlite+aiosqlite:///{db}", run_migrations=False) as b:
                return len(await b.event_states()) == len(events)

        await wait_until(all_recorded, message="every event recorded")
        code = (await process.stop_async(15)).returncode  # SIGTERM; SIGKILL (-9) after 15 s
    finally:
        process.close()
    output = log.read_text()
    assert code == 0, output
    assert "stopped: received 25, billed 0, unpriced 25, duplicates 0, rejected 0" in output
    info = await jetstream.consumer_info(DEFAULT_STREAM, "billing")
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


async def test_run_burst_exits_when_idle_and_prints_the_counters(
    nats_url: str, jetstream: JetStreamContext, tmp_path: Path
) -> None:
    db = tmp_path / "burst.db"
    env = _cli_env(nats_url, db)
    setup = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "billing", "prices", "set", "gpt-4", "token", "0.001"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert setup.returncode == 0, setup.stderr
    from billing import jetstream as billing_js

    await billing_js.ensure_stream(jetstream, BillingConfig(nats_url=nats_url))
    for i in range(7):
        await publish(jetstream, usage_event("u", "gpt-4", input_tokens=1000 + i))
    await jetstream.publish("billing.usage.recorded.gpt-4", b"[]", headers={"Nats-Msg-Id": "x"})
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "billing", "run", "--burst", "--idle-timeout", "0.3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    counters = dict(line.rsplit(None, 1) for line in result.stdout.strip().splitlines())
    assert (counters["billed"], counters["rejected"], counters["fetch errors"]) == ("7", "1", "0")
