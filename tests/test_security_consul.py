"""Consul with an ACL token and over TLS, through the real py-consul client.

The stand-in (``tests/consul_stub.py``) records the ``X-Consul-Token`` of every request
and, given a server-side ``ssl.SSLContext``, speaks HTTPS with a certificate from a
throwaway CA, so both the token and the certificate check are exercised for real.
"""

from __future__ import annotations

import argparse
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from outbox.errors import ConfigError
from shipper.discovery import Discovery
from shipper.options import build_config
from tests.certs import TlsFiles, make_tls, other_ca
from tests.consul_stub import ConsulStub
from tests.fixtures.shipper import ShipperRunner, outbox_counts, shipper_config, write_events
from usage_demo.natsserver import NatsServer

TOKEN = "consul-acl-token-5150"


@pytest.fixture
def dead_url(unused_tcp_port: int) -> str:
    """A NATS URL nobody listens on: only Consul's answer can lead to the server."""
    return f"nats://127.0.0.1:{unused_tcp_port}"


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return make_tls(tmp_path / "tls")


@pytest.fixture
def https_consul(tls: TlsFiles, nats_server: NatsServer) -> Iterator[ConsulStub]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.server_cert, tls.server_key)
    with ConsulStub(acl_token=TOKEN, ssl_context=context) as stub:
        stub.set_service("nats", [("127.0.0.1", nats_server.port)])
        yield stub


@pytest.fixture
def http_consul(nats_server: NatsServer) -> Iterator[ConsulStub]:
    with ConsulStub(acl_token=TOKEN) as stub:
        stub.set_service("nats", [("127.0.0.1", nats_server.port)])
        yield stub


def _args(**flags: str) -> argparse.Namespace:
    return argparse.Namespace(**flags)


def test_the_token_comes_from_the_flag_or_else_consul_http_token() -> None:
    assert build_config(_args(), {"CONSUL_HTTP_TOKEN": TOKEN}).consul_token == TOKEN
    flag = build_config(_args(consul_token="from-flag"), {"CONSUL_HTTP_TOKEN": TOKEN})
    assert flag.consul_token == "from-flag"
    assert build_config(_args(), {}).consul_token is None


async def test_the_token_arrives_as_x_consul_token_and_the_flag_beats_the_environment(
    http_consul: ConsulStub,
    nats_server: NatsServer,
    dead_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # py-consul itself prefers CONSUL_HTTP_TOKEN over the token it is given: a wrong one
    # in the environment must not win over the configured (flag) one.
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "stale-token-in-env")
    config = shipper_config(
        tmp_path / "o.db",
        dead_url,
        consul_host=http_consul.host,
        consul_port=http_consul.port,
        consul_token=TOKEN,
    )
    discovery = Discovery(config)
    assert await discovery.servers() == [nats_server.url]
    assert discovery.source == "consul"
    assert [r.token for r in http_consul.requests_for("nats")] == [TOKEN]


async def test_a_refused_token_falls_back_to_the_configured_servers_and_says_so(
    http_consul: ConsulStub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    config = shipper_config(
        tmp_path / "o.db",
        "nats://127.0.0.1:4999",
        consul_host=http_consul.host,
        consul_port=http_consul.port,
        consul_token="not-the-token",
    )
    discovery = Discovery(config)
    assert await discovery.servers() == ["nats://127.0.0.1:4999"]
    assert discovery.source == "environment"
    assert [r.token for r in http_consul.requests_for("nats")] == ["not-the-token"]
    (warning,) = [r for r in caplog.records if getattr(r, "action", "") == "discovery_fallback"]
    assert "not-the-token" not in warning.getMessage()


async def test_consul_over_https_is_verified_with_the_configured_ca(
    https_consul: ConsulStub,
    tls: TlsFiles,
    nats_server: NatsServer,
    dead_url: str,
    tmp_path: Path,
) -> None:
    assert https_consul.scheme == "https"
    config = shipper_config(
        tmp_path / "o.db",
        dead_url,
        consul_host=https_consul.host,
        consul_port=https_consul.port,
        consul_scheme="https",
        consul_ca_file=str(tls.ca_file),
        consul_token=TOKEN,
    )
    discovery = Discovery(config)
    assert await discovery.servers() == [nats_server.url]
    assert discovery.source == "consul"
    (request,) = https_consul.requests_for("nats")
    assert request.token == TOKEN


@pytest.mark.parametrize("ca", ["other", "system"])
async def test_an_untrusted_consul_certificate_is_not_used(
    ca: str,
    https_consul: ConsulStub,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Verification is on whatever the environment says: a Consul whose certificate does
    not chain to the CA (the configured one, or else the system's) is not asked; the
    shipper falls back to its configured servers, and the token never left."""
    caplog.set_level(logging.WARNING)
    ca_file = str(other_ca(tmp_path / "other")) if ca == "other" else None
    config = shipper_config(
        tmp_path / "o.db",
        "nats://127.0.0.1:4999",
        consul_host=https_consul.host,
        consul_port=https_consul.port,
        consul_scheme="https",
        consul_ca_file=ca_file,
        consul_token=TOKEN,
    )
    discovery = Discovery(config)
    assert await discovery.servers() == ["nats://127.0.0.1:4999"]
    assert discovery.source == "environment"
    assert https_consul.requests_for("nats") == []  # the handshake failed: no request read
    assert any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records)


async def test_the_shipper_ships_to_the_servers_an_https_consul_names(
    https_consul: ConsulStub,
    tls: TlsFiles,
    nats_server: NatsServer,
    dead_url: str,
    tmp_path: Path,
    run_shipper: ShipperRunner,
) -> None:
    outbox = tmp_path / "outbox.db"
    await write_events(outbox, 15)
    config = shipper_config(
        outbox,
        dead_url,
        consul_host=https_consul.host,
        consul_port=https_consul.port,
        consul_scheme="https",
        consul_ca_file=str(tls.ca_file),
        consul_token=TOKEN,
    )
    stats = await run_shipper.run(config)
    assert stats.published == 15
    assert outbox_counts(outbox) == {"pending": 0, "dead": 0}


def test_consul_tls_settings_are_checked_at_start_up(tmp_path: Path, tls: TlsFiles) -> None:
    with pytest.raises(ConfigError, match="only used with --consul-scheme https"):
        build_config(_args(consul_ca_file=str(tls.ca_file)), {})
    with pytest.raises(ConfigError, match="consul scheme must be http or https"):
        build_config(_args(consul_scheme="ftp"), {})
    with pytest.raises(ConfigError, match="not a readable file"):
        build_config(_args(consul_scheme="https", consul_ca_file=str(tmp_path / "missing.pem")), {})
    config = build_config(_args(), {"CONSUL_SCHEME": "https", "CONSUL_CACERT": str(tls.ca_file)})
    assert config.consul_ca_file == str(tls.ca_file)
