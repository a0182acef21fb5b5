"""The least NATS permissions each component needs, proved against a real nats-server.

The permission sets below are the ones ``docs/permissions.md`` documents. They were found
by running each component under a server with ``-V`` (protocol trace) and reading every
``PUB``/``SUB`` it sent; the tests pin them down both ways:

* under exactly these permissions the shipper ships and billing bills, and the server
  logs no permission violation at all;
* without one of them the server logs a violation naming exactly the subject that was
  missing, and nothing is lost: the rows stay in the outbox.

They also show that a shipper that may create the stream needs more than one that may
not (``--create-stream false``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from billing.config import BillingConfig
from billing.consumer import BillingConsumer
from outbox.stream_spec import DEFAULT_STREAM
from tests.certs import nats_conf, permissions
from tests.fixtures.shipper import ShipperRunner, outbox_counts, shipper_config, write_events
from usage_demo.natsserver import NatsServer
from usage_demo.waiting import wait_until

EVENTS = 30
STREAM = DEFAULT_STREAM
DURABLE = "billing"
INBOX = "_INBOX.>"  # replies: PubAcks and JetStream API answers
PUBLISH = "billing.usage.recorded.*"

#: The shipper when the stream exists (``--create-stream false``).
SHIPPER = permissions([PUBLISH, f"$JS.API.STREAM.INFO.{STREAM}"], [INBOX])
#: The shipper that may create the stream: it first looks for another stream capturing
#: the subjects (an operator's naming) before creating its own.
SHIPPER_CREATING = permissions(
    [
        PUBLISH,
        f"$JS.API.STREAM.INFO.{STREAM}",
        "$JS.API.STREAM.NAMES",
        f"$JS.API.STREAM.CREATE.{STREAM}",
    ],
    [INBOX],
)
#: The billing consumer reading an existing stream with its durable consumer.
BILLING = permissions(
    [
        f"$JS.API.STREAM.INFO.{STREAM}",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.{DURABLE}",
        f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{DURABLE}",
        f"$JS.ACK.{STREAM}.{DURABLE}.>",
    ],
    [INBOX],
)
ADMIN_PASSWORD = "admin-pw"
_VIOLATION = re.compile(r"(Publish|Subscription) Violation - .*Subject \"([^\"]+)\"")


def _server_config(users: dict[str, dict[str, Any]]) -> str:
    entries: list[dict[str, Any]] = [{"user": "admin", "password": ADMIN_PASSWORD}]
    for name, allowed in users.items():
        entries.append({"user": name, "password": f"{name}-pw", "permissions": allowed})
    return nats_conf(authorization={"users": entries})


def violations(server: NatsServer) -> list[tuple[str, str]]:
    """(kind, subject) of every permission violation the server logged."""
    return [(m[1], m[2]) for m in _VIOLATION.finditer(server.log_text())]


def _as(name: str) -> dict[str, str]:
    return {"nats_user": name, "nats_password": f"{name}-pw"}


@pytest.fixture
def restricted(
    tmp_path: Path, nats_server_binary: str
) -> Iterator[Callable[[dict[str, dict[str, Any]]], NatsServer]]:
    started: list[NatsServer] = []

    def start(users: dict[str, dict[str, Any]]) -> NatsServer:
        server = NatsServer(
            tmp_path / "nats", config_text=_server_config(users), binary=nats_server_binary
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


async def _create_stream(server: NatsServer) -> None:
    nc = await nats.connect(server.url, user="admin", password=ADMIN_PASSWORD)
    try:
        await nc.jetstream().add_stream(
            StreamConfig(name=STREAM, subjects=[PUBLISH], storage=StorageType.FILE)
        )
    finally:
        await nc.close()


async def _bill(tmp_path: Path, server: NatsServer, user: str) -> BillingConsumer:
    consumer = BillingConsumer(
        BillingConfig(
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'billing.db'}",
            nats_url=server.url,
            create_stream=False,
            fetch_timeout=0.5,
            ack_wait=5.0,
            **_as(user),
        )
    )
    async with consumer:
        await consumer.drain(0.5)
    return consumer


async def test_a_stream_creating_shipper_and_billing_work_with_the_documented_permissions(
    tmp_path: Path,
    restricted: Callable[[dict[str, dict[str, Any]]], NatsServer],
    run_shipper: ShipperRunner,
) -> None:
    server = restricted({"shipper": SHIPPER_CREATING, "billing": BILLING})
    outbox = tmp_path / "outbox.db"
    await write_events(outbox, EVENTS)

    stats = await run_shipper.run(
        shipper_config(outbox, server.url, create_stream=True, **_as("shipper"))
    )
    assert stats.published == EVENTS
    consumer = await _bill(tmp_path, server, "billing")
    assert consumer.stats.received == EVENTS
    assert violations(server) == []


async def test_a_shipper_that_does_not_create_the_stream_needs_only_stream_info(
    tmp_path: Path,
    restricted: Callable[[dict[str, dict[str, Any]]], NatsServer],
    run_shipper: ShipperRunner,
) -> None:
    server = restricted({"shipper": SHIPPER})
    await _create_stream(server)
    outbox = tmp_path / "outbox.db"
    await write_events(outbox, EVENTS)

    stats = await run_shipper.run(
        shipper_config(outbox, server.url, create_stream=False, **_as("shipper"))
    )
    assert stats.published == EVENTS
    assert outbox_counts(outbox) == {"pending": 0, "dead": 0}
    assert violations(server) == []


MISSING = {
    # The no-create permissions are not enough for a shipper allowed to create.
    "create_without_names_and_create": (
        SHIPPER,
        True,
        False,
        ("Publish", "$JS.API.STREAM.NAMES"),
    ),
    "no_jetstream_api": (
        permissions([PUBLISH], [INBOX]),
        False,
        True,
        ("Publish", f"$JS.API.STREAM.INFO.{STREAM}"),
    ),
    "no_reply_inbox": (
        # (an empty allow list would allow everything)
        permissions([PUBLISH, f"$JS.API.STREAM.INFO.{STREAM}"], ["nothing.else"]),
        False,
        True,
        ("Subscription", "_INBOX."),
    ),
    "no_usage_subjects": (
        permissions([f"$JS.API.STREAM.INFO.{STREAM}"], [INBOX]),
        False,
        True,
        ("Publish", "billing.usage.recorded.gpt-4"),
    ),
}


@pytest.mark.parametrize("case", list(MISSING))
async def test_each_missing_permission_is_named_by_the_server_and_no_row_is_lost(
    case: str,
    tmp_path: Path,
    restricted: Callable[[dict[str, dict[str, Any]]], NatsServer],
    run_shipper: ShipperRunner,
) -> None:
    allowed, create_stream, stream_exists, (kind, subject) = MISSING[case]
    server = restricted({"shipper": allowed})
    if stream_exists:
        await _create_stream(server)
    outbox = tmp_path / "outbox.db"
    await write_events(outbox, EVENTS)

    shipper, task = run_shipper.start(
        shipper_config(
            outbox,
            server.url,
            create_stream=create_stream,
            exit_when_idle=False,
            publish_timeout=1.0,
            **_as("shipper"),
        )
    )
    await wait_until(lambda: violations(server), 15, message="a permission violation")
    found = violations(server)
    assert all(k == kind and s.startswith(subject) for k, s in found), found
    assert not task.done()
    shipper.stop()
    await task
    assert shipper.stats.published == 0
    assert outbox_counts(outbox) == {"pending": EVENTS, "dead": 0}
