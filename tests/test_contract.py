"""The usage event wire contract, case by case, written through the real write API.

Every case of ``tests/contract_vectors.json`` (the project's copy of the shared vectors)
runs here: valid ones are written with ``record_usage_sync`` into a real SQLite outbox and
read back from the table; invalid ones must raise :class:`InvalidUsageEvent` naming the
field, with nothing written even though the transaction commits.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import sqlite3
import time
import uuid
from collections.abc import Mapping
from contextlib import closing
from datetime import UTC, datetime, timedelta
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outbox import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    InvalidUsageEvent,
    build_usage_event,
    outbox_table,
    product_token,
    record_usage_sync,
    usage_subject,
)
from outbox.contract import EVENT_TYPE, ID_FIELDS, RESERVED_DETAIL_KEYS
from outbox.subject import MAX_TOKEN_LENGTH, SUBJECT_PREFIX
from tests.fixtures.databases import count_outbox_rows

VECTORS_PATH = Path(__file__).parent / "contract_vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
PAYLOAD_FIELDS = (
    "event_id",
    "idempotency_key",
    "user_id",
    "product_id",
    "usage_amount",
    "unit_type",
    "usage_details",
    "timestamp",
)
#: What a NATS subject token may hold (no space, tab, '.', '*', '>', NUL), restricted
#: further to printable ASCII, which is all the encoding ever produces.
TOKEN = re.compile(r"[A-Za-z0-9_%-]+")
NATS_FORBIDDEN = set(" \t\r\n.*>\x00")
#: The platform producer library's ``<producer>:<key>`` pattern (contract 1.1).
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}:[A-Za-z0-9][A-Za-z0-9._:-]{0,252}")


# -- helpers ------------------------------------------------------------------------------


def legacy_to_kwargs(case: Mapping[str, Any]) -> dict[str, Any]:
    """A vector's legacy call on a service, as the keywords of the write API."""
    return {
        "product_id": case["service"]["model_name"],
        "provider": case["service"]["provider_name"],
        **case["call"],
    }


def stored_rows(path: Path) -> list[sqlite3.Row]:
    with closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM usage_outbox ORDER BY id").fetchall()


def write_one(engine: sa.Engine, **kwargs: Any) -> str:
    with engine.begin() as conn:
        return record_usage_sync(conn, **kwargs)


