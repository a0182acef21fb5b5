"""Discovery through Consul's health API (a local stand-in, asked through real py-consul)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipper.discovery import Discovery, _server_url
from tests.consul_stub import ConsulStub, ServiceInstance
from tests.fixtures.shipper import (
    ShipperRunner,
    msg_ids,
    pending,
    read_stream,
    shipper_config,
    write_events,
)
from usage_demo.natsserver import NatsServer
from usage_demo.waiting import wait_until


@pytest.fixture
def dead_url(unused_tcp_port: int) -> str:
    """A NATS URL nobody listens on: only Consul's answer can lead to the server."""
    return f"nats://127.0.0.1:{unused_tcp_port}"


def _discovery_logs(caplog: pytest.LogCaptureFixture, action: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "action", None) == action]


async def test_consul_steers_the_shipper_to_the_server_it_names(
    outbox_path: Path,
    nats_server: NatsServer,
    consul_stub: ConsulStub,
    dead_url: str,
    run_shipper: ShipperRunner,
) -> None:
    consul_stub.set_service("nats", [("127.0.0.1", nats_server.port)])
    ids = await write_events(outbox_path, 20)
    config = shipper_config(
        outbox_path, dead_url, consul_host=consul_stub.host, consul_port=consul_stub.port
    )

    stats = await run_shipper.run(config)

    assert stats.published == 20
    assert set(msg_ids(await read_stream(nats_server.url))) == set(ids)
    (request,) = consul_stub.requests_for("nats")  # asked once per connection, not per event
    assert request.query.get("passing") == ["1"]


async def test_only_passing_instances_are_used(
    consul_stub: ConsulStub, nats_server: NatsServer, dead_url: str, tmp_path: Path
) -> None:
    consul_stub.set_service(
        "nats",
        [
            ServiceInstance("127.0.0.1", nats_server.port),
            ServiceInstance("10.9.9.9", 4222, passing=False),
        ],
    )
    discovery = Discovery(
        shipper_config(
            tmp_path / "o.db", dead_url, consul_host=consul_stub.host, consul_port=consul_stub.port
        )
    )
    assert await discovery.servers() == [nats_server.url]
    assert discovery.source == "consul"


async def test_node_address_is_used_when_the_service_address_is_empty(
    outbox_path: Path,
    nats_server: NatsServer,
    consul_stub: ConsulStub,
    dead_url: str,
    run_shipper: ShipperRunner,
) -> None:
    consul_stub.set_service("nats", [("127.0.0.1", nats_server.port)], empty_service_address=True)
    await write_events(outbox_path, 5)
    config = shipper_config(
        outbox_path, dead_url, consul_host=consul_stub.host, consul_port=consul_stub.port
    )
    assert await Discovery(config).servers() == [nats_server.url]
    stats = await run_shipper.run(config)
    assert stats.published == 5


def test_server_url_from_an_entry() -> None:
    entry = {"Node": {"Address": "fd00::1"}, "Service": {"Address": "", "Port": 4333}}
    assert _server_url(entry) == "nats://[fd00::1]:4333"
    assert _server_url({"Node": {}, "Service": {"Address": "nats-1", "Port": 4222}}) == (
        "nats://nats-1:4222"
    )


@pytest.fixture
def stopped_consul() -> Iterator[ConsulStub]:
    stub = ConsulStub().start()
    stub.stop()  # its port is closed: connection refused
    yield stub


