"""NATS credentials and TLS, end to end, against a real nats-server configured for each.

For every way of authenticating (user and password, token, NKey, ``.creds`` JWT in an
operator-mode server, TLS with server verification, TLS with a client certificate) the
shipper ships a batch of events and the billing consumer bills them. Each test also
checks the server really demands what it was configured to (a client without the
credentials is refused), so a test cannot pass against an open server.

Then the refusals: wrong credentials at start-up end ``usage-shipper run`` and
``usage-billing run`` with exit code 2 and one line on stderr, the outbox untouched;
credentials refused after a first successful connection are retried until they work.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nkeys
import pytest

from billing.config import BillingConfig
from billing.consumer import BillingConsumer
from tests.certs import (
    Operator,
    TlsFiles,
    decode_jwt_claims,
    make_tls,
    nats_conf,
    new_nkey,
    other_ca,
    tls_block,
)
from tests.fixtures.shipper import (
    REPO,
    ShipperRunner,
    outbox_counts,
    run_cli,
    shipper_config,
    shipper_env,
    write_events,
)
from usage_demo.natsserver import NatsServer
from usage_demo.waiting import wait_until
from usage_runtime.nats import NatsRefused, auth_options, open_connection

EVENTS = 40
PASSWORD = "s3cret-pw"
TOKEN = "t0ken-value"


@dataclass
class Setup:
    """A server configuration and the client settings that satisfy it (named as the
    shipper's config fields; billing's have the same names)."""

    server: str
    client: dict[str, Any]
    #: settings that must be refused, to prove the server checks what it should
    refused: dict[str, Any] = field(default_factory=dict)


def _setup(mode: str, tmp_path: Path) -> Setup:
    if mode == "user_password":
        return Setup(
            nats_conf(authorization={"user": "usage", "password": PASSWORD}),
            {"nats_user": "usage", "nats_password": PASSWORD},
            {"nats_user": "usage", "nats_password": "not-it"},
        )
    if mode == "token":
        return Setup(
            nats_conf(authorization={"token": TOKEN}),
            {"nats_token": TOKEN},
            {"nats_token": "not-it"},
        )
    if mode == "nkey":
        user = new_nkey()
        stranger = new_nkey()
        return Setup(
            nats_conf(authorization={"users": [{"nkey": user.public}]}),
            {"nats_nkey_seed_file": str(user.write_seed(tmp_path / "user.nk"))},
            {"nats_nkey_seed_file": str(stranger.write_seed(tmp_path / "stranger.nk"))},
        )
    if mode == "creds_jwt":
        operator = Operator()
        impostor = Operator()  # same shape, keys nobody told the server about
        return Setup(
            operator.server_config(),
            {"nats_creds_file": str(operator.user_creds(tmp_path / "usage.creds", "usage"))},
            {"nats_creds_file": str(impostor.user_creds(tmp_path / "other.creds", "usage"))},
        )
    tls = make_tls(tmp_path / "tls")
    if mode == "tls":
        return Setup(
            nats_conf(tls=tls_block(tls)),
            {"tls_ca_file": str(tls.ca_file)},
            {"tls_ca_file": str(other_ca(tmp_path / "other"))},
        )
    if mode == "tls_client_cert":
        return Setup(
            nats_conf(
                tls=tls_block(tls, verify_clients=True),
                authorization={"user": "usage", "password": PASSWORD},
            ),
            {
                "tls_ca_file": str(tls.ca_file),
                "tls_cert_file": str(tls.client_cert),
                "tls_key_file": str(tls.client_key),
                "nats_user": "usage",
                "nats_password": PASSWORD,
            },
            {"tls_ca_file": str(tls.ca_file), "nats_user": "usage", "nats_password": PASSWORD},
        )
    raise AssertionError(mode)


MODES = ["user_password", "token", "nkey", "creds_jwt", "tls", "tls_client_cert"]


@pytest.fixture
def secured(tmp_path: Path, nats_server_binary: str) -> Iterator[Callable[[Setup], NatsServer]]:
    started: list[NatsServer] = []

    def start(setup: Setup) -> NatsServer:
        server = NatsServer(
            tmp_path / f"nats{len(started)}", config_text=setup.server, binary=nats_server_binary
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def _auth(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings as :func:`auth_options` keywords."""
    names = {
        "nats_user": "user",
        "nats_password": "password",
        "nats_token": "token",
        "nats_nkey_seed_file": "nkey_seed_file",
        "nats_creds_file": "creds_file",
    }
    return auth_options(**{names.get(k, k): v for k, v in settings.items()})


