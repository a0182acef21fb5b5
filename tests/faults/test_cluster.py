"""Scenario 4 of issue 5: a three-node JetStream cluster loses its stream leader mid-run.

The stream has three replicas; the shipper finds the nodes only through Consul (its
fallback NATS URL points nowhere); billing knows all three. While writer processes write,
the node leading the stream is SIGKILLed; once the stream has a new leader and shipping
goes on, the node is restarted. Audit.

The 409 "duplicate message id is in process" (err_code 10158) a clustered stream answers
to a second publish of an id whose first copy is still being replicated is provoked for
real below and must be classified as a retry, never as a rejection (dead letter).
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import StorageType, StreamConfig

from bench.faults.harness import Workspace
from bench.faults.helpers import count_lines, stream_info, stream_messages
from bench.faults.results import ScenarioResult, timed
from outbox.contract import build_usage_event
from outbox.stream_spec import DEFAULT_STREAM
from shipper.publisher import Message, Outcome, Publisher, classify
from tests.consul_stub import ConsulStub
from usage_demo.natscluster import NatsCluster
from usage_demo.waiting import wait_until_sync

pytestmark = pytest.mark.faults

EVENTS_PER_WRITER = 2500
WRITERS = 2
RATE = 300.0  # events/s per writer: about 8 s of writing, across the kill and election


def test_stream_leader_killed_mid_run_then_restarted(
    workspace: Workspace,
    nats_cluster: NatsCluster,
    consul_stub: ConsulStub,
    unused_tcp_port: int,
) -> None:
    ws, cluster = workspace, nats_cluster
    urls = cluster.urls
    with timed() as elapsed:
        ws.set_prices()
        consul_stub.set_service("nats", [(node.host, node.port) for node in cluster.nodes])
        billing = ws.billing(",".join(urls))
        shipper = ws.shipper(
            f"nats://127.0.0.1:{unused_tcp_port}",  # nothing listens: only Consul's answer works
            flags=[
                "--replicas",
                "3",
                "--consul-host",
                consul_stub.host,
                "--consul-port",
                str(consul_stub.port),
            ],
        )
        writers = ws.writers(WRITERS, events=EVENTS_PER_WRITER, rate=RATE, concurrency=4)

        wait_until_sync(
            lambda: stream_messages(urls) >= 1000,
            30,
            message="the shipper ships through the cluster",
            explain=lambda: shipper.log_since_start()[-2000:],
            interval=0.05,
        )
        info = stream_info(urls)
        assert info is not None and info.cluster is not None and info.cluster.leader
        assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2
        assert consul_stub.requests_for("nats"), "the shipper never asked Consul"
        leader = cluster.index_of(info.cluster.leader)
        at_kill = int(info.state.messages)
        cluster.kill(leader)
        killed_at = time.monotonic()
        survivors = [url for i, url in enumerate(urls) if i != leader]

        def new_leader() -> str | None:
            current = stream_info(survivors)
            return None if current is None or current.cluster is None else current.cluster.leader

        wait_until_sync(
            lambda: new_leader() not in (None, cluster.names[leader]),
            30,
            message="a new stream leader among the survivors",
            interval=0.05,
        )
        election = time.monotonic() - killed_at
        wait_until_sync(
            lambda: stream_messages(survivors) >= at_kill + 500,
            30,
            message="shipping goes on through the new leader",
            explain=lambda: shipper.log_since_start()[-2000:],
            interval=0.05,
        )
        resumed = stream_messages(survivors)
        cluster.restart(leader)

        results = writers.wait(60)
        assert sum(r.errors for r in results) == 0, [r.first_errors for r in results]
        written = sum(r.written for r in results)
        assert written == WRITERS * EVENTS_PER_WRITER
        ws.wait_settled(written, 60)
        # The restarted node is a full replica again: it caught up with the stream.
        wait_until_sync(
            lambda: _replicas_current(urls, 3),
            30,
            message="the restarted node caught up",
            interval=0.05,
        )
        assert shipper.stop() == 0, shipper.log_text()[-3000:]
        assert billing.stop() == 0, billing.log_text()[-3000:]
        report = ws.audit(urls)

    log = shipper.log_text()
    in_process = count_lines(log, r"10158")
    result = ScenarioResult(
        "4. cluster failover (stream leader killed, restarted)",
        report,
        faults=1,
        seconds=elapsed(),
        notes=[
            f"leader {cluster.names[leader]} SIGKILLed at {at_kill} messages in the stream; "
            f"new leader after {election:.1f} s; {resumed} messages when it was restarted",
            f"shipper log: {in_process} lines mention 409/10158, "
            f"{count_lines(log, r'nats reconnected')} reconnects, "
            f"{count_lines(log, r'rows will be retried later')} retry settlements",
        ],
    )
    print(result.summary())
    assert report.ok, result.summary()
    assert report.stream_messages == written  # no duplicates through the failover
    assert "dead_lettered" not in log and not re.search(r"row \d+ dead", log)


def _replicas_current(urls: list[str], size: int) -> bool:
    info = stream_info(urls)
    if info is None or info.cluster is None or info.cluster.leader is None:
        return False
    replicas = info.cluster.replicas or []
    return len(replicas) == size - 1 and all(r.current and not r.offline for r in replicas)


# -- the 409 "duplicate message id is in process" ------------------------------------------


async def _r3_stream(urls: list[str]) -> NatsClient:
    nc = await nats.connect(servers=urls, connect_timeout=2)
    await nc.jetstream(timeout=10).add_stream(
        StreamConfig(
            name=DEFAULT_STREAM,
            subjects=["billing.usage.recorded.*"],
            storage=StorageType.FILE,
            num_replicas=3,
        )
    )
    return nc


async def _raw_replies(nc: NatsClient, message: Message, copies: int) -> list[Msg]:
    """Publish ``copies`` of one message back to back, as a pipelined retry would, and
    collect the raw PubAcks in publish order."""
    inbox = nc.new_inbox()
    replies: dict[int, Msg] = {}
    done = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        replies[int(msg.subject.rsplit(".", 1)[1])] = msg
        if len(replies) == copies:
            done.set()

    sub = await nc.subscribe(f"{inbox}.*", cb=on_reply)
    for i in range(copies):
        await nc.publish(
            message.subject, message.payload, reply=f"{inbox}.{i}", headers=message.headers
        )
    await asyncio.wait_for(done.wait(), 10)
    await sub.unsubscribe()
    return [replies[i] for i in range(copies)]


def _message() -> Message:
    event = build_usage_event(
        user_id="user-1",
        product_id="gpt-4",
        provider="openai",
        operation="chat",
        service_type="text",
        input_tokens=10,
    )
    return Message(event.subject, event.payload, event.headers)


async def test_in_process_409_from_a_clustered_stream_is_retried_not_dead_lettered(
    nats_cluster: NatsCluster,
) -> None:
    nc = await _r3_stream(nats_cluster.urls)
    events = 0
    try:
        # The server's own answer: a second copy sent while the first is still being
        # replicated gets 409 / 10158 (measured: 50 times in 50 on loopback; a few tries
        # in case a loaded machine lets the first copy be stored in between).
        in_process = None
        for _ in range(5):
            events += 1
            first, second = await _raw_replies(nc, _message(), 2)
            assert classify(first).outcome is Outcome.STORED
            if b'"err_code":10158' in second.data:
                in_process = second
                break
            assert classify(second).outcome is Outcome.DUPLICATE, second.data
        assert in_process is not None, "no 409 in five tries"
        verdict = classify(in_process)
        assert verdict.outcome is Outcome.RETRY, verdict
        assert "409/10158" in verdict.detail

        # Through the shipper's publisher: the same pair in one pipelined window.
        publisher = Publisher(nc, timeout=5.0, max_in_flight=100)
        await publisher.start()
        try:
            outcomes: list[list[Outcome]] = []
            for _ in range(5):
                events += 1
                message = _message()
                results = await publisher.publish([message, message])
                outcomes.append([r.outcome for r in results])
                assert outcomes[-1] in (
                    [Outcome.STORED, Outcome.RETRY],
                    [Outcome.STORED, Outcome.DUPLICATE],
                ), results
                if outcomes[-1][1] is Outcome.RETRY:
                    break
            assert outcomes[-1] == [Outcome.STORED, Outcome.RETRY], outcomes
            # The retry (after its backoff, once the first copy is stored) is a duplicate:
            # the row is settled as delivered, never stored twice, never dead.
            (again,) = await publisher.publish([message])
            assert again.outcome is Outcome.DUPLICATE, again
        finally:
            await publisher.close()
        info = await nc.jetstream().stream_info(DEFAULT_STREAM)
        assert info.state.messages == events  # one copy of each event
    finally:
        await nc.close()


def test_classify_409_in_process_shape_is_a_retry(tmp_path: Path) -> None:
    """The exact bytes nats-server 2.15 sends (captured above), without a server: a 409 is
    never a rejection, whatever its err_code, and neither is 10158 under a 400."""

    class Reply:
        headers: dict[str, str] | None = None

        def __init__(self, data: bytes) -> None:
            self.data = data

    in_process = (
        b'{"error":{"code":409,"err_code":10158,"description":"duplicate message id is in '
        b'process"},"stream":DEFAULT_STREAM,"seq":0}'
    )
    for data in (in_process, in_process.replace(b'"code":409', b'"code":400')):
        verdict = classify(Reply(data))  # type: ignore[arg-type]
        assert verdict.outcome is Outcome.RETRY, (data, verdict)
