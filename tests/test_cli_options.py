"""The option machinery of both command lines, as a user types them: a flag beats its
environment variable, which beats the default; an empty variable counts as unset; a bad
value is one line naming where it came from and what is expected, with exit code 2; and
``--help`` shows every option's environment variable and default."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from billing.cli import DEFAULTS as BILLING_DEFAULTS
from billing.options import BURST_OPTIONS, RUN_OPTIONS
from shipper.options import DEFAULTS as SHIPPER_DEFAULTS
from shipper.options import OPTIONS
from tests.fixtures.cli_help import option_entries
from tests.fixtures.shipper import run_module, shipper_env
from usage_runtime.options import Option, help_line

PROGRAMS = {"shipper": "usage-shipper", "billing": "usage-billing"}


def _env(tmp_path: Path, **values: str) -> dict[str, str]:
    """No inherited settings of either program; both databases in ``tmp_path``."""
    env = {k: v for k, v in shipper_env().items() if not k.startswith("BILLING_")}
    env["USAGE_OUTBOX_URL"] = str(tmp_path / "outbox.db")
    env["BILLING_DATABASE_URL"] = str(tmp_path / "billing.db")
    env.update(values)
    return env


def _one_line(result: subprocess.CompletedProcess[str], program: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{PROGRAMS[program]}: "), lines[0]
    return lines[0]


# The shipper's consul port is checked (and quoted) before the lease ttl, so with a lease
# shorter than the backoff cap the error says which consul port won, or that the default
# (a valid 8500) did.
BAD_LEASE = ("--lease-ttl", "1", "--backoff-cap", "2")


@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [
        (["--consul-port", "70001"], {"CONSUL_PORT": "70000"}, "consul port 70001 is out"),
        ([], {"CONSUL_PORT": "70000"}, "consul port 70000 is out"),
        ([], {}, "lease ttl must be longer"),
        ([], {"CONSUL_PORT": " "}, "lease ttl must be longer"),
    ],
    ids=["flag beats env", "env beats default", "default", "blank env is unset"],
)
def test_shipper_flag_beats_env_beats_default(
    tmp_path: Path, flags: list[str], env: dict[str, str], expected: str
) -> None:
    result = run_module("shipper", "run", *flags, *BAD_LEASE, env=_env(tmp_path, **env))
    assert expected in _one_line(result, "shipper")


@pytest.mark.parametrize(
    ("flags", "env", "batch"),
    [
        (["--batch-size", "400"], {"BILLING_BATCH_SIZE": "300"}, 400),
        ([], {"BILLING_BATCH_SIZE": "300"}, 300),
        ([], {}, 256),
        ([], {"BILLING_BATCH_SIZE": ""}, 256),
    ],
    ids=["flag beats env", "env beats default", "default", "empty env is unset"],
)
def test_billing_flag_beats_env_beats_default(
    tmp_path: Path, flags: list[str], env: dict[str, str], batch: int
) -> None:
    # A max ack pending below the batch size is refused with both numbers in the line.
    environment = _env(tmp_path, BILLING_MAX_ACK_PENDING="100", **env)
    result = run_module("billing", "run", *flags, env=environment)
    assert f"max ack pending (100) must be at least the batch size ({batch})" in _one_line(
        result, "billing"
    )


def test_an_operator_command_takes_the_database_from_flag_then_env_then_default(
    tmp_path: Path,
) -> None:
    flag, env = tmp_path / "from-flag.db", tmp_path / "from-env.db"
    cases = [
        (["--database-url", str(flag)], {"USAGE_OUTBOX_URL": str(env)}, flag),
        ([], {"USAGE_OUTBOX_URL": str(env)}, env),
        ([], {"USAGE_OUTBOX_URL": ""}, tmp_path / "usage-outbox.db"),
    ]
    for flags, values, chosen in cases:
        result = run_module("shipper", "status", *flags, env=_env(tmp_path, **values), cwd=tmp_path)
        assert f"no outbox database at {chosen} " in _one_line(result, "shipper")


@pytest.mark.parametrize(
    ("program", "argv", "env", "expected"),
    [
        (
            "shipper",
            ["--batch-size", "lots"],
            {},
            "--batch-size: bad value 'lots' (expected a whole number)",
        ),
        (
            "shipper",
            [],
            {"SHIPPER_EXIT_WHEN_IDLE": "maybe"},
            "$SHIPPER_EXIT_WHEN_IDLE: bad value 'maybe' (expected true or false)",
        ),
        (
            "shipper",
            ["--create-stream", "maybe"],
            {},
            "--create-stream: bad value 'maybe' (expected true or false) "
            "(see usage-shipper run --help)",
        ),
        (
            "shipper",
            [],
            {"SHIPPER_POLL_INTERVAL": "soon"},
            "$SHIPPER_POLL_INTERVAL: bad value 'soon' (expected a number)",
        ),
        (
            "billing",
            ["--ack-wait", "long"],
            {},
            "--ack-wait: bad value 'long' (expected a number)",
        ),
        (
            "billing",
            [],
            {"BILLING_BURST": "perhaps"},
            "$BILLING_BURST: bad value 'perhaps' (expected true or false)",
        ),
        (
            "billing",
            [],
            {"BILLING_IDLE_TIMEOUT": "a while"},
            "$BILLING_IDLE_TIMEOUT: bad value 'a while' (expected a number)",
        ),
        (
            "billing",
            ["--parallel-batches", "17"],
            {},
            "parallel batches 17: 0 (by database) to 16",
        ),
        (
            "billing",
            [],
            {"BILLING_PARALLEL_BATCHES": "two"},
            "$BILLING_PARALLEL_BATCHES: bad value 'two' (expected a whole number)",
        ),
        (
            "billing",
            ["--no-migrate", "yes please"],
            {},
            "--no-migrate: bad value 'yes please' (expected true or false) "
            "(see usage-billing run --help)",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_its_source_and_what_is_expected(
    tmp_path: Path, program: str, argv: list[str], env: dict[str, str], expected: str
) -> None:
    result = run_module(program, "run", *argv, env=_env(tmp_path, **env))
    assert _one_line(result, program) == f"{PROGRAMS[program]}: {expected}"
    assert not list(tmp_path.iterdir())  # nothing was created on the way out


@pytest.mark.parametrize(
    ("program", "options", "defaults"),
    [
        ("shipper", OPTIONS, SHIPPER_DEFAULTS),
        ("billing", RUN_OPTIONS + BURST_OPTIONS, BILLING_DEFAULTS),
    ],
)
def test_help_shows_every_options_env_var_and_default(
    tmp_path: Path, program: str, options: tuple[Option, ...], defaults: dict[str, object]
) -> None:
    result = run_module(program, "run", "--help", env=_env(tmp_path))
    assert result.returncode == 0, result.stderr
    entries = option_entries(result.stdout)
    assert set(entries) == {option.flag for option in options}
    for option in options:
        # A default --help shows is the config's own, unless the table words it itself.
        assert option.default is not None or option.field in defaults, option.flag
        assert entries[option.flag].endswith(help_line(option, defaults)), entries[option.flag]
    assert entries["--batch-size"].endswith(
        "(default 1000) [env SHIPPER_BATCH_SIZE]"
        if program == "shipper"
        else "(default 256) [env BILLING_BATCH_SIZE]"
    )