async def _refused(url: str, settings: dict[str, Any]) -> str:
    async def ignore(_exc: Exception) -> None:
        return None

    # Several attempts: a server that requires a client certificate may reset the socket
    # before its TLS alert reaches the client (TLS 1.3 checks the certificate after the
    # client has finished its handshake), and a reset alone says nothing about credentials.
    # The first attempt that sees the alert ends the connect with NatsRefused.
    options = {"max_reconnect_attempts": 10, "reconnect_time_wait": 0.05}
    with pytest.raises(NatsRefused) as refused:
        client = await open_connection([url], {**options, **_auth(settings)}, error_cb=ignore)
        await client.close()
    return str(refused.value)


@pytest.mark.parametrize("mode", MODES)
async def test_the_shipper_ships_and_billing_bills_with_each_kind_of_credentials(
    mode: str,
    tmp_path: Path,
    secured: Callable[[Setup], NatsServer],
    run_shipper: ShipperRunner,
) -> None:
    setup = _setup(mode, tmp_path)
    server = secured(setup)
    # The server demands what it was configured to: nothing, or the wrong thing, fails.
    await _refused(server.url, {})
    await _refused(server.url, setup.refused)

    outbox = tmp_path / "outbox.db"
    await write_events(outbox, EVENTS)
    stats = await run_shipper.run(shipper_config(outbox, server.url, **setup.client))
    assert stats.published == EVENTS
    assert outbox_counts(outbox) == {"pending": 0, "dead": 0}

    consumer = BillingConsumer(
        BillingConfig(
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'billing.db'}",
            nats_url=server.url,
            fetch_timeout=0.5,
            ack_wait=5.0,
            **setup.client,
        )
    )
    async with consumer:
        await asyncio.wait_for(consumer.drain(0.5), 30)
    assert consumer.stats.received == EVENTS
    assert consumer.stats.billed + consumer.stats.unpriced == EVENTS


