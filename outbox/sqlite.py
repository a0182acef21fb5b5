"""SQLite settings for an outbox file shared by several writer processes and one shipper.

* ``journal_mode=WAL``: readers (the shipper's claim) never block writers and vice versa.
* ``synchronous=NORMAL``: in WAL mode a commit is not fsynced, only each checkpoint is.
  A power loss (not a process crash) can lose the last commits; the file stays
  consistent. It is the usual trade-off for an outbox beside a service: ~34k commits/s
  instead of ~6k. Pass ``synchronous="FULL"`` where a power cut must not lose a row.
* ``secure_delete=FAST``: Debian's SQLite (the one Python uses on Debian and Ubuntu) is
  built with secure delete on: every deleted row is overwritten with zeros and every page
  it frees is written to the WAL again. FAST still zeroes deleted rows in the pages a
  delete writes anyway and skips the extra page writes; freed pages may keep old bytes
  until ``incremental_vacuum`` hands them back (SQLite's own default build: OFF). The
  shipper deletes every row it ships: measured on a 100,000-row drain, reads of 1,000 and
  deletes of 100, the database's part per row went from 8.0 to 5.8 us (bench.outbox_floor).
* ``busy_timeout``: a writer waits for the lock instead of failing with
  ``database is locked``; every transaction here is short, so the wait is too.
* ``BEGIN IMMEDIATE`` on engines this package owns: the write lock is taken at the start
  of the transaction. A deferred transaction that reads and then writes can fail at once
  with ``SQLITE_BUSY`` (the busy handler is not called for a lock upgrade on a stale
  snapshot); taking the lock up front makes every conflict a plain, bounded wait.
* ``auto_vacuum=INCREMENTAL``: a new file can give the pages freed by a drained backlog
  back to the file system in small steps (the shipper runs ``PRAGMA incremental_vacuum``);
  an existing file keeps its mode until a one-time ``VACUUM`` (docs/retention.md).
* Owner-only files: an engine created here creates a missing database file with mode
  0600 just before SQLite opens it (:func:`create_private_file`, on each new DBAPI
  connection). SQLite gives the ``-wal`` and
  ``-shm`` files it creates the mode of the database file, so they are 0600 too. An
  existing file keeps the mode it has: an operator who needs group access (writers and
  the shipper as different users) creates the file with that mode first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

DEFAULT_BUSY_TIMEOUT_MS = 30_000
#: ``PRAGMA secure_delete`` on every connection (see the module docstring).
SECURE_DELETE = "FAST"
#: Mode of a database file created here: usage events are billing data.
PRIVATE_FILE_MODE = 0o600


def is_sqlite(url: str | sa.URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_url(path: str | Path, *, asynchronous: bool = True) -> str:
    """URL of an SQLite file for SQLAlchemy (aiosqlite when ``asynchronous``)."""
    driver = "sqlite+aiosqlite" if asynchronous else "sqlite"
    return f"{driver}:///{Path(path)}"


def configure_sqlite(
    engine: sa.Engine,
    *,
    synchronous: str = "NORMAL",
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    begin_immediate: bool = True,
) -> None:
    """Install the pragmas (and optionally ``BEGIN IMMEDIATE``) on a sync engine.

    For an :class:`AsyncEngine` pass ``engine.sync_engine``. A service that keeps the
    outbox in its own SQLite database should call this on its engine, with
    ``begin_immediate=False`` if it wants its read-only transactions to stay deferred.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        if begin_immediate:
            # Take transaction control from the sqlite3 module so "begin" below decides.
            dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            # Only takes effect on a file with no table yet (or at the next VACUUM): every
            # new outbox file can hand free pages back with PRAGMA incremental_vacuum.
            # Setting it takes the write lock, even to the mode the file has, so it is set
            # only where it can take effect: every connection setting it made a writer
            # arriving meanwhile sleep 8 ms in SQLite's busy handler (bench.retention).
            if _can_set_auto_vacuum(cursor):
                cursor.execute("PRAGMA auto_vacuum = INCREMENTAL")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
            cursor.execute(f"PRAGMA secure_delete = {SECURE_DELETE}")
        finally:
            cursor.close()

    if begin_immediate:

        @event.listens_for(engine, "begin")
        def _on_begin(connection: sa.Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


#: ``PRAGMA auto_vacuum``'s value for INCREMENTAL.
_INCREMENTAL = 2


def _can_set_auto_vacuum(cursor: Any) -> bool:
    """The file is not INCREMENTAL yet and has no table (new): reads only, no lock."""
    # DB-API calls only (execute, then fetchone): this runs on sqlite3's cursors and on
    # SQLAlchemy's aiosqlite adapter alike.
    cursor.execute("PRAGMA auto_vacuum")
    (mode,) = cursor.fetchone()
    if mode == _INCREMENTAL:
        return False
    cursor.execute("SELECT count(*) FROM sqlite_master")
    (tables,) = cursor.fetchone()
    return bool(tables == 0)


def sqlite_file(url: str | sa.URL) -> str | None:
    """The file an SQLite URL opens, or None (another database, memory, a URI filename)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    if str(parsed.query.get("uri", "")).lower() in ("true", "1"):
        return None
    return database


def create_private_file(url: str | sa.URL) -> None:
    """Create the SQLite file behind ``url`` with owner-only permissions if it does not
    exist yet (SQLite would create it with 0644 less the umask); an existing file is left
    as it is. Its directory must exist."""
    path = sqlite_file(url)
    if path is None:
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE_MODE)
    except FileExistsError:
        return
    except OSError:
        return  # a missing directory and the like: let SQLite report it as it would
    os.close(fd)


def create_private_on_connect(engine: sa.Engine) -> None:
    """Make ``engine`` (for an :class:`AsyncEngine`, its ``sync_engine``) create its
    missing SQLite file with owner-only permissions before it connects."""

    @event.listens_for(engine, "do_connect")
    def _before_connect(_dialect: Any, _record: Any, _cargs: Any, _cparams: Any) -> None:
        create_private_file(engine.url)


def create_outbox_engine(url: str, **engine_kwargs: Any) -> AsyncEngine:
    """An async engine for an outbox database, with the SQLite settings above applied
    (and a new SQLite file created with owner-only permissions)."""
    engine = create_async_engine(url, **engine_kwargs)
    if is_sqlite(url):
        create_private_on_connect(engine.sync_engine)
        configure_sqlite(engine.sync_engine)
    return engine


def create_outbox_sync_engine(
    url: str | sa.URL,
    *,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    begin_immediate: bool = True,
    **engine_kwargs: Any,
) -> sa.Engine:
    """A sync engine for an outbox database; on SQLite with :func:`configure_sqlite`'s
    settings (``busy_timeout_ms`` and ``begin_immediate`` passed on) and a new file
    created owner-only."""
    engine = sa.create_engine(url, **engine_kwargs)
    if is_sqlite(url):
        create_private_on_connect(engine)
        configure_sqlite(engine, busy_timeout_ms=busy_timeout_ms, begin_immediate=begin_immediate)
    return engine
