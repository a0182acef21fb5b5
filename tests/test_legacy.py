"""The legacy ``_publish_usage_event`` drop-in (``UsageEventPublisherMixin``).

It must accept exactly what existing callers pass, return True only once the row is
committed, and never raise into the request path: a refused or unwritable event returns
False and is logged at ERROR with the field and the whole event, so nothing is silently
lost. Real SQLite files throughout.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

import pytest

import outbox.legacy
from outbox import Outbox, OutboxStoreError, UsageEventPublisherMixin
from tests.fixtures.databases import count_outbox_rows
from tests.test_contract import VECTORS, assert_same_json, assert_uuid7

LOGGER = "outbox.legacy"


class ModelService(UsageEventPublisherMixin):
    """A model service as existing code has it: provider_name and model_name."""

    def __init__(self, provider_name: str, model_name: str, outbox: Outbox | None) -> None:
        self.provider_name = provider_name
        self.model_name = model_name
        self.usage_outbox = outbox  # type: ignore[misc]


ServiceFactory = Callable[..., ModelService]


@pytest.fixture
async def make_service(outbox_path: Path) -> AsyncIterator[ServiceFactory]:
    outbox = Outbox(outbox_path)

    def make(provider_name: str = "openai", model_name: str = "gpt-4") -> ModelService:
        return ModelService(provider_name, model_name, outbox)

    yield make
    await outbox.close()


def payloads(path: Path) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(path)) as conn:
        return [json.loads(r[0]) for r in conn.execute("SELECT payload FROM usage_outbox")]


def error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]


@pytest.mark.parametrize("case", VECTORS["valid"], ids=lambda c: c["name"])
async def test_valid_vector_returns_true_and_the_row_is_there(
    case: dict[str, Any],
    make_service: ServiceFactory,
    outbox_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = make_service(**case["service"])
    assert await service._publish_usage_event(**case["call"]) is True
    # True means committed: an independent connection already sees the row.
    (payload,) = payloads(outbox_path)
    for field, value in case["expect"]["payload"].items():
        assert_same_json(payload[field], value, field)
    assert_uuid7(payload["event_id"])
    assert error_records(caplog) == []


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["name"])
async def test_invalid_vector_returns_false_and_logs_the_whole_event(
    case: dict[str, Any],
    make_service: ServiceFactory,
    outbox_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = make_service(**case["service"])
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert await service._publish_usage_event(**case["call"]) is False
    (record,) = error_records(caplog)
    field = case["error"]
    assert record.field == field  # type: ignore[attr-defined]
    assert field in record.getMessage()
    event = record.event  # type: ignore[attr-defined]
    # The whole event, as given: an operator can replay it from the log.
    assert event["product_id"] == case["service"]["model_name"]
    assert event["provider"] == case["service"]["provider_name"]
    for key, value in case["call"].items():
        assert event[key] == value
    for key in ("user_id", "operation", "service_type", "metadata"):
        assert repr(event[key]) in record.getMessage()
    assert count_outbox_rows(outbox_path) == 0


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ({"input_units": math.nan}, "input_units"),
        ({"input_units": math.inf}, "input_units"),
        ({"input_tokens": 1, "metadata": {"tags": {"a"}}}, "metadata"),
        ({"input_tokens": 1, "metadata": {"obj": object()}}, "metadata"),
        ({"input_tokens": 1, "metadata": "not a dict"}, "metadata"),
        ({"input_tokens": "12"}, "input_tokens"),
        ({"input_tokens": 1, "user_id": None}, "user_id"),
    ],
    ids=["nan", "inf", "set", "object", "str-metadata", "str-tokens", "none-user"],
)
async def test_refusals_in_code_never_raise(
    call: dict[str, Any],
    field: str,
    make_service: ServiceFactory,
    outbox_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    args = {"user_id": "u-1", "service_type": "text", "operation": "chat", **call}
    assert await make_service()._publish_usage_event(**args) is False
    (record,) = error_records(caplog)
    assert record.field == field  # type: ignore[attr-defined]
    assert record.event["metadata"] is args.get("metadata")  # type: ignore[attr-defined]
    assert count_outbox_rows(outbox_path) == 0


async def test_service_without_model_name_is_refused_not_raised(
    outbox_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Bare(UsageEventPublisherMixin):
        pass

    bare = Bare()
    bare.usage_outbox = Outbox(outbox_path)  # type: ignore[misc]
    try:
        assert await bare._publish_usage_event("u", "text", "chat", input_tokens=1) is False
    finally:
        await bare.usage_outbox.close()  # type: ignore[union-attr]
    assert error_records(caplog)[0].field == "product_id"  # type: ignore[attr-defined]


class ServiceType(Enum):
    TEXT = "text"
    EMBEDDING = "embedding"


class ServiceStr(StrEnum):
    VISION = "vision"


async def test_service_type_str_and_enum(make_service: ServiceFactory, outbox_path: Path) -> None:
    service = make_service()
    for service_type in ("text", ServiceType.EMBEDDING, ServiceStr.VISION):
        assert await service._publish_usage_event("u", service_type, "chat", input_tokens=5)
    assert [p["usage_details"]["service_type"] for p in payloads(outbox_path)] == [
        "text",
        "embedding",
        "vision",
    ]


async def test_positional_legacy_call(make_service: ServiceFactory, outbox_path: Path) -> None:
    # The legacy signature, all positional, as old call sites have it.
    ok = await make_service()._publish_usage_event(
        "u-9", "text", "chat", 10, 20, None, None, {"request_id": "r-1"}
    )
    assert ok is True
    (payload,) = payloads(outbox_path)
    assert payload["usage_amount"] == 30
    assert payload["usage_details"]["request_id"] == "r-1"


async def test_unwritable_outbox_returns_false_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = ModelService("openai", "gpt-4", Outbox(tmp_path / "no-such-dir" / "outbox.db"))
    event = {"user_id": "u-1", "service_type": "text", "operation": "chat", "input_tokens": 3}
    assert await missing._publish_usage_event(**event) is False

    path = tmp_path / "outbox.db"
    async with Outbox(path) as writable:
        await writable.record(product_id="gpt-4", provider="openai", **event)
    read_only = Outbox(f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true", run_migrations=False)
    service = ModelService("openai", "gpt-4", read_only)
    try:
        assert await service._publish_usage_event(**event) is False
    finally:
        await read_only.close()

    records = error_records(caplog)
    assert len(records) == 2
    for record in records:
        assert record.action == "usage_event_not_recorded"  # type: ignore[attr-defined]
        assert record.event["user_id"] == "u-1"  # type: ignore[attr-defined]
        assert record.event["input_tokens"] == 3  # type: ignore[attr-defined]
        # One line per failed call, the event in it: no traceback per call.
        line = logging.Formatter("%(levelname)s %(name)s: %(message)s").format(record)
        assert record.exc_info is None and "\n" not in line, line
        assert "'user_id': 'u-1'" in line and "usage event not recorded:" in line
    assert count_outbox_rows(path) == 1


async def test_the_start_up_check_names_the_outbox_or_says_why_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    unopenable = tmp_path / "no-such-dir" / "outbox.db"
    monkeypatch.setattr(ModelService, "usage_outbox", Outbox(unopenable))
    with pytest.raises(OutboxStoreError) as raised:
        await ModelService.check_usage_outbox()
    assert str(raised.value) == (
        f"usage outbox {unopenable} cannot be used: unable to open database file"
    )

    # No outbox configured anywhere: the default file in the working directory, said loudly.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("USAGE_OUTBOX_URL", raising=False)
    monkeypatch.setattr(ModelService, "usage_outbox", None)
    monkeypatch.setattr(outbox.legacy, "_default_outbox", None)
    try:
        where = await ModelService.check_usage_outbox()
    finally:
        await outbox.legacy.default_outbox().close()
    assert where == str(tmp_path / "usage-outbox.db")
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage() == (
        f"USAGE_OUTBOX_URL is not set: usage events go to {where}, in the working directory"
    )


async def test_default_outbox_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "from-env.db"
    monkeypatch.setenv("USAGE_OUTBOX_URL", str(path))
    monkeypatch.setattr(outbox.legacy, "_default_outbox", None)
    service = ModelService("openai", "gpt-4", None)
    try:
        assert await service._publish_usage_event("u", "text", "chat", input_tokens=1)
        assert outbox.legacy.default_outbox() is outbox.legacy.default_outbox()
    finally:
        await outbox.legacy.default_outbox().close()
    assert count_outbox_rows(path) == 1
