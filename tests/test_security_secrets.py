"""Secrets given by flag, environment or in a URL never reach output, logs or metrics.

The real CLIs run as subprocesses against a nats-server that demands a password and a
Consul stand-in that demands an ACL token, with every secret set (NATS password and
token, Consul token, a password inside a NATS URL) and logging at DEBUG, in both log
formats. Everything they print, and their ``/metrics`` (when the CLIs have
``--metrics-port``), is searched for the secrets.
The refusal and bad-URL paths, whose error messages are the likeliest to echo what they
were given, are searched too.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from billing.cli import main as billing_main
from billing.config import BillingConfig
from billing.options import RUN_OPTIONS as billing_options
from outbox.errors import ConfigError
from shipper.cli import main as shipper_main
from shipper.config import ShipperConfig
from shipper.options import OPTIONS as shipper_options
from tests.certs import nats_conf
from tests.consul_stub import ConsulStub
from tests.fixtures.shipper import (
    REPO,
    CliProcesses,
    outbox_counts,
    run_cli,
    shipper_env,
    write_events,
)
from tests.metrics_http import http_get
from usage_demo.natsserver import NatsServer
from usage_demo.processes import CliProcess, module_command
from usage_demo.waiting import wait_until

EVENTS = 20


def _secret(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:12]}"


PASSWORD = _secret("nats-password")
TOKEN = _secret("nats-token")
CONSUL_TOKEN = _secret("consul-token")
URL_PASSWORD = _secret("url-password")
SECRETS = (PASSWORD, TOKEN, CONSUL_TOKEN, URL_PASSWORD)
_SERVING = re.compile(r"serving /metrics, /healthz and /readyz on (http://[\d.]+:\d+)")
#: Whether the CLIs serve metrics (the observability work adds ``--metrics-port``).
SHIPPER_METRICS = any(option.flag == "--metrics-port" for option in shipper_options)
BILLING_METRICS = any(option.flag == "--metrics-port" for option in billing_options)


@dataclass
class World:
    nats: NatsServer
    consul: ConsulStub
    dead_url: str  # the configured fallback: a URL with a password nobody listens at


@pytest.fixture
def world(tmp_path: Path, nats_server_binary: str, unused_tcp_port: int) -> Iterator[World]:
    # The server checks user and password; the token is sent along and ignored by it.
    server = NatsServer(
        tmp_path / "nats",
        config_text=nats_conf(authorization={"users": [{"user": "usage", "password": PASSWORD}]}),
        binary=nats_server_binary,
    )
    server.start()
    try:
        with ConsulStub(acl_token=CONSUL_TOKEN) as consul:
            consul.set_service("nats", [("127.0.0.1", server.port)])
            dead = f"nats://usage:{URL_PASSWORD}@127.0.0.1:{unused_tcp_port}"
            yield World(server, consul, dead)
    finally:
        server.stop()


def assert_no_secret(text: str, where: str, secrets: tuple[str, ...] = SECRETS) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret} found in {where}"


def _assert_json_lines(text: str) -> None:
    for line in text.splitlines():
        if line.strip():
            json.loads(line)  # a plain line (a traceback, a print) would fail here


def _metrics_url(log: Path) -> str | None:
    found = _SERVING.findall(log.read_text()) if log.exists() else []
    return found[0] if found else None


async def _scrape(log: Path, serving: bool) -> str:
    """The ``/metrics`` text of the process logging to ``log`` ("" when not serving)."""
    if not serving:
        return ""
    await wait_until(lambda: _metrics_url(log), 30, message=f"the metrics port in {log}")
    url = _metrics_url(log)
    assert url is not None
    status, text = await http_get(url, "/metrics")
    assert status == 200, text
    return text


async def _stop(process: CliProcess) -> None:
    assert (await process.stop_async(20)).returncode == 0  # SIGTERM; SIGKILL after 20 s


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_no_secret_in_the_shipper_output_or_metrics(
    log_format: str, world: World, tmp_path: Path, cli_processes: CliProcesses
) -> None:
    outbox = tmp_path / "outbox.db"
    await write_events(outbox, EVENTS)
    secrets_as_flags = log_format == "text"  # the other run takes them from the environment
    flags = (
        ["--nats-password", PASSWORD, "--nats-token", TOKEN, "--consul-token", CONSUL_TOKEN]
        if secrets_as_flags
        else []
    )
    env = shipper_env(
        USAGE_OUTBOX_URL=str(outbox),
        NATS_URL=world.dead_url,
        NATS_USER="usage",
        CONSUL_HOST=world.consul.host,
        CONSUL_PORT=str(world.consul.port),
        SHIPPER_LOG_LEVEL="DEBUG",
        SHIPPER_LOG_FORMAT=log_format,
    )
    if not secrets_as_flags:
        env.update(NATS_PASSWORD=PASSWORD, NATS_TOKEN=TOKEN, CONSUL_HTTP_TOKEN=CONSUL_TOKEN)
    log = tmp_path / "shipper.log"
    serve = ["--metrics-port", "0"] if SHIPPER_METRICS else []
    process = cli_processes.start("run", *serve, *flags, env=env, log_path=log)

    await wait_until(lambda: outbox_counts(outbox)["pending"] == 0, 30, message="shipped")
    metrics = await _scrape(log, SHIPPER_METRICS)
    await _stop(process)

    output = log.read_text()
    assert "starting with" in output and "***" in output  # the redacted settings
    assert [r.token for r in world.consul.requests_for("nats")] == [CONSUL_TOKEN]
    assert_no_secret(output, f"the {log_format} output")
    assert_no_secret(metrics, "/metrics")
    if log_format == "json":
        _assert_json_lines(output)


def _start_billing(args: list[str], *, env: dict[str, str], log: Path) -> CliProcess:
    return CliProcess(module_command("billing", *args), env=env, log_path=log, cwd=REPO).start()


def _billing(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "billing", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_no_secret_in_the_billing_output_or_metrics(
    log_format: str, world: World, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.db"
    await write_events(outbox, EVENTS)
    shipped = await asyncio.to_thread(
        run_cli,
        "run",
        "--exit-when-idle",
        "true",
        env=shipper_env(
            USAGE_OUTBOX_URL=str(outbox),
            NATS_URL=world.nats.url,
            NATS_USER="usage",
            NATS_PASSWORD=PASSWORD,
        ),
    )
    assert shipped.returncode == 0, shipped.stderr

    database = tmp_path / "billing.db"
    secrets_as_flags = log_format == "text"
    flags = ["--nats-password", PASSWORD, "--nats-token", TOKEN] if secrets_as_flags else []
    env = shipper_env(
        BILLING_DATABASE_URL=str(database),
        NATS_URL=f"{world.nats.url},{world.dead_url}",
        NATS_USER="usage",
        BILLING_LOG_LEVEL="DEBUG",
        BILLING_LOG_FORMAT=log_format,
        BILLING_FETCH_TIMEOUT="0.5",
    )
    if not secrets_as_flags:
        env.update(NATS_PASSWORD=PASSWORD, NATS_TOKEN=TOKEN)
    log = tmp_path / "billing.log"
    serve = ["--metrics-port", "0"] if BILLING_METRICS else []
    billing = _start_billing(["run", *serve, *flags], env=env, log=log)
    try:

        def billed() -> int:
            if not database.exists():
                return 0
            with closing(sqlite3.connect(database)) as conn:
                try:
                    return int(conn.execute("SELECT count(*) FROM billing_records").fetchone()[0])
                except sqlite3.OperationalError:  # not migrated yet
                    return 0

        await wait_until(lambda: billed() == EVENTS, 30, message="billed")
        metrics = await _scrape(log, BILLING_METRICS)
        await _stop(billing)
    finally:
        billing.close()
    output = log.read_text()
    assert "starting with" in output and "***" in output
    assert_no_secret(output, f"billing's {log_format} output")
    assert_no_secret(metrics, "billing's /metrics")
    if log_format == "json":
        _assert_json_lines(output)


async def test_no_secret_in_refusals(world: World, tmp_path: Path) -> None:
    wrong = _secret("wrong-password")
    outbox = tmp_path / "outbox.db"
    await write_events(outbox, 3)
    refused = await asyncio.to_thread(
        run_cli,
        "run",
        "--nats-url",
        world.nats.url,
        "--nats-user",
        "usage",
        "--nats-password",
        wrong,
        "--nats-token",
        TOKEN,
        env=shipper_env(USAGE_OUTBOX_URL=str(outbox), SHIPPER_LOG_LEVEL="DEBUG"),
    )
    assert refused.returncode == 2
    assert "authorization violation" in refused.stderr
    assert_no_secret(refused.stdout + refused.stderr, "a refusal", (*SECRETS, wrong))

    billing_refused = await asyncio.to_thread(
        _billing,
        "run",
        "--burst",
        "--database-url",
        str(tmp_path / "billing.db"),
        "--nats-url",
        world.nats.url,
        "--nats-user",
        "usage",
        "--nats-password",
        wrong,
        env=shipper_env(BILLING_LOG_LEVEL="DEBUG"),
    )
    assert billing_refused.returncode == 2
    assert_no_secret(billing_refused.stdout + billing_refused.stderr, "billing's refusal", (wrong,))


@pytest.mark.parametrize(
    "url",
    [
        f"nats://usage:{URL_PASSWORD}@127.0.0.1:notaport",
        # A "/" in a password cuts urlsplit's netloc short: the "port" is a piece of it.
        f"nats://usage:{URL_PASSWORD[:6]}/{URL_PASSWORD[6:]}@127.0.0.1:4222",
        f"http://usage:{URL_PASSWORD}@127.0.0.1:4222",
        f"nats://{TOKEN}@",
    ],
)
def test_no_secret_in_the_error_for_a_bad_nats_url(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pieces = (URL_PASSWORD, URL_PASSWORD[:6], URL_PASSWORD[6:], TOKEN)
    env = {"USAGE_OUTBOX_URL": str(tmp_path / "o.db"), "BILLING_DATABASE_URL": str(tmp_path)}
    assert shipper_main(["run", "--nats-url", url], env=env) == 2
    out, err = capsys.readouterr()
    assert "usage-shipper: nats url" in err
    assert_no_secret(out + err, f"the shipper's error for {url}", pieces)
    assert billing_main(["run", "--nats-url", url], env=env) == 2
    out, err = capsys.readouterr()
    assert "usage-billing: nats url" in err
    assert_no_secret(out + err, f"billing's error for {url}", pieces)


def test_configs_never_show_their_secrets() -> None:
    shipper = ShipperConfig(
        nats_servers=(f"nats://u:{URL_PASSWORD}@n1:4222", f"nats://{TOKEN}@n2:4222"),
        nats_user="u",
        nats_password=PASSWORD,
        nats_token=TOKEN,
        consul_token=CONSUL_TOKEN,
    )
    billing = BillingConfig(
        nats_url=f"nats://u:{URL_PASSWORD}@n1:4222,nats://{TOKEN}@n2:4222",
        nats_user="u",
        nats_password=PASSWORD,
        nats_token=TOKEN,
    )
    for shown in (repr(shipper), str(shipper.redacted()), repr(billing), str(billing.redacted())):
        assert_no_secret(shown, shown)
        assert "n1:4222" in shown and "n2:4222" in shown
    with pytest.raises(ConfigError) as error:
        ShipperConfig(nats_servers=(f"nats://u:{URL_PASSWORD}@n1:x",)).validate()
    assert_no_secret(str(error.value), "a config error")
