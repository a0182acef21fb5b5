"""Configuration through the real CLI: one-line errors with exit code 2, a complete --help,
and secrets that never reach the logs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from shipper.cli import _parser, main
from shipper.config import ShipperConfig
from shipper.options import OPTIONS, build_config
from tests.consul_stub import ConsulStub
from tests.fixtures.shipper import (
    msg_ids,
    pending,
    read_stream,
    run_cli,
    shipper_env,
    write_events,
)
from usage_demo.natsserver import NatsServer


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{stderr}"
    assert "Traceback" not in stderr
    assert lines[0].startswith("usage-shipper")
    return lines[0]


BAD_SETTINGS: dict[str, tuple[list[str], dict[str, str], str]] = {
    # name: (flags, environment, a word the message must hold)
    "nats url scheme": (["--nats-url", "http://127.0.0.1:4222"], {}, "nats url"),
    "nats url port": ([], {"NATS_URL": "nats://127.0.0.1:99999"}, "nats url"),
    "nats url empty": (["--nats-url", " , "], {}, "nats servers"),
    "database url": (["--database-url", "://nowhere"], {}, "database url"),
    "database dir missing": (["--database-url", "/nonexistent/dir/outbox.db"], {}, "directory"),
    "unknown option": (["--batch-sise", "10"], {}, "--batch-sise"),
    "batch size not a number": (["--batch-size", "lots"], {}, "--batch-size"),
    "batch size zero": (["--batch-size", "0"], {}, "batch size"),
    "negative poll interval": ([], {"SHIPPER_POLL_INTERVAL": "-1"}, "poll interval"),
    "max attempts not a number": ([], {"SHIPPER_MAX_ATTEMPTS": "8.5"}, "SHIPPER_MAX_ATTEMPTS"),
    "consul port": (["--consul-port", "70000"], {}, "consul port"),
    "bool": (["--create-stream", "maybe"], {}, "--create-stream"),
    "log format": (["--log-format", "xml"], {}, "log format"),
    "log level": (["--log-level", "LOUD"], {}, "log level"),
    "lease shorter than backoff": (["--lease-ttl", "1", "--backoff-cap", "2"], {}, "lease ttl"),
    "password without user": ([], {"NATS_PASSWORD": "pw-in-error-test"}, "user"),
    "missing creds file": (["--nats-creds", "/nonexistent/x.creds"], {}, "creds"),
}


def _main(argv: list[str], env: dict[str, str]) -> int:
    try:
        return main(argv, env)
    except SystemExit as exc:  # argparse's own exits
        return int(exc.code or 0)


@pytest.mark.parametrize("name", sorted(BAD_SETTINGS))
def test_a_bad_setting_is_one_line_on_stderr_and_exit_code_2(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags, environment, word = BAD_SETTINGS[name]
    env = {"USAGE_OUTBOX_URL": str(tmp_path / "outbox.db"), **environment}
    assert _main(["run", *flags], env) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert word.lower() in line.lower()
    assert "pw-in-error-test" not in line
    assert not (tmp_path / "outbox.db").exists()  # nothing was created on the way out


@pytest.mark.parametrize("name", ["unknown option", "log level", "nats url port"])
def test_the_real_command_exits_2_with_one_line_and_no_traceback(name: str, tmp_path: Path) -> None:
    flags, environment, word = BAD_SETTINGS[name]
    env = shipper_env(USAGE_OUTBOX_URL=str(tmp_path / "outbox.db"), **environment)
    result = run_cli("run", *flags, env=env)
    assert result.returncode == 2, result.stderr
    assert word.lower() in _one_line_error(result.stderr).lower()


def test_a_database_dir_that_is_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    assert _main(["run", "--database-url", str(blocker / "outbox.db")], {}) == 2
    assert "directory" in _one_line_error(capsys.readouterr().err)


def test_a_database_path_that_is_a_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _main(["run", "--database-url", str(tmp_path)], {}) == 2
    assert "is a directory" in _one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("env", "servers"),
    [
        ({"NATS_HOST": "nats.internal", "NATS_PORT": "4333"}, ("nats://nats.internal:4333",)),
        ({"NATS_HOST": "nats.internal"}, ("nats://nats.internal:4222",)),
        (
            {"NATS_URL": "nats://a:1,nats://b:2", "NATS_HOST": "ignored"},
            ("nats://a:1", "nats://b:2"),
        ),
        ({}, ("nats://127.0.0.1:4222",)),
    ],
)
def test_nats_servers_from_the_environment(env: dict[str, str], servers: tuple[str, ...]) -> None:
    args = _parser().parse_args(["run"])
    assert build_config(args, env).nats_servers == servers
    flagged = _parser().parse_args(["run", "--nats-url", "nats://flag:9"])
    assert build_config(flagged, env).nats_servers == ("nats://flag:9",)


@pytest.mark.parametrize("command", [["status"], ["dead", "list"], ["dead", "requeue", "--all"]])
def test_operator_commands_on_a_missing_outbox_say_so(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _main([*command, "--database-url", str(tmp_path / "absent.db")], {}) == 2
    assert "no outbox database" in _one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "absent.db").exists()


def test_help_lists_every_option_with_its_environment_variable() -> None:
    result = run_cli("run", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for option in OPTIONS:
        assert option.flag in text
        assert f"[env {option.envvar}]" in text, option.envvar
    assert "NATS_HOST" in text and "NATS_PORT" in text
    # every setting of the shipper can be given as a flag / environment variable
    settable = {f.name for f in dataclasses.fields(ShipperConfig)}
    assert settable == {option.field for option in OPTIONS}


async def test_secrets_never_reach_the_logs(
    outbox_path: Path, nats_server: NatsServer, tmp_path: Path
) -> None:
    ids = await write_events(outbox_path, 5)
    consul = ConsulStub().start()
    consul.stop()  # down: the fallback is logged, with the servers it falls back to
    secrets = ["url-pass-4711", "nats-pass-0815", "consul-token-2342"]
    for log_format in ("text", "json"):
        env = shipper_env(
            USAGE_OUTBOX_URL=str(outbox_path),
            # A first server that refuses connections, so errors about servers are logged.
            NATS_URL=f"nats://someone:url-pass-4711@127.0.0.1:{nats_server.port}",
            NATS_USER="shipper",
            NATS_PASSWORD="nats-pass-0815",
            CONSUL_HOST=consul.host,
            CONSUL_PORT=str(consul.port),
            CONSUL_HTTP_TOKEN="consul-token-2342",
            SHIPPER_EXIT_WHEN_IDLE="true",
            SHIPPER_LOG_LEVEL="DEBUG",
            SHIPPER_LOG_FORMAT=log_format,
        )
        result = run_cli("run", env=env)
        assert result.returncode == 0, result.stderr
        logs = result.stderr
        assert "consul unavailable" in logs and "starting with" in logs
        for secret in secrets:
            assert secret not in logs, f"{secret} in the {log_format} logs"
        if log_format == "json":
            for line in logs.splitlines():
                json.loads(line)  # every line is a JSON document
    assert pending(outbox_path) == 0
    assert set(msg_ids(await read_stream(nats_server.url))) == set(ids)


def test_redacted_config_hides_every_secret() -> None:
    config = ShipperConfig(
        database_url="postgresql+psycopg://billing:db-pass-1@db.example/usage",
        nats_servers=("nats://user:url-pass-2@n1:4222", "nats://token-3@n2:4222", "nats://n3:1"),
        nats_user="user",
        nats_password="nats-pass-4",
        nats_token="nats-token-5",
        consul_token="consul-token-6",
    )
    shown = repr(config.redacted()) + repr(config)
    for secret in (
        "db-pass-1",
        "url-pass-2",
        "token-3",
        "nats-pass-4",
        "nats-token-5",
        "consul-token-6",
    ):
        assert secret not in shown
    assert "n1:4222" in shown and "nats://n3:1" in shown and "db.example" in shown
