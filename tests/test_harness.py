"""The test harness itself: a real nats-server we can stop, crash, hang and restart, a real
cluster, and a Consul stand-in that the real py-consul client accepts.

If these fail, every test built on them means nothing, so they check the behaviour the other
tests rely on: same port after a restart, data kept, a hang that really hangs.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import consul
import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from tests.consul_stub import ConsulStub, ServiceInstance
from usage_demo import natsserver
from usage_demo.natscluster import NatsCluster
from usage_demo.natsserver import NatsServer, NatsServerError

T = TypeVar("T")


async def eventually(action: Callable[[], Awaitable[T]], within: float = 10.0) -> T:
    """Retry ``action`` until it succeeds or ``within`` seconds pass (then re-raise its error)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await action()
        except Exception:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(0.05)


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


async def reconnecting_client(servers: str | list[str]) -> NatsClient:
    return await nats.connect(
        servers=servers,
        connect_timeout=1,
        reconnect_time_wait=0.05,
        max_reconnect_attempts=-1,
    )


async def add_stream(js: JetStreamContext, name: str = "H", replicas: int = 1) -> None:
    await js.add_stream(name=name, subjects=[f"{name.lower()}.>"], num_replicas=replicas)


# -- finding the binary ---------------------------------------------------------------------


def test_binary_is_the_pip_one_not_the_system_one(
    monkeypatch: pytest.MonkeyPatch, nats_server_binary: str
) -> None:
    monkeypatch.delenv(natsserver.BINARY_ENV, raising=False)
    found = natsserver.find_nats_server_binary()
    assert found != "/usr/sbin/nats-server"
    assert Path(found).name == "nats-server"
    assert os.access(found, os.X_OK)


def test_binary_override_wins_and_a_bad_one_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, nats_server_binary: str
) -> None:
    monkeypatch.setenv(natsserver.BINARY_ENV, nats_server_binary)
    assert natsserver.find_nats_server_binary() == nats_server_binary
    monkeypatch.setenv(natsserver.BINARY_ENV, str(tmp_path / "missing"))
    with pytest.raises(natsserver.NatsServerNotFoundError, match="NATS_SERVER_BIN"):
        natsserver.find_nats_server_binary()


# -- one server -----------------------------------------------------------------------------


def test_start_and_stop(nats_server: NatsServer) -> None:
    assert nats_server.running
    assert nats_server.port not in (4222, -1)
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    assert port_open(nats_server.host, nats_server.port)
    assert "Server is ready" in nats_server.log_text()

    nats_server.stop()

    assert not nats_server.running
    assert nats_server.pid is None
    assert not port_open(nats_server.host, nats_server.port)
    assert "Server Exiting" in nats_server.log_text()


def test_port_4222_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="4222"):
        NatsServer(tmp_path, port=4222)


