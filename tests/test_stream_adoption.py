"""The shipper and billing choose their stream by one rule (``usage_runtime.streams``):
for each arrangement of streams an operator may have made, both pick the same stream, or
both refuse with the reason. They used to disagree: billing read a stream of the
configured name whatever its subjects, where the shipper refused it."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from billing import jetstream as billing_js
from billing.errors import BillingConfigError
from outbox.stream_spec import DEFAULT_STREAM
from shipper import stream as shipper_stream
from shipper.errors import StreamMismatch
from tests.fixtures.billing import ConfigFactory, ConsumerFactory
from tests.fixtures.shipper import shipper_config

REFUSED = "refused"

#: (streams an operator made beforehand, what both processes must end up with).
ARRANGEMENTS = {
    "none: created by the first, adopted by the second": ([], DEFAULT_STREAM),
    "the named stream on the usage subjects": (
        [(DEFAULT_STREAM, ["billing.usage.>"])],
        DEFAULT_STREAM,
    ),
    "the named stream without the usage subjects": (
        [(DEFAULT_STREAM, ["usage.other.>"])],
        REFUSED,
    ),
    "another stream capturing the usage subjects": (
        [("OPS", ["billing.usage.recorded.>"])],
        "OPS",
    ),
    "another stream holding one product's subject only": (
        [("GPT4_ONLY", ["billing.usage.recorded.gpt-4"])],
        REFUSED,
    ),
}


async def _shipper_choice(js: JetStreamContext, tmp_path: Path, url: str) -> str:
    try:
        choice = await shipper_stream.ensure_stream(js, shipper_config(tmp_path / "o.db", url))
    except StreamMismatch:
        return REFUSED
    return choice.name


async def _billing_choice(js: JetStreamContext, config: ConfigFactory) -> str:
    try:
        return await billing_js.ensure_stream(js, config())
    except BillingConfigError:
        return REFUSED


@pytest.mark.parametrize("first", ["shipper", "billing"])
@pytest.mark.parametrize("arrangement", list(ARRANGEMENTS))
async def test_shipper_and_billing_choose_the_same_stream_or_both_refuse(
    jetstream: JetStreamContext,
    nats_url: str,
    tmp_path: Path,
    billing_config: ConfigFactory,
    arrangement: str,
    first: str,
) -> None:
    streams, expected = ARRANGEMENTS[arrangement]
    for name, subjects in streams:
        await jetstream.add_stream(StreamConfig(name=name, subjects=subjects))
    if first == "shipper":
        shipper = await _shipper_choice(jetstream, tmp_path, nats_url)
        billing = await _billing_choice(jetstream, billing_config)
    else:
        billing = await _billing_choice(jetstream, billing_config)
        shipper = await _shipper_choice(jetstream, tmp_path, nats_url)
    assert (shipper, billing) == (expected, expected)
    # A refusal changed nothing an operator made.
    for name, subjects in streams:
        assert (await jetstream.stream_info(name)).config.subjects == subjects


async def test_billing_refuses_to_start_on_a_named_stream_without_the_usage_subjects(
    jetstream: JetStreamContext, billing_config: ConfigFactory, make_consumer: ConsumerFactory
) -> None:
    await jetstream.add_stream(StreamConfig(name=DEFAULT_STREAM, subjects=["usage.other.>"]))
    consumer = make_consumer(billing_config())
    with pytest.raises(BillingConfigError) as raised:
        await consumer.start()
    message = str(raised.value)
    assert DEFAULT_STREAM in message and "usage.other.>" in message
    assert "billing.usage.recorded.>" in message
    assert not consumer.started
