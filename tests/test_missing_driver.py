"""A PostgreSQL URL on an install without the ``postgres`` extra: both command lines say
in one line what to install, and exit 2 (the driver is hidden from a subprocess by a
stand-in ``psycopg`` package that fails to import, as a missing one does)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.shipper import REPO, shipper_env

URL = "postgresql://postgres@127.0.0.1:5432/postgres"
HINT = "pip install 'usage-outbox[postgres]'"


@pytest.fixture
def without_psycopg(tmp_path: Path) -> dict[str, str]:
    stand_in = tmp_path / "no-driver" / "psycopg"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'psycopg'\", name='psycopg')\n"
    )
    env = shipper_env()
    env["PYTHONPATH"] = f"{stand_in.parent}:{REPO}"
    env.pop("BILLING_DATABASE_URL", None)
    return env


@pytest.mark.parametrize(
    "argv",
    [
        ["shipper", "run", "--database-url", URL],
        ["shipper", "status", "--database-url", URL],
        ["shipper", "migrate", "--database-url", URL],
        ["billing", "run", "--database-url", URL],
        ["billing", "report", "--database-url", URL],
    ],
    ids=" ".join,
)
def test_a_postgresql_url_without_the_driver_names_the_extra(
    argv: list[str], without_psycopg: dict[str, str]
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *argv],
        env=without_psycopg,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(("usage-shipper: database url", "usage-billing: database url"))
    assert lines[0].endswith(HINT), lines[0]