def test_a_server_that_cannot_start_says_why(tmp_path: Path, nats_server_binary: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = NatsServer(tmp_path, port=taken.getsockname()[1], binary=nats_server_binary)
        with pytest.raises(NatsServerError, match="exited with code"):
            server.start(timeout=5)
    assert not server.running


def test_context_manager_stops_the_process(tmp_path: Path, nats_server_binary: str) -> None:
    with NatsServer(tmp_path, binary=nats_server_binary) as server:
        pid = server.pid
        assert pid is not None and server.running
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_restart_keeps_port_and_data_and_the_client_reconnects(
    nats_server: NatsServer,
) -> None:
    port_before = nats_server.port
    nc = await reconnecting_client(nats_server.url)
    try:
        js = nc.jetstream(timeout=2)
        await add_stream(js)
        ack = await js.publish("h.one", b"kept", headers={"Nats-Msg-Id": "m-1"})
        assert ack.seq == 1

        nats_server.restart()

        assert nats_server.port == port_before
        # The same client (same address) comes back and the stream still has the message.
        # Short request timeouts: a request sent before the client noticed the restart is
        # lost with the old socket.
        js = nc.jetstream(timeout=0.3)
        info = await eventually(lambda: js.stream_info("H"))
        assert info.state.messages == 1
        msg = await js.get_msg("H", 1)
        assert msg.data == b"kept"
        ack2 = await eventually(lambda: js.publish("h.two", b"after"))
        assert ack2.seq == 2
        assert nc.connected_url is not None and nc.connected_url.port == port_before
    finally:
        await nc.close()


async def test_kill_is_a_crash_and_start_brings_it_back(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream(timeout=2)
    await add_stream(js)
    await js.publish("h.one", b"acked before the crash")
    await nc.close()
    pid = nats_server.pid
    assert pid is not None

    nats_server.kill()

    assert not nats_server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert "Server Exiting" not in nats_server.log_text(), "SIGKILL must not shut down cleanly"

    nats_server.start()
    nc = await nats.connect(nats_server.url)
    try:
        info = await nc.jetstream(timeout=2).stream_info("H")
        assert info.state.messages == 1
    finally:
        await nc.close()


async def test_freeze_hangs_publishes_and_thaw_resumes(
    nats_server: NatsServer, nats_client: NatsClient, jetstream: JetStreamContext
) -> None:
    await add_stream(jetstream)

    nats_server.freeze()
    assert nats_server.frozen and nats_server.running
    with pytest.raises(nats.errors.TimeoutError):
        await jetstream.publish("h.frozen", b"x", timeout=0.3)

    nats_server.thaw()
    assert not nats_server.frozen
    ack = await jetstream.publish("h.thawed", b"y", timeout=2)
    # The publish that timed out may still have been stored once the server woke up.
    assert ack.seq in (1, 2)


def test_stop_works_on_a_frozen_server(nats_server: NatsServer) -> None:
    nats_server.freeze()
    started = time.monotonic()
    nats_server.stop(timeout=5)
    assert not nats_server.running
    assert time.monotonic() - started < 5, "a frozen server must take SIGTERM, not wait for KILL"


# -- Consul stand-in, through the real py-consul client -------------------------------------


@pytest.fixture
def consul_client(consul_stub: ConsulStub, monkeypatch: pytest.MonkeyPatch) -> consul.Consul:
    # py-consul prefers CONSUL_HTTP_TOKEN over token=; keep the tests independent of the shell.
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    return consul.Consul(host=consul_stub.host, port=consul_stub.port, token="s3cret")


def test_consul_stub_answers_health_service(
    consul_stub: ConsulStub, consul_client: consul.Consul
) -> None:
    consul_stub.set_service("nats", [("127.0.0.1", 4333), ("127.0.0.2", 4334)])

    index, entries = consul_client.health.service("nats", passing=True)

    assert index == str(consul_stub.index)
    assert [(e["Service"]["Address"], e["Service"]["Port"]) for e in entries] == [
        ("127.0.0.1", 4333),
        ("127.0.0.2", 4334),
    ]
    assert all(e["Service"]["Service"] == "nats" for e in entries)
    assert all(check["Status"] == "passing" for e in entries for check in e["Checks"])
    [request] = consul_stub.requests_for("nats")
    assert request.query["passing"] == ["1"]
    assert request.token == "s3cret"


def test_consul_stub_empty_service_address_means_node_address(
    consul_stub: ConsulStub, consul_client: consul.Consul
) -> None:
    consul_stub.set_service("nats", [("10.0.0.7", 4222)], empty_service_address=True)

    _index, [entry] = consul_client.health.service("nats", passing=True)

    assert entry["Service"]["Address"] == ""
    assert entry["Node"]["Address"] == "10.0.0.7"
    assert entry["Service"]["Port"] == 4222


def test_consul_stub_filters_failing_instances_only_when_asked(
    consul_stub: ConsulStub, consul_client: consul.Consul
) -> None:
    consul_stub.set_service(
        "nats",
        [ServiceInstance("127.0.0.1", 4333), ServiceInstance("127.0.0.1", 4334, passing=False)],
    )

    _, passing = consul_client.health.service("nats", passing=True)
    _, everything = consul_client.health.service("nats")

    assert [e["Service"]["Port"] for e in passing] == [4333]
    assert [e["Service"]["Port"] for e in everything] == [4333, 4334]
    assert "passing" not in consul_stub.requests[-1].query


def test_consul_stub_unknown_service_is_an_empty_list(consul_client: consul.Consul) -> None:
    _, entries = consul_client.health.service("nobody", passing=True)
    assert entries == []


def test_consul_stub_acl_and_failures(
    consul_stub: ConsulStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    consul_stub.acl_token = "right"
    consul_stub.set_service("nats", [("127.0.0.1", 4333)])

    wrong = consul.Consul(host=consul_stub.host, port=consul_stub.port, token="wrong")
    with pytest.raises(consul.ACLPermissionDenied):
        wrong.health.service("nats", passing=True)

    right = consul.Consul(host=consul_stub.host, port=consul_stub.port, token="right")
    consul_stub.fail_next(1, status=500)
    with pytest.raises(consul.ConsulException, match="500"):
        right.health.service("nats", passing=True)
    _, [entry] = right.health.service("nats", passing=True)
    assert entry["Service"]["Port"] == 4333


def test_consul_stub_blocking_query_returns_on_change(
    consul_stub: ConsulStub, consul_client: consul.Consul
) -> None:
    consul_stub.set_service("nats", [("127.0.0.1", 4333)])
    index, _ = consul_client.health.service("nats", passing=True)
    answer: list[tuple[str, list[dict[str, Any]]]] = []
    waiter = threading.Thread(
        target=lambda: answer.append(
            consul_client.health.service("nats", passing=True, index=index, wait="5s")
        )
    )
    waiter.start()
    deadline = time.monotonic() + 5
    while len(consul_stub.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # until the blocking request has arrived (bounded by the deadline)
    assert not answer, "a blocking query must wait for a change"

    consul_stub.set_service("nats", [("127.0.0.1", 4444)])
    waiter.join(timeout=5)

    [(new_index, [entry])] = answer
    assert int(new_index) > int(index)
    assert entry["Service"]["Port"] == 4444


def test_consul_stub_stops() -> None:
    with ConsulStub() as stub:
        host, port = stub.host, stub.port
        assert port_open(host, port)
    assert not port_open(host, port)


# -- cluster ----------------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_cluster_survives_losing_the_stream_leader(nats_cluster: NatsCluster) -> None:
    assert len(set(nats_cluster.urls)) == 3
    assert all(node.running for node in nats_cluster.nodes)
    nc = await reconnecting_client(nats_cluster.urls)
    try:
        js = nc.jetstream(timeout=1)
        await add_stream(js, "R", replicas=3)
        # A new R3 stream elects its leader first: until then a publish finds no one.
        await eventually(
            lambda: js.publish("r.one", b"1", headers={"Nats-Msg-Id": "r-1"}), within=10
        )
        info = await js.stream_info("R")
        assert info.cluster is not None and info.cluster.leader is not None
        leader = nats_cluster.index_of(info.cluster.leader)
        url_before = nats_cluster.urls[leader]

        nats_cluster.kill(leader)

        assert not nats_cluster.nodes[leader].running
        # Two of three nodes remain: a new leader is elected and publishing goes on.
        await eventually(
            lambda: js.publish("r.two", b"2", headers={"Nats-Msg-Id": "r-2"}), within=15
        )
        info = await js.stream_info("R")
        assert info.state.messages == 2
        assert info.cluster is not None and info.cluster.leader != nats_cluster.names[leader]

        nats_cluster.restart(leader)

        assert nats_cluster.nodes[leader].running
        assert nats_cluster.urls[leader] == url_before
    finally:
        await nc.close()