async def test_a_server_that_does_not_start_tls_is_refused_when_tls_is_configured(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """nats-py would carry on in plaintext when the server does not ask for TLS."""
    tls = make_tls(tmp_path / "tls")
    reason = await _refused(nats_server.url, {"tls_ca_file": str(tls.ca_file)})
    assert "did not start TLS" in reason


async def test_unusable_credential_files_are_refused_before_connecting(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_text("not a seed\n")
    assert "no valid NKey seed" in await _refused(
        nats_server.url, {"nats_nkey_seed_file": str(garbage)}
    )
    assert "no valid NKey seed" in await _refused(
        nats_server.url, {"nats_creds_file": str(garbage)}
    )
    assert "not a seed" not in await _refused(nats_server.url, {"nats_creds_file": str(garbage)}), (
        "a credential file's content is never quoted"
    )
    assert "TLS files cannot be used" in await _refused(
        nats_server.url, {"tls_ca_file": str(garbage)}
    )


def test_a_creds_file_carries_a_user_jwt_signed_by_the_account(tmp_path: Path) -> None:
    """The JWT chain the operator-mode test relies on, checked piece by piece."""
    operator = Operator()
    text = operator.user_creds(tmp_path / "u.creds", "usage", pub_allow=["a.>"]).read_text()
    lines = text.splitlines()
    token = lines[lines.index("-----BEGIN NATS USER JWT-----") + 1]
    seed = lines[lines.index("-----BEGIN USER NKEY SEED-----") + 1]
    claims = decode_jwt_claims(token)
    user = nkeys.from_seed(bytearray(seed.encode()))
    assert claims["sub"] == user.public_key.decode()
    assert claims["iss"] == operator.account.public
    assert claims["nats"] == {
        "subs": -1,
        "data": -1,
        "payload": -1,
        "pub": {"allow": ["a.>"]},
        "sub": {},
        "type": "user",
        "version": 2,
    }
    header, payload, signature = token.split(".")
    account = nkeys.from_seed(bytearray(operator.account.seed))
    padded = signature + "=" * (-len(signature) % 4)
    assert account.verify(f"{header}.{payload}".encode(), base64.urlsafe_b64decode(padded))


# -- refused at start-up: exit 2, one line, nothing lost ----------------------------------


def _flags(settings: dict[str, Any]) -> list[str]:
    flags = {
        "nats_user": "--nats-user",
        "nats_password": "--nats-password",
        "nats_token": "--nats-token",
        "nats_nkey_seed_file": "--nats-nkey-seed",
        "nats_creds_file": "--nats-creds",
        "tls_ca_file": "--tls-ca",
        "tls_cert_file": "--tls-cert",
        "tls_key_file": "--tls-key",
    }
    return [part for key, value in settings.items() for part in (flags[key], str(value))]


def _one_error_line(result: subprocess.CompletedProcess[str], prog: str) -> str:
    """The run's whole stderr (logs at ERROR: the warnings of a first attempt that met a
    reset connection before the server's -ERR are not what is checked) is one line."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith(f"{prog}: nats refused the connection: "), output
    return lines[0]


@pytest.mark.parametrize("mode", ["user_password", "token", "nkey", "creds_jwt", "tls"])
async def test_refused_credentials_end_the_shipper_at_start_up_and_keep_every_event(
    mode: str, tmp_path: Path, secured: Callable[[Setup], NatsServer]
) -> None:
    setup = _setup(mode, tmp_path)
    server = secured(setup)
    outbox = tmp_path / "outbox.db"
    await write_events(outbox, EVENTS)
    result = await asyncio.to_thread(
        run_cli,
        "run",
        "--database-url",
        str(outbox),
        "--nats-url",
        server.url,
        "--exit-when-idle",
        "true",
        "--log-level",
        "ERROR",
        *_flags(setup.refused),
        env=shipper_env(),
    )
    assert result.returncode == 2, result.stderr
    line = _one_error_line(result, "usage-shipper")
    expected = "TLS" if mode == "tls" else "authorization violation"
    assert expected in line
    assert outbox_counts(outbox) == {"pending": EVENTS, "dead": 0}


async def test_refused_credentials_end_billing_at_start_up(
    tmp_path: Path, secured: Callable[[Setup], NatsServer]
) -> None:
    setup = _setup("user_password", tmp_path)
    server = secured(setup)
    database = tmp_path / "billing.db"
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "billing",
            "run",
            "--burst",
            "--log-level",
            "ERROR",
            "--database-url",
            str(database),
            "--nats-url",
            server.url,
            *_flags(setup.refused),
        ],
        env=shipper_env(),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert result.returncode == 2, result.stderr
    assert "authorization violation" in _one_error_line(result, "usage-billing")


async def test_credentials_refused_after_a_first_connection_are_retried_until_they_work(
    tmp_path: Path, nats_server_binary: str, run_shipper: ShipperRunner
) -> None:
    """A rotation gone wrong on the server is an outage, not a reason to exit: the rows
    stay pending and go out once the server accepts the credentials again."""

    def conf(password: str) -> str:
        return nats_conf(authorization={"user": "usage", "password": password})

    server = NatsServer(tmp_path / "nats", config_text=conf(PASSWORD), binary=nats_server_binary)
    server.start()
    try:
        outbox = tmp_path / "outbox.db"
        await write_events(outbox, EVENTS)
        config = shipper_config(
            outbox,
            server.url,
            nats_user="usage",
            nats_password=PASSWORD,
            exit_when_idle=False,
            max_reconnect_attempts=1,
        )
        shipper, task = run_shipper.start(config)
        await wait_until(lambda: shipper.stats.published == EVENTS, 20)

        server.config_text = conf("rotated-elsewhere")
        await asyncio.to_thread(server.restart)
        await write_events(outbox, 10)
        await wait_until(
            lambda: "authorization violation" in (shipper.stats.last_error or ""),
            20,
            message="the shipper meets the refusal",
        )
        assert not task.done(), "a refusal after the first connection is not fatal"
        assert outbox_counts(outbox)["pending"] == 10

        server.config_text = conf(PASSWORD)
        await asyncio.to_thread(server.restart)
        # ``published`` counts PubAcks; the rows go once their deletion commits, after.
        await wait_until(lambda: outbox_counts(outbox) == {"pending": 0, "dead": 0}, 30)
        assert shipper.stats.published >= EVENTS + 10
        assert not task.done()
    finally:
        await asyncio.to_thread(server.stop)


def test_tls_files_fixture_is_what_the_server_expects(tmp_path: Path) -> None:
    """The server certificate names 127.0.0.1 as an IP SAN and chains to the CA."""
    from cryptography import x509

    tls: TlsFiles = make_tls(tmp_path)
    cert = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(tls.ca_file.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    cert.verify_directly_issued_by(ca)
