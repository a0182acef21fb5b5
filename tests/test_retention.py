"""Retention: acknowledged rows kept as ``sent`` for a while then deleted in small batches,
``dead purge``, and an outbox file that shrinks back after a large backlog drains."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect

from outbox import store
from shipper.cli import _parser
from shipper.config import DEFAULT_VACUUM_PAGES
from shipper.options import build_config
from tests.fixtures.shipper import (
    ShipperRunner,
    execute,
    msg_ids,
    outbox_counts,
    read_stream,
    run_cli,
    shipper_config,
    shipper_env,
    write_events,
)
from usage_demo.natsserver import NatsServer
from usage_demo.waiting import wait_until


def _states(path: Path) -> dict[str, int]:
    with closing(sqlite3.connect(path)) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM usage_outbox GROUP BY state"))


def _file_size(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _plan(conn: sqlite3.Connection, statement: sa.Executable, values: dict[str, object]) -> str:
    compiled = statement.compile(dialect=sqlite_dialect.dialect())
    params = compiled.construct_params(values)
    args = [params[name] for name in compiled.positiontup or ()]
    return " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {compiled}", args))


def _main_size(path: Path) -> int:
    return path.stat().st_size


async def test_kept_sent_rows_are_marked_then_deleted_in_small_batches(
    outbox_path: Path, nats_server: NatsServer, run_shipper: ShipperRunner
) -> None:
    ids = await write_events(outbox_path, 50)
    stats = await run_shipper.run(
        shipper_config(outbox_path, nats_server.url, keep_sent_hours=1, cleanup_batch=7)
    )
    assert stats.published == 50 and stats.cleaned == 0
    assert _states(outbox_path) == {"sent": 50}
    with closing(sqlite3.connect(outbox_path)) as conn:
        (missing,) = conn.execute(
            "SELECT count(*) FROM usage_outbox WHERE sent_at IS NULL"
        ).fetchone()
    assert missing == 0
    assert sorted(msg_ids(await read_stream(nats_server.url))) == sorted(ids)

    env = shipper_env(USAGE_OUTBOX_URL=str(outbox_path))
    shown = run_cli("status", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "sent (kept)         50" in shown.stdout

    # Two hours later (the rows' ack time moved back): the next run deletes them all,
    # seven per transaction, and leaves new pending rows alone until shipped.
    execute(outbox_path, "UPDATE usage_outbox SET sent_at = sent_at - 7200")
    stats = await run_shipper.run(
        shipper_config(outbox_path, nats_server.url, keep_sent_hours=1, cleanup_batch=7)
    )
    assert stats.cleaned == 50
    assert _states(outbox_path) == {}
    shown = run_cli("status", env=env)
    assert "sent" not in shown.stdout


async def test_the_claim_walks_the_state_index_past_many_sent_rows(
    outbox_path: Path,
) -> None:
    await write_events(outbox_path, 2000)
    execute(outbox_path, "UPDATE usage_outbox SET state = 'sent', sent_at = 1 WHERE id <= 1990")
    cleanup = sa.delete(store.outbox_table).where(
        store.outbox_table.c.id.in_(
            sa.select(store.outbox_table.c.id)
            .where(store.outbox_table.c.state == "sent", store.outbox_table.c.sent_at < 5)
            .order_by(store.outbox_table.c.id)
            .limit(500)
            .scalar_subquery()
        )
    )
    with closing(sqlite3.connect(outbox_path)) as conn:
        conn.execute("ANALYZE")
        plan = _plan(conn, store._SELECT_DUE, {"now": 1e12, "after": 0, "limit": 1000})
        cleanup_plan = _plan(conn, cleanup, {})
    assert "USING INDEX ix_usage_outbox_state_id (state=? AND id>?)" in plan, plan
    assert "TEMP B-TREE" not in plan, plan
    assert "ix_usage_outbox_state_id (state=?)" in cleanup_plan, cleanup_plan


async def test_dead_purge_by_age_with_dry_run(outbox_path: Path) -> None:
    await write_events(outbox_path, 30)
    # 10 dead rows written 8 days ago, 5 dead rows written now, 15 pending rows old too.
    execute(
        outbox_path,
        "UPDATE usage_outbox SET state = 'dead', created_at = created_at - 8 * 86400 "
        "WHERE id <= 10",
    )
    execute(outbox_path, "UPDATE usage_outbox SET state = 'dead' WHERE id BETWEEN 11 AND 15")
    execute(
        outbox_path, "UPDATE usage_outbox SET created_at = created_at - 30 * 86400 WHERE id > 15"
    )
    env = shipper_env(USAGE_OUTBOX_URL=str(outbox_path))

    dry = run_cli("dead", "purge", "--older-than", "7d", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "would purge 10 dead rows" in dry.stdout
    assert outbox_counts(outbox_path) == {"pending": 15, "dead": 15}

    done = run_cli("dead", "purge", "--older-than", "7d", env=env)
    assert done.returncode == 0, done.stderr
    assert "purged 10 dead rows" in done.stdout
    assert outbox_counts(outbox_path) == {"pending": 15, "dead": 5}
    with closing(sqlite3.connect(outbox_path)) as conn:
        left = [r[0] for r in conn.execute("SELECT id FROM usage_outbox WHERE state='dead'")]
    assert sorted(left) == [11, 12, 13, 14, 15]

    again = run_cli("dead", "purge", "--older-than", "12h", env=env)
    assert "purged 0 dead rows" in again.stdout
    recent = run_cli("dead", "purge", "--older-than", "0s", env=env)
    assert "purged 5 dead rows" in recent.stdout
    assert outbox_counts(outbox_path) == {"pending": 15, "dead": 0}

    bad = run_cli("dead", "purge", "--older-than", "soon", env=env)
    assert bad.returncode == 2
    assert "bad duration" in bad.stderr
    missing = run_cli("dead", "purge", env=env)
    assert missing.returncode == 2


async def test_the_file_shrinks_back_after_a_large_backlog_drains(
    outbox_path: Path, nats_server: NatsServer, run_shipper: ShipperRunner
) -> None:
    await write_events(outbox_path, 10)
    with closing(sqlite3.connect(outbox_path)) as conn:
        (mode,) = conn.execute("PRAGMA auto_vacuum").fetchone()
    assert mode == 2, "a new outbox file is created in incremental auto-vacuum mode"
    await run_shipper.run(shipper_config(outbox_path, nats_server.url))
    empty = _file_size(outbox_path)

    await write_events(outbox_path, 100_000, chunk=5000)
    full = _file_size(outbox_path)
    assert full > 20 * empty

    stats = await run_shipper.run(
        # A burst run shrinks the file only when asked to (see the tests below).
        shipper_config(
            outbox_path, nats_server.url, batch_size=1000, max_in_flight=4000, vacuum_pages=64
        ),
        within=120,
    )
    assert stats.published == 100_000
    assert stats.vacuumed_pages > 0
    after = _file_size(outbox_path)
    assert after < 2 * empty + 256 * 4096, (empty, full, after)
    assert _main_size(outbox_path) < full / 20
    assert outbox_counts(outbox_path) == {"pending": 0, "dead": 0}


def _free_pages(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("PRAGMA freelist_count").fetchone()[0])


async def test_a_burst_run_does_not_shrink_the_file_unless_asked(
    outbox_path: Path, nats_server: NatsServer, run_shipper: ShipperRunner
) -> None:
    # The shrink of a drained backlog costs about as long as the drain; a burst run's exit
    # would wait for it. Not given, a burst run leaves the free pages (the next events
    # reuse them); a run until SIGTERM gives them back while idle.
    config = shipper_config(outbox_path, nats_server.url, batch_size=1000, max_in_flight=4000)
    assert config.vacuum_pages is None and config.vacuum_step == 0
    await write_events(outbox_path, 20_000, chunk=5000)
    stats = await run_shipper.run(config, within=60)
    assert stats.published == 20_000
    assert stats.vacuumed_pages == 0
    free = _free_pages(outbox_path)
    assert free > config.vacuum_min_free_pages, "the drained backlog's pages are still free"

    # The same file, a run until SIGTERM with no vacuum setting: it shrinks while idle.
    daemon = shipper_config(outbox_path, nats_server.url, exit_when_idle=False)
    assert daemon.vacuum_step == 64
    shipper, _task = run_shipper.start(daemon)
    await wait_until(
        lambda: _free_pages(outbox_path) == 0, within=60, message="the idle shipper shrinks"
    )
    assert shipper.stats.vacuumed_pages >= free - 64


def test_the_vacuum_default_depends_on_the_run_mode() -> None:
    def step(argv: list[str], env: dict[str, str] | None = None) -> int:
        return build_config(_parser().parse_args(["run", *argv]), env or {}).vacuum_step

    assert step([]) == DEFAULT_VACUUM_PAGES == 64
    assert step(["--exit-when-idle"]) == 0
    assert step(["--exit-when-idle", "--vacuum-pages", "32"]) == 32
    assert step(["--exit-when-idle"], {"SHIPPER_VACUUM_PAGES": "8"}) == 8
    assert step(["--vacuum-pages", "0"]) == 0
