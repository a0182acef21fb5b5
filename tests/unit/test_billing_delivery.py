"""billing.items reads where a message came from out of its reply subject itself (the
common form) and through nats-py's ``Msg.metadata`` otherwise: both must agree, and the
SQLite batch transaction that runs whole in a thread must commit or roll back whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from nats.aio.client import Client
from nats.aio.msg import Msg

from billing import migrate
from billing.engines import create_billing_sync_engine
from billing.items import Usage, item_from_message
from billing.schema import wallets
from billing.sqlite_thread import ThreadedTransactions
from outbox import build_usage_event

_NS = 1_764_604_807_445_839_123
#: The form nats-server sends without a JetStream domain, and the longer form with one.
REPLIES = {
    "v1": f"$JS.ACK.billing-stream.billing.3.48213.48001.{_NS}.17",
    "v2": f"$JS.ACK.hub.ACCHASH.billing-stream.billing.3.48213.48001.{_NS}.17.rand0m",
}


def _message(reply: str) -> Msg:
    event = build_usage_event(
        user_id="u-1",
        product_id="gpt-4",
        provider="openai",
        operation="chat",
        service_type="text",
        input_tokens=5,
    )
    return Msg(cast(Client, None), subject=event.subject, reply=reply, data=event.payload)


@pytest.mark.parametrize("form", sorted(REPLIES))
def test_the_delivery_read_from_the_reply_is_what_nats_py_reads(form: str) -> None:
    message = _message(REPLIES[form])
    item = item_from_message(message, stream_created=1234)
    assert isinstance(item, Usage)
    metadata = _message(REPLIES[form]).metadata
    delivery = item.delivery
    assert (
        (delivery.stream, delivery.stream_seq, delivery.deliveries)
        == (
            metadata.stream,
            metadata.sequence.stream,
            metadata.num_delivered,
        )
        == ("billing-stream", 48213, 3)
    )
    assert delivery.stream_created == 1234
    assert delivery.subject == message.subject


@pytest.mark.parametrize("form", sorted(REPLIES))
def test_a_platform_event_with_no_time_takes_the_time_its_stream_stored_it(form: str) -> None:
    payload = (
        b'{"schema_version":"1.0","user_id":"u-1","product_id":"flux-pro",'
        b'"usage_amount":2,"unit_type":"image"}'
    )
    message = Msg(cast(Client, None), subject="billing.usage.recorded.x", reply=REPLIES[form])
    message.data = payload
    item = item_from_message(message, stream_created=0)
    assert isinstance(item, Usage)
    stored = Msg(cast(Client, None), reply=REPLIES[form]).metadata.timestamp
    assert item.record.timestamp == stored
    assert abs(item.record.timestamp.timestamp() - _NS / 1e9) < 1e-5


def _balance(url: str, user: str) -> Any:
    engine = create_billing_sync_engine(url)
    try:
        with engine.connect() as conn:
            return conn.scalar(sa.select(wallets.c.balance).where(wallets.c.user_id == user))
    finally:
        engine.dispose()


def _insert_wallet(conn: sa.Connection, user: str, then_fail: bool = False) -> str:
    conn.execute(wallets.insert().values(user_id=user, balance=0, updated_at=sa.func.now()))
    if then_fail:
        raise RuntimeError("the batch failed after its first statement")
    return user


async def test_a_threaded_transaction_commits_whole_or_not_at_all(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'billing.db'}"
    engine = create_billing_sync_engine(url)
    with engine.begin() as conn:
        migrate.upgrade(conn)
    engine.dispose()
    transactions = ThreadedTransactions(url)
    try:
        assert await transactions.run(_insert_wallet, "kept") == "kept"
        with pytest.raises(RuntimeError, match="after its first statement"):
            await transactions.run(_insert_wallet, "rolled-back", True)
    finally:
        await transactions.close()
    assert _balance(url, "kept") == 0
    assert _balance(url, "rolled-back") is None, "nothing of a failed batch stays"
