"""The README's Python blocks run as written (each in a fresh interpreter, in an empty
directory), so the documentation cannot drift from the code; and the error a user meets
when the outbox table is missing says how to create it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from outbox import OutboxStoreError, create_outbox_engine, record_usage, record_usage_sync
from tests.fixtures.shipper import REPO, usage_args

_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(markdown: str) -> list[str]:
    """The fenced ```python blocks of a Markdown text, in order."""
    return _BLOCK.findall(markdown)


def test_the_extractor_finds_blocks() -> None:
    text = "intro\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\n"]


README_BLOCKS = python_blocks((REPO / "README.md").read_text())


def test_the_readme_has_python_blocks() -> None:
    assert README_BLOCKS, "README.md has no ```python block: the extractor is broken"


@pytest.mark.parametrize("block", README_BLOCKS, ids=lambda b: b.splitlines()[0][:40])
def test_readme_python_block_runs(block: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", block],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


MISSING = "no usage_outbox table in this database: create it with `usage-shipper migrate"


async def test_a_missing_table_says_how_to_create_it(tmp_path: Path) -> None:
    engine = create_outbox_engine(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    try:
        async with engine.begin() as conn:
            with pytest.raises(OutboxStoreError, match=re.escape(MISSING)):
                await record_usage(conn, **usage_args(1))
    finally:
        await engine.dispose()
    sync_engine = sa.create_engine(f"sqlite:///{tmp_path / 'empty-sync.db'}")
    try:
        with sync_engine.begin() as conn, pytest.raises(OutboxStoreError, match=re.escape(MISSING)):
            record_usage_sync(conn, **usage_args(1))
    finally:
        sync_engine.dispose()