async def test_consul_down_falls_back_to_the_environment_and_says_why_once(
    outbox_path: Path,
    nats_server: NatsServer,
    stopped_consul: ConsulStub,
    run_shipper: ShipperRunner,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    ids = await write_events(outbox_path, 10)
    config = shipper_config(
        outbox_path,
        nats_server.url,
        consul_host=stopped_consul.host,
        consul_port=stopped_consul.port,
        consul_timeout=0.5,
    )

    stats = await run_shipper.run(config)

    assert stats.published == 10
    assert set(msg_ids(await read_stream(nats_server.url))) == set(ids)
    (warning,) = _discovery_logs(caplog, "discovery_fallback")
    text = warning.getMessage()
    assert "consul unavailable" in text and nats_server.url in text

    # Asked again (a new connection): still down, and it is not repeated.
    discovery = Discovery(config)
    for _ in range(3):
        assert await discovery.servers() == [nats_server.url]
    assert len(_discovery_logs(caplog, "discovery_fallback")) == 2  # one per Discovery


@pytest.mark.parametrize("trouble", ["error", "no passing instance"])
async def test_consul_answering_badly_falls_back_to_the_environment(
    consul_stub: ConsulStub,
    nats_server: NatsServer,
    tmp_path: Path,
    trouble: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if trouble == "error":
        consul_stub.set_service("nats", [("127.0.0.1", 1)])
        consul_stub.fail_next(5, status=500)
    else:
        consul_stub.set_service("nats", [ServiceInstance("127.0.0.1", 1, passing=False)])
    discovery = Discovery(
        shipper_config(
            tmp_path / "o.db",
            nats_server.url,
            consul_host=consul_stub.host,
            consul_port=consul_stub.port,
        )
    )
    assert await discovery.servers() == [nats_server.url]
    assert discovery.source == "environment"
    assert len(_discovery_logs(caplog, "discovery_fallback")) == 1


async def test_the_acl_token_is_sent_and_wins_over_the_environment(
    consul_stub: ConsulStub,
    nats_server: NatsServer,
    dead_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consul_stub.acl_token = "acl-secret-1"
    consul_stub.set_service("nats", [("127.0.0.1", nats_server.port)])
    config = shipper_config(
        tmp_path / "o.db",
        dead_url,
        consul_host=consul_stub.host,
        consul_port=consul_stub.port,
        consul_token="acl-secret-1",
    )
    assert await Discovery(config).servers() == [nats_server.url]
    assert consul_stub.requests_for("nats")[-1].token == "acl-secret-1"

    # py-consul lets CONSUL_HTTP_TOKEN override the token it is given; the configured one
    # (from --consul-token, or that same variable through the CLI) must be the one sent.
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "some-other-token")
    assert await Discovery(config).servers() == [nats_server.url]
    assert consul_stub.requests_for("nats")[-1].token == "acl-secret-1"


async def test_a_new_connection_asks_consul_again(
    outbox_path: Path,
    nats_server: NatsServer,
    consul_stub: ConsulStub,
    dead_url: str,
    run_shipper: ShipperRunner,
    tmp_path: Path,
    nats_server_binary: str,
) -> None:
    """nats-py can only reconnect within its pool: once it gives up, the shipper asks
    Consul again and follows NATS to its new address."""
    consul_stub.set_service("nats", [("127.0.0.1", nats_server.port)])
    first = await write_events(outbox_path, 10)
    shipper, _task = run_shipper.start(
        shipper_config(
            outbox_path,
            dead_url,
            consul_host=consul_stub.host,
            consul_port=consul_stub.port,
            exit_when_idle=False,
            max_reconnect_attempts=1,
        )
    )
    await wait_until(lambda: pending(outbox_path) == 0, message="first events shipped")
    moved = NatsServer(tmp_path / "nats-moved", binary=nats_server_binary).start()
    try:
        consul_stub.set_service("nats", [("127.0.0.1", moved.port)])
        nats_server.kill()
        second = await write_events(outbox_path, 10)
        await wait_until(lambda: pending(outbox_path) == 0, 15, message="shipped to the new one")
        assert shipper.stats.connections == 2
        assert len(consul_stub.requests_for("nats")) >= 2
        assert set(msg_ids(await read_stream(moved.url))) == set(second)
        assert set(first).isdisjoint(msg_ids(await read_stream(moved.url)))
    finally:
        moved.stop()