def assert_same_json(actual: Any, expected: Any, where: str = "payload") -> None:
    """Equal as JSON values, with the number kinds billing cares about: an integer in the
    vector must be an integer in the payload unless the payload holds the same float
    (unit counts are numbers; token counts and token amounts must stay integers)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        assert list(actual) == list(expected), f"{where}: keys (in order)"
        for key, value in expected.items():
            assert_same_json(actual[key], value, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_json(a, e, f"{where}[{index}]")
    elif isinstance(expected, bool) or expected is None or isinstance(expected, str):
        assert actual == expected and type(actual) is type(expected), where
    else:  # a number
        assert isinstance(actual, int | float) and not isinstance(actual, bool), where
        assert actual == expected, where


def canonical_json(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def assert_uuid7(text: str) -> None:
    parsed = uuid.UUID(text)
    assert str(parsed) == text, "canonical lower-case form"
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def assert_idempotency_key(payload: Mapping[str, Any]) -> None:
    assert payload["idempotency_key"] == "usage-outbox:" + payload["event_id"]
    assert IDEMPOTENCY_KEY.fullmatch(payload["idempotency_key"])


def assert_utc_timestamp(text: str, *, near: float, within: float = 60.0) -> datetime:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", text), text
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() == timedelta(0)
    assert abs(parsed.timestamp() - near) < within
    return parsed


def assert_one_token_subject(subject: str, product_id: str) -> None:
    prefix = SUBJECT_PREFIX + "."
    assert subject.startswith(prefix)
    token = subject[len(prefix) :]
    assert token, "an empty token makes the server drop the message"
    assert not NATS_FORBIDDEN & set(token)
    assert TOKEN.fullmatch(token), token
    assert len(subject) < 256
    assert unquote(token, errors="strict") == product_id, "the documented decoding"


# -- the vectors --------------------------------------------------------------------------


def test_the_vectors_are_the_projects_own_full_copy() -> None:
    assert VECTORS_PATH.parent == Path(__file__).parent
    assert len(VECTORS["valid"]) >= 8
    assert len(VECTORS["invalid"]) >= 10
    names = [c["name"] for c in VECTORS["valid"] + VECTORS["invalid"]]
    assert len(names) == len(set(names)), "case names are unique (they are test ids)"


SHARED_VECTORS = Path(__file__).resolve().parents[2] / "shared" / "contract" / "vectors.json"


@pytest.mark.skipif(not SHARED_VECTORS.exists(), reason="a clone without shared/ beside it")
def test_the_vectors_are_in_step_with_the_shared_contract() -> None:
    # Users clone without shared/; CI has it beside the clone, and catches a stale copy.
    assert json.loads(SHARED_VECTORS.read_text(encoding="utf-8")) == VECTORS


@pytest.mark.parametrize("case", VECTORS["valid"], ids=lambda c: c["name"])
def test_valid_vector(case: dict[str, Any], sync_engine: sa.Engine, outbox_path: Path) -> None:
    before = time.time()
    event_id = write_one(sync_engine, **legacy_to_kwargs(case))

    (row,) = stored_rows(outbox_path)
    expect = case["expect"]
    if "subject" in expect:
        assert row["subject"] == expect["subject"]
    else:
        assert expect["subject_single_token_under"] == SUBJECT_PREFIX
        assert_one_token_subject(row["subject"], case["service"]["model_name"])

    payload = json.loads(row["payload"].decode("utf-8"))
    assert canonical_json(payload) == row["payload"]
    # Exactly the expected fields plus the three the vectors cannot fix in advance.
    assert set(payload) == set(expect["payload"]) | {"event_id", "timestamp", "idempotency_key"}
    assert_idempotency_key(payload)
    for field, value in expect["payload"].items():
        assert_same_json(payload[field], value, field)
    if payload["unit_type"] == "token":
        assert type(payload["usage_amount"]) is int

    assert payload["event_id"] == event_id == row["event_id"]
    assert_uuid7(event_id)
    stamp = assert_utc_timestamp(payload["timestamp"], near=before)
    assert before - 1e-3 <= row["created_at"] <= time.time() + 1e-3
    assert abs(stamp.timestamp() - row["created_at"]) < 2e-6, "one instant, two spellings"
    assert json.loads(row["headers"]) == {"event_type": EVENT_TYPE, "Nats-Msg-Id": event_id}
    assert row["state"] == "pending" and row["attempts"] == 0


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["name"])
def test_invalid_vector(case: dict[str, Any], sync_engine: sa.Engine, outbox_path: Path) -> None:
    # The transaction commits: still nothing is written.
    with sync_engine.begin() as conn, pytest.raises(InvalidUsageEvent) as refused:
        record_usage_sync(conn, **legacy_to_kwargs(case))
    assert refused.value.field == case["error"]
    assert case["error"] in str(refused.value)
    assert refused.value.reason and refused.value.reason in str(refused.value)
    assert count_outbox_rows(outbox_path) == 0


# -- refusals that JSON vectors cannot carry -----------------------------------------------

BASE: dict[str, Any] = {
    "user_id": "u-1",
    "product_id": "gpt-4",
    "provider": "openai",
    "operation": "chat",
    "service_type": "text",
    "input_tokens": 10,
}


class Colour(Enum):
    RED = 1


IN_CODE: list[tuple[str, dict[str, Any], str]] = [
    ("nan input_units", {"input_tokens": None, "input_units": math.nan}, "input_units"),
    ("inf input_units", {"input_tokens": None, "input_units": math.inf}, "input_units"),
    ("-inf input_units", {"input_tokens": None, "input_units": -math.inf}, "input_units"),
    ("nan output_units", {"output_units": math.nan}, "output_units"),
    ("inf output_units", {"output_units": math.inf}, "output_units"),
    ("huge int input_units", {"input_tokens": None, "input_units": 10**400}, "input_units"),
    ("bool input_units", {"input_tokens": None, "input_units": True}, "input_units"),
    ("str input_units", {"input_tokens": None, "input_units": "3"}, "input_units"),
    ("metadata set", {"metadata": {"tags": {"a", "b"}}}, "metadata"),
    ("metadata object", {"metadata": {"thing": object()}}, "metadata"),
    ("metadata socket", {"metadata": {"sock": socket.socket}}, "metadata"),
    ("metadata datetime", {"metadata": {"at": datetime.now(UTC)}}, "metadata"),
    ("metadata nan", {"metadata": {"latency": math.nan}}, "metadata"),
    ("metadata bytes", {"metadata": {"raw": b"\x00"}}, "metadata"),
    ("metadata not a dict", {"metadata": [("a", 1)]}, "metadata"),
    ("metadata int key", {"metadata": {1: "a"}}, "metadata"),
    ("metadata nested int key", {"metadata": {"a": {1: "x", "1": "y"}}}, "metadata"),
    ("metadata surrogate", {"metadata": {"s": "\ud800"}}, "metadata"),
    ("metadata huge int", {"metadata": {"n": 10**5000}}, "metadata"),
    *[(f"metadata reserved {k}", {"metadata": {k: 1}}, "metadata") for k in RESERVED_DETAIL_KEYS],
    ("user_id int", {"user_id": 42}, "user_id"),
    ("user_id None", {"user_id": None}, "user_id"),
    ("user_id blank", {"user_id": " \t\n"}, "user_id"),
    ("user_id surrogate", {"user_id": "u\udc80"}, "user_id"),
    ("product_id None", {"product_id": None}, "product_id"),
    ("product_id too long", {"product_id": "." * 100}, "product_id"),
    ("provider empty", {"provider": ""}, "provider"),
    ("operation bytes", {"operation": b"chat"}, "operation"),
    ("service_type empty", {"service_type": ""}, "service_type"),
    ("service_type int enum", {"service_type": Colour.RED}, "service_type"),
    ("service_type None", {"service_type": None}, "service_type"),
    ("float tokens", {"input_tokens": 1.0}, "input_tokens"),
    ("str tokens", {"output_tokens": "5"}, "output_tokens"),
    ("huge tokens", {"input_tokens": 10**5000}, "input_tokens"),
    ("int64 overflow tokens", {"output_tokens": 2**63}, "output_tokens"),
    ("negative output tokens", {"output_tokens": -1}, "output_tokens"),
    ("output units alone", {"input_tokens": None, "output_units": 3}, "usage"),
    # version 1.1: keyword ids, and a keyword that disagrees with metadata
    ("session_id int", {"session_id": 42}, "session_id"),
    ("session_id empty", {"session_id": ""}, "session_id"),
    ("request_id 256 characters", {"request_id": "r" * 256}, "request_id"),
    ("organization_id NUL", {"organization_id": "org\x00"}, "organization_id"),
    ("subscription_id blank", {"subscription_id": "  "}, "subscription_id"),
    ("agent_id bytes", {"agent_id": b"agent"}, "agent_id"),
    (
        "session_id keyword and metadata differ",
        {"session_id": "a", "metadata": {"session_id": "b"}},
        "session_id",
    ),
    (
        "request_id keyword beside a non-string metadata value",
        {"request_id": "r-1", "metadata": {"request_id": 7}},
        "request_id",
    ),
    ("traceparent malformed", {"traceparent": "00-abc-def-01"}, "traceparent"),
    (
        "traceparent all-zero trace id",
        {"traceparent": f"00-{'0' * 32}-{'1' * 16}-01"},
        "traceparent",
    ),
    ("tracestate without traceparent", {"tracestate": "a=b"}, "tracestate"),
    (
        "tracestate with a line break",
        {"traceparent": f"00-{'a' * 32}-{'b' * 16}-01", "tracestate": "a=b\r\nx: y"},
        "tracestate",
    ),
]


@pytest.mark.parametrize(
    ("changes", "field"), [c[1:] for c in IN_CODE], ids=[c[0] for c in IN_CODE]
)
def test_refused_in_code(
    changes: dict[str, Any], field: str, sync_engine: sa.Engine, outbox_path: Path
) -> None:
    with sync_engine.begin() as conn, pytest.raises(InvalidUsageEvent) as refused:
        record_usage_sync(conn, **{**BASE, **changes})
    assert refused.value.field == field, str(refused.value)
    assert str(refused.value).startswith(f"{field}: ")
    assert count_outbox_rows(outbox_path) == 0


def test_keyword_ids_go_to_the_top_level_only_and_agree_with_metadata(
    sync_engine: sa.Engine, outbox_path: Path
) -> None:
    write_one(
        sync_engine,
        **BASE,
        session_id="sess-9",
        organization_id="org-9",
        agent_id="agent-9",
        metadata={"organization_id": "org-9", "temperature": 0.5},
    )
    (row,) = stored_rows(outbox_path)
    payload = json.loads(row["payload"])
    assert list(payload) == [
        "event_id",
        "idempotency_key",
        "user_id",
        "product_id",
        "usage_amount",
        "unit_type",
        "organization_id",
        "session_id",
        "agent_id",
        "usage_details",
        "timestamp",
    ]
    assert (payload["session_id"], payload["organization_id"]) == ("sess-9", "org-9")
    # From metadata it stays in usage_details as in 1.0; a keyword alone does not go there.
    assert payload["usage_details"]["organization_id"] == "org-9"
    assert "session_id" not in payload["usage_details"]
    assert "agent_id" not in payload["usage_details"]


def test_self_referencing_metadata_is_refused(sync_engine: sa.Engine, outbox_path: Path) -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    deep: list[Any] = []
    cursor = deep
    for _ in range(10_000):
        cursor.append([])
        cursor = cursor[0]
    for metadata in ({"loop": loop}, {"deep": deep}):
        with sync_engine.begin() as conn, pytest.raises(InvalidUsageEvent) as refused:
            record_usage_sync(conn, **{**BASE, "metadata": metadata})
        assert refused.value.field == "metadata"
    assert count_outbox_rows(outbox_path) == 0


def test_str_enum_service_type_contributes_its_value() -> None:
    class Service(StrEnum):
        TEXT = "text"

    class Plain(Enum):
        VISION = "vision"

    for given_type, expected in ((Service.TEXT, "text"), (Plain.VISION, "vision")):
        event = build_usage_event(**{**BASE, "service_type": given_type})
        assert json.loads(event.payload)["usage_details"]["service_type"] == expected


def test_large_but_sane_numbers_are_kept_exactly() -> None:
    event = build_usage_event(**{**BASE, "input_tokens": 2**39, "output_tokens": 3})
    payload = json.loads(event.payload)
    assert payload["usage_amount"] == 2**39 + 3 and type(payload["usage_amount"]) is int
    units = build_usage_event(**{**BASE, "input_tokens": None, "input_units": 0.5})
    assert json.loads(units.payload)["usage_amount"] == 0.5


# -- the payload size limit ---------------------------------------------------------------


def test_payload_over_the_default_limit_is_refused(
    sync_engine: sa.Engine, outbox_path: Path
) -> None:
    big = {"prompt": "x" * DEFAULT_MAX_PAYLOAD_BYTES}
    with sync_engine.begin() as conn, pytest.raises(InvalidUsageEvent) as refused:
        record_usage_sync(conn, **{**BASE, "metadata": big})
    assert refused.value.field == "payload"
    assert str(DEFAULT_MAX_PAYLOAD_BYTES) in str(refused.value)
    assert count_outbox_rows(outbox_path) == 0


def test_payload_limit_is_exact_and_counts_utf8_bytes(
    sync_engine: sa.Engine, outbox_path: Path
) -> None:
    # event_id and timestamp have fixed widths, so the same input has the same size.
    args = {**BASE, "metadata": {"note": "ü" * 100}}
    size = len(build_usage_event(**args).payload)
    assert size > len(json.dumps(args["metadata"], ensure_ascii=False)) + 100, "bytes, not chars"
    with sync_engine.begin() as conn:
        record_usage_sync(conn, **args, max_payload_bytes=size)
    with sync_engine.begin() as conn, pytest.raises(InvalidUsageEvent) as refused:
        record_usage_sync(conn, **args, max_payload_bytes=size - 1)
    assert refused.value.field == "payload"
    assert count_outbox_rows(outbox_path) == 1


# -- the subject encoding -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["gpt-4", "text-embedding-3-small", "flux_schnell", "GLM4", "a", "x" * 200]
)
def test_plain_names_map_to_themselves(name: str) -> None:
    assert product_token(name) == name
    assert usage_subject(name) == f"billing.usage.recorded.{name}"


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("gpt-4.1", "gpt-4%2E1"),
        ("claude-3.5-sonnet", "claude-3%2E5-sonnet"),
        ("meta-llama/Llama-3.1-8B Instruct", "meta-llama%2FLlama-3%2E1-8B%20Instruct"),
        ("a*b>c", "a%2Ab%3Ec"),
        ("tab\there", "tab%09here"),
        ("100%", "100%25"),
        ("%2E", "%252E"),
        ("模型", "%E6%A8%A1%E5%9E%8B"),
        ("é", "%C3%A9"),
        ("🚀", "%F0%9F%9A%80"),
        ("a\x00b", "a%00b"),
        ("~", "%7E"),
    ],
)
def test_documented_escapes(name: str, token: str) -> None:
    assert product_token(name) == token
    assert_one_token_subject(usage_subject(name), name)


def test_encoding_is_injective_on_lookalikes() -> None:
    names = [
        "a.b",
        "a%2Eb",
        "a%252Eb",
        "a b",
        "a%20b",
        "a_b",
        "a-b",
        "a/b",
        "a%2Fb",
        "A.B",
        "a..b",
        "a.b.",
        ".a.b",
        "é",
        "%C3%A9",
        "e\u0301",
    ]
    tokens = [product_token(n) for n in names]
    assert len(set(tokens)) == len(names), dict(zip(names, tokens, strict=True))


def test_token_length_limit() -> None:
    assert len(product_token("." * 66)) == 198
    build_usage_event(**{**BASE, "product_id": "x" * MAX_TOKEN_LENGTH})
    with pytest.raises(InvalidUsageEvent) as refused:
        build_usage_event(**{**BASE, "product_id": "x" * (MAX_TOKEN_LENGTH + 1)})
    assert refused.value.field == "product_id"
    with pytest.raises(InvalidUsageEvent):
        build_usage_event(**{**BASE, "product_id": "é" * 34})  # 34 chars, 204 encoded


@given(st.text(min_size=1, max_size=60))
def test_every_name_is_one_decodable_token(name: str) -> None:
    token = product_token(name)
    assert TOKEN.fullmatch(token)
    assert unquote(token, errors="strict") == name  # so the encoding is injective
    if re.fullmatch(r"[A-Za-z0-9_-]+", name):
        assert token == name


# -- the property test: accepted means contract-shaped, refused means nothing written -----

weird_text = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(codec=None, categories=["Cs", "Zs", "Cc", "So"]), max_size=6),
    st.sampled_from(["", " ", "\t", "gpt-4.1", "a" * 300, "\x00", "模型", "x\ud800"]),
)
anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**62, max_value=10**400),
    st.floats(),
    weird_text,
    st.binary(max_size=4),
)
token_counts = st.one_of(
    st.none(),
    st.none(),
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=-5, max_value=2**64),
    st.just(10**4000),
    st.booleans(),
    st.floats(),
)
unit_counts = st.one_of(
    st.none(),
    st.none(),
    st.floats(min_value=0, max_value=1e6),
    st.floats(),
    st.integers(min_value=-3, max_value=10**13),
    st.just(10**400),
    st.booleans(),
)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=6), inner, max_size=3),
    ),
    max_leaves=8,
)
metadata_values = st.one_of(
    json_value,
    st.sets(st.integers(), max_size=2),
    st.just(object()),
    st.datetimes(),
    st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=2),
)
good_text = st.one_of(
    st.sampled_from(["u-1", "gpt-4", "gpt-4.1", "openai", "chat", "text", "模型", "a b"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1),
)
metadata = st.one_of(
    st.none(),
    st.none(),
    st.dictionaries(st.text(max_size=10), json_value, max_size=4),
    st.dictionaries(
        st.one_of(st.text(max_size=10), st.sampled_from(sorted(RESERVED_DETAIL_KEYS))),
        metadata_values,
        max_size=4,
    ),
    # 1.1: ids in metadata are lifted when they are id-shaped strings, left alone if not
    st.dictionaries(st.sampled_from(ID_FIELDS), st.one_of(good_text, anything), max_size=3),
    st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=2),
    anything,
)
# Mostly well-formed, so the later checks (counts, metadata, size) are reached too.
texts = st.one_of(good_text, good_text, good_text, good_text, weird_text, anything)
services = st.one_of(texts, st.sampled_from(list(Colour)))
keyword_ids = st.one_of(st.none(), st.none(), st.none(), st.sampled_from(["s-1", "r-1"]), texts)
call_args = st.fixed_dictionaries(
    {
        "user_id": texts,
        "product_id": texts,
        "provider": texts,
        "operation": texts,
        "service_type": services,
        "input_tokens": token_counts,
        "output_tokens": token_counts,
        "input_units": unit_counts,
        "output_units": unit_counts,
        "metadata": metadata,
        "session_id": keyword_ids,
        "request_id": keyword_ids,
    }
)


def _text_ok(value: object, *, is_id: bool = False) -> bool:
    if not isinstance(value, str) or not value.strip():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not (is_id and (len(value) > 255 or "\x00" in value))


def _token_ok(value: object) -> bool:
    if value is None:
        return True
    return type(value) is int and 0 <= value <= 2**63 - 1


def _units_ok(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value)) and value >= 0
    except OverflowError:
        return False


def _metadata_ok(value: object) -> bool:
    if value is None:
        return True
    if not isinstance(value, dict):
        return False

    def keys_are_text(node: object) -> bool:
        if isinstance(node, dict):
            return all(isinstance(k, str) for k in node) and all(
                keys_are_text(v) for v in node.values()
            )
        if isinstance(node, list | tuple):
            return all(keys_are_text(v) for v in node)
        return True

    if not keys_are_text(value) or RESERVED_DETAIL_KEYS & set(value):
        return False
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError):
        return False
    return True


def expected_faults(args: dict[str, Any]) -> set[str]:
    """Every field a correct implementation may name when refusing ``args`` (an
    independent oracle; empty means the event must be accepted)."""
    faults = {field for field in ("user_id", "product_id") if not _text_ok(args[field], is_id=True)}
    faults |= {f for f in ("provider", "operation") if not _text_ok(args[f])}
    service = args["service_type"]
    if not _text_ok(service.value if isinstance(service, Enum) else service):
        faults.add("service_type")
    faults |= {f for f in ("input_tokens", "output_tokens") if not _token_ok(args[f])}
    faults |= {f for f in ("input_units", "output_units") if not _units_ok(args[f])}
    if not _metadata_ok(args["metadata"]):
        faults.add("metadata")
    metadata = args["metadata"] if isinstance(args["metadata"], dict) else {}
    for field in ("session_id", "request_id"):
        given = args[field]
        if given is None:
            continue
        if not _text_ok(given, is_id=True) or (field in metadata and metadata[field] != given):
            faults.add(field)
    if "product_id" not in faults:
        encoded = sum(
            1 if chr(b) in "-_" or (chr(b).isalnum() and b < 128) else 3
            for b in args["product_id"].encode("utf-8")
        )
        if encoded > MAX_TOKEN_LENGTH:
            faults.add("product_id")
    tokens = [args[f] for f in ("input_tokens", "output_tokens") if args[f] is not None]
    if not faults & {"input_tokens", "output_tokens", "input_units", "output_units"}:
        if tokens:
            if sum(tokens) > 10**12:
                faults.add("usage")
        elif args["input_units"] is None or args["input_units"] > 10**12:
            faults.add("usage")
    return faults


def expected_top_level_ids(args: dict[str, Any]) -> dict[str, str]:
    metadata = args["metadata"] or {}
    ids = {}
    for field in ID_FIELDS:
        if args.get(field) is not None:
            ids[field] = args[field]
        elif _text_ok(metadata.get(field), is_id=True):
            ids[field] = metadata[field]
    return ids


def check_contract(args: dict[str, Any], payload: dict[str, Any], subject: str) -> None:
    ids = expected_top_level_ids(args)
    fields = list(PAYLOAD_FIELDS)
    fields[fields.index("usage_details") : fields.index("usage_details")] = ids
    assert list(payload) == fields
    assert {f: payload[f] for f in ids} == ids
    assert_idempotency_key(payload)
    assert payload["user_id"] == args["user_id"]
    assert payload["product_id"] == args["product_id"]
    assert_one_token_subject(subject, args["product_id"])
    tokens = [args[f] for f in ("input_tokens", "output_tokens") if args[f] is not None]
    if tokens:
        assert payload["unit_type"] == "token"
        assert payload["usage_amount"] == sum(tokens) and type(payload["usage_amount"]) is int
    else:
        assert payload["unit_type"] == "request"
        assert payload["usage_amount"] == float(args["input_units"])
    service = args["service_type"]
    details = payload["usage_details"]
    expected: dict[str, Any] = {
        "provider": args["provider"],
        "model": args["product_id"],
        "operation": args["operation"],
        "service_type": service.value if isinstance(service, Enum) else service,
    }
    for field in ("input_tokens", "output_tokens", "input_units", "output_units"):
        if args[field] is not None:
            expected[field] = args[field]
    expected.update(json.loads(json.dumps(args["metadata"] or {})))
    assert list(details) == list(expected)
    for key in ("input_tokens", "output_tokens"):
        if key in details:
            assert type(details[key]) is int
    assert details == expected
    assert_uuid7(payload["event_id"])
    assert_utc_timestamp(payload["timestamp"], near=time.time())


@settings(
    max_examples=int(os.environ.get("USAGE_OUTBOX_PROPERTY_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(args=call_args)
def test_property_accepted_obeys_contract_refused_writes_nothing(
    args: dict[str, Any], sync_engine: sa.Engine, outbox_path: Path
) -> None:
    before = count_outbox_rows(outbox_path)
    faults = expected_faults(args)
    try:
        with sync_engine.begin() as conn:
            event_id = record_usage_sync(conn, **args)
    except InvalidUsageEvent as refused:
        assert count_outbox_rows(outbox_path) == before, "a refused event wrote a row"
        assert faults, f"refused a valid event: {refused}"
        assert refused.field in faults, (refused.field, faults)
        return
    assert not faults, f"accepted an event the contract refuses ({faults})"
    assert count_outbox_rows(outbox_path) == before + 1
    with sync_engine.connect() as conn:
        row = conn.execute(
            sa.select(outbox_table.c.subject, outbox_table.c.payload).where(
                outbox_table.c.event_id == event_id
            )
        ).one()
    text = row.payload.decode("utf-8")
    payload = json.loads(text)
    # Round-trips, and is byte for byte what json.dumps writes for the same document.
    assert canonical_json(payload) == row.payload
    assert payload["event_id"] == event_id
    check_contract(args, payload, row.subject)
