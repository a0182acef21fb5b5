"""``Outbox``: the write API for a service that has no database of its own.

It owns an engine on an SQLite file (or any SQLAlchemy URL) and makes each call durable
before returning. A commit through SQLAlchemy's async layer costs about 1 ms here, so one
commit per call would cap a service near 1,000 events/s. Instead calls queue their
validated events and one writer task commits whatever has queued up meanwhile in a single
transaction (group commit); each caller still returns only once its own row is committed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox import migrate, store
from outbox.contract import DEFAULT_MAX_PAYLOAD_BYTES, UsageEvent, build_usage_event
from outbox.errors import OutboxError, OutboxStoreError
from outbox.sqlite import create_outbox_engine, sqlite_url

DEFAULT_PATH = "usage-outbox.db"
#: Environment variable naming the outbox for :meth:`Outbox.from_env` (a URL or a path).
URL_ENV = "USAGE_OUTBOX_URL"

_Waiter = tuple[list[UsageEvent], "asyncio.Future[None]"]


def resolve_url(url_or_path: str | Path) -> str:
    """Accept a SQLAlchemy URL or a plain file path (taken as an SQLite file)."""
    text = str(url_or_path)
    return text if "://" in text else sqlite_url(text)


class Outbox:
    """A standalone outbox with group commit. Use ``async with Outbox(path) as outbox``."""

    def __init__(
        self,
        url_or_path: str | Path = DEFAULT_PATH,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        max_group: int = 1024,
        run_migrations: bool = True,
    ) -> None:
        self.url = resolve_url(url_or_path)
        self.max_payload_bytes = max_payload_bytes
        self.max_group = max_group
        self.run_migrations = run_migrations
        self._engine: AsyncEngine | None = None
        self._queue: asyncio.Queue[_Waiter] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._open_lock = asyncio.Lock()
        self.commits = 0  # group commits made; events / commits is the mean group size

    @classmethod
    def from_env(cls) -> Outbox:
        return cls(os.environ.get(URL_ENV, DEFAULT_PATH))

    def __repr__(self) -> str:
        return f"<Outbox {self.url} commits={self.commits} queued={self._queue.qsize()}>"

    async def open(self) -> Self:
        async with self._open_lock:
            if self._engine is None:
                engine = create_outbox_engine(self.url)
                try:
                    if self.run_migrations:
                        async with engine.begin() as conn:
                            await conn.run_sync(migrate.upgrade)
                except SQLAlchemyError as exc:
                    await engine.dispose()
                    raise OutboxStoreError(f"cannot open outbox {self.url}: {exc}") from exc
                self._engine = engine
                self._writer = asyncio.create_task(self._write_loop(), name="outbox-writer")
        return self

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Commit what is queued, then stop the writer and release the file."""
        if self._writer is not None:
            await self._queue.join()
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def record(
        self,
        *,
        user_id: str,
        product_id: str,
        provider: str,
        operation: str,
        service_type: str | Enum,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        input_units: float | None = None,
        output_units: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Validate and durably record one event; returns its ``event_id`` once committed."""
        event = build_usage_event(
            user_id=user_id,
            product_id=product_id,
            provider=provider,
            operation=operation,
            service_type=service_type,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            input_units=input_units,
            output_units=output_units,
            metadata=metadata,
            max_payload_bytes=self.max_payload_bytes,
        )
        await self._commit([event])
        return event.event_id

    async def record_many(self, events: Iterable[Mapping[str, Any]]) -> list[str]:
        """Validate all, then commit all together; nothing is written if one is refused."""
        built = [build_usage_event(**e, max_payload_bytes=self.max_payload_bytes) for e in events]
        if built:
            await self._commit(built)
        return [e.event_id for e in built]

    async def _commit(self, events: list[UsageEvent]) -> None:
        if self._writer is None:
            await self.open()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((events, done))
        await done

    async def _write_loop(self) -> None:
        while True:
            group = [await self._queue.get()]
            while len(group) < self.max_group and not self._queue.empty():
                group.append(self._queue.get_nowait())
            try:
                await self._write_group(group)
            finally:
                for _ in group:
                    self._queue.task_done()

    async def _write_group(self, group: list[_Waiter]) -> None:
        assert self._engine is not None
        rows = store.event_rows(event for events, _ in group for event in events)
        error: OutboxError | None = None
        try:
            async with self._engine.begin() as conn:
                await conn.execute(store.INSERT, rows)
            self.commits += 1
        except (SQLAlchemyError, OSError) as exc:
            # Disk full, locked past busy_timeout, file gone: every caller in the group
            # hears about it; nothing of the group was committed.
            error = OutboxStoreError(f"outbox write failed: {exc}")
            error.__cause__ = exc
        for _, done in group:
            if done.done():  # the caller was cancelled; its row may still be committed
                continue
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)
