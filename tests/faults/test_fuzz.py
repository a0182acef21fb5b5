"""Bad input (issue 5): generated inputs against the write API and billing's decoder.

Every input must end one of two ways, and nothing else (no crash, no other exception):

* accepted, and then contract-valid: the row in the outbox carries the subject, headers and
  payload the contract prescribes, and billing's decoder accepts the payload and reads back
  exactly what was written (so an event the write API takes is an event billing can bill);
* refused with the typed error naming a field (``InvalidUsageEvent.field`` for the write
  API, an ``InvalidPayload`` whose one-line reason starts with the field for the decoder),
  and the field it names is one that is actually wrong; nothing of a refused call is
  written, although the caller commits its own transaction anyway.

The write API runs against a real SQLite file through ``record_usage_sync`` inside the
caller's transaction, next to a business row. The counts of inputs run are printed.
"""

from __future__ import annotations

import enum
import json
import math
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.decode import MAX_ID_LENGTH, UNIT_TYPES, decode_usage_event
from billing.errors import InvalidPayload
from billing.pricing import MAX_USAGE_AMOUNT, quantize_usage
from outbox import record_usage_sync
from outbox.contract import (
    MAX_TOKEN_COUNT,
    RESERVED_DETAIL_KEYS,
    build_usage_event,
)
from outbox.errors import InvalidUsageEvent
from outbox.sqlite import create_outbox_sync_engine, sqlite_url
from outbox.store import stored_headers
from outbox.subject import MAX_TOKEN_LENGTH, SUBJECT_PREFIX, product_token
from tests.fixtures.databases import migrate_sqlite_file

pytestmark = pytest.mark.faults

WRITE_EXAMPLES = 2000  # record_usage_sync into SQLite (about 3 ms each)
BUILD_EXAMPLES = 1500  # build_usage_event alone (about 2 ms each, mostly generation)
DECODE_EXAMPLES = {"structured": 2500, "mutated": 2500, "bytes": 1500}  # 10,000 in all
RUN: dict[str, int] = {}

FUZZ = settings(
    deadline=None,
    database=None,  # no example files in the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=examples)


TEXT_FIELDS = ("user_id", "product_id", "provider", "operation")
WRITE_FIELDS = frozenset(
    {
        *TEXT_FIELDS,
        "service_type",
        "input_tokens",
        "output_tokens",
        "input_units",
        "output_units",
        "metadata",
        "usage",
        "payload",
    }
)


class ServiceType(enum.Enum):
    TEXT = "text"
    IMAGE = "image"
    BLANK = " "


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


# -- strategies for the write API ---------------------------------------------------------
# Each input starts valid and then has none, one or a few fields replaced by something
# drawn from everything a caller might pass: so about half are accepted, and each refusal
# has a known culprit.

_any_char = st.characters(codec=None, exclude_categories=())  # lone surrogates included
_good_text = st.one_of(
    st.sampled_from(["gpt-4", "gpt-4.1", "meta-llama/Llama-3.1-8B", "user-1", "openai", "chat"]),
    st.text(
        st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=16
    ).filter(str.strip),
    st.sampled_from(["a b", "a*b>c", "..", "é", "x" * MAX_ID_LENGTH, "\u00a0x"]),
)
_bad_text = st.one_of(
    st.sampled_from(["", " ", "\t\n", "\u3000", "a\x00b", "x" * (MAX_ID_LENGTH + 1), "é" * 300]),
    st.text(_any_char, max_size=8),
    st.none(),
    st.integers(),
    st.binary(max_size=4),
    st.lists(st.text(max_size=2), max_size=2),
)
_good_tokens = st.one_of(
    st.integers(min_value=0, max_value=100_000), st.sampled_from([0, 10**12, 10**12 // 2])
)
_bad_tokens = st.one_of(
    st.integers(min_value=-5, max_value=-1),
    st.integers(min_value=10**12 + 1, max_value=MAX_TOKEN_COUNT + 5),
    st.sampled_from([10**400, MAX_TOKEN_COUNT, MAX_TOKEN_COUNT + 1, True, False, 1.0, "5"]),
    st.floats(allow_nan=True),
)
_good_units = st.one_of(
    st.floats(min_value=0, max_value=10_000),
    st.integers(min_value=0, max_value=1000),
    st.sampled_from([0.30000000000000004, 5e-324, -0.0, 1e12, 2.25]),
)
_bad_units = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -1, -0.5, 10**400, 1e12 + 1, 1e300, True]),
    st.text(max_size=3),
    st.none(),
)
_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
_json_value = st.recursive(
    _json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
_free_key = st.text(max_size=8).filter(lambda k: k not in RESERVED_DETAIL_KEYS)
_good_metadata = st.one_of(st.none(), st.dictionaries(_free_key, _json_value, max_size=4))
_poison = st.one_of(
    st.sampled_from([math.nan, math.inf, b"bytes", {1, 2}, Decimal("1.5"), object()]),
    st.text(_any_char, min_size=1, max_size=3).filter(lambda s: _has_surrogate(s)),
)
_bad_metadata = st.one_of(
    st.dictionaries(_free_key, _poison, min_size=1, max_size=2),
    st.dictionaries(
        st.sampled_from(sorted(RESERVED_DETAIL_KEYS)), _json_leaf, min_size=1, max_size=2
    ),
    st.dictionaries(st.integers(), st.text(), min_size=1, max_size=2),
    st.sampled_from([[], "meta", 3, {"deep": _nested(5000)}, {"blob": "x" * 70_000}]),
)
_BAD: dict[str, st.SearchStrategy[Any]] = {
    **dict.fromkeys(TEXT_FIELDS, _bad_text),
    "service_type": st.one_of(_bad_text, st.just(ServiceType.BLANK)),
    "input_tokens": _bad_tokens,
    "output_tokens": _bad_tokens,
    "input_units": _bad_units,
    "output_units": _bad_units,
    "metadata": _bad_metadata,
}
_USAGE_SHAPES = (
    ("input_tokens", "output_tokens"),
    ("input_tokens",),
    ("output_tokens",),
    ("input_units",),
    ("input_units", "output_units"),
    ("output_units",),  # nothing billable: refused on "usage"
    (),
)


@st.composite
def usage_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    kwargs: dict[str, Any] = {name: draw(_good_text) for name in TEXT_FIELDS}
    kwargs["service_type"] = draw(st.one_of(_good_text, st.sampled_from([ServiceType.TEXT])))
    shape = draw(
        st.sampled_from(_USAGE_SHAPES[:5])
        if draw(st.integers(0, 9))
        else st.sampled_from(_USAGE_SHAPES[5:])
    )
    for name in ("input_tokens", "output_tokens"):
        kwargs[name] = draw(_good_tokens) if name in shape else None
    for name in ("input_units", "output_units"):
        kwargs[name] = draw(_good_units) if name in shape else None
    kwargs["metadata"] = draw(_good_metadata)
    broken = draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))
    for name in draw(st.permutations(sorted(_BAD)))[:broken]:
        kwargs[name] = draw(_BAD[name])
    return kwargs


# -- the reference: which fields are wrong -------------------------------------------------


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def _text_problem(value: object, *, id_field: bool) -> bool:
    if not isinstance(value, str) or not value.strip() or _has_surrogate(value):
        return True
    # Billing refuses ids longer than its column or holding NUL: the write API must too,
    # or the event is accepted here and can never be billed.
    return id_field and (len(value) > MAX_ID_LENGTH or "\x00" in value)


def _token_problem(value: object) -> bool:
    if value is None:
        return False
    if isinstance(value, bool) or not isinstance(value, int):
        return True
    return value < 0 or value > MAX_TOKEN_COUNT


def _unit_problem(value: object) -> bool:
    if value is None:
        return False
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True
    try:
        number = float(value)
    except OverflowError:
        return True
    return not math.isfinite(number) or number < 0


def _json_problem(value: object, depth: int = 0) -> bool:
    if depth > 50:
        return True
    if value is None or isinstance(value, bool | int):
        return False
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        return _has_surrogate(value)
    if isinstance(value, list | tuple):
        return any(_json_problem(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return any(
            not isinstance(k, str) or _has_surrogate(k) or _json_problem(v, depth + 1)
            for k, v in value.items()
        )
    return True


def wrong_fields(kwargs: Mapping[str, Any]) -> set[str]:
    """The fields a correct write API may name when it refuses ``kwargs`` (empty: it must
    accept them). A refusal may name any of them: the checks run in some order."""
    wrong = set()
    for name in TEXT_FIELDS:
        if _text_problem(kwargs[name], id_field=name in ("user_id", "product_id")):
            wrong.add(name)
    service = kwargs["service_type"]
    if _text_problem(service.value if isinstance(service, enum.Enum) else service, id_field=False):
        wrong.add("service_type")
    for name in ("input_tokens", "output_tokens"):
        if _token_problem(kwargs[name]):
            wrong.add(name)
    for name in ("input_units", "output_units"):
        if _unit_problem(kwargs[name]):
            wrong.add(name)
    metadata = kwargs["metadata"]
    if metadata is not None and (
        not isinstance(metadata, Mapping)
        or any(not isinstance(k, str) or k in RESERVED_DETAIL_KEYS for k in metadata)
        or _json_problem(dict(metadata))
    ):
        wrong.add("metadata")
    tokens = [kwargs[n] for n in ("input_tokens", "output_tokens")]
    units = kwargs["input_units"]
    if not (wrong & {"input_tokens", "output_tokens", "input_units"}):
        if all(t is None for t in tokens):
            if units is None or Decimal(repr(float(units))) > MAX_USAGE_AMOUNT:
                wrong.add("usage")  # nothing to bill, or more than billing accepts
        elif sum(t or 0 for t in tokens) > MAX_USAGE_AMOUNT:
            wrong.add("usage")
    product = kwargs["product_id"]
    if (
        isinstance(product, str)
        and "product_id" not in wrong
        and len(product_token(product)) > MAX_TOKEN_LENGTH
    ):
        wrong.add("product_id")
    if isinstance(metadata, Mapping) and "blob" in metadata and len(str(metadata["blob"])) > 60000:
        wrong.add("payload")
    return wrong


# -- checking one outcome -------------------------------------------------------------------


def check_refusal(exc: InvalidUsageEvent, kwargs: Mapping[str, Any], wrong: set[str]) -> None:
    assert exc.field in WRITE_FIELDS, exc.field
    assert str(exc).startswith(f"{exc.field}: ") and exc.reason.strip(), str(exc)
    assert exc.field in wrong or (exc.field == "payload" and "metadata" not in wrong), (
        f"refused on {exc.field!r} ({exc.reason}) but the wrong fields are {sorted(wrong)}: "
        f"{kwargs!r}"
    )


def check_accepted(
    kwargs: Mapping[str, Any], event_id: str, subject: str, headers: str, payload: bytes
) -> None:
    product = kwargs["product_id"]
    assert subject == f"{SUBJECT_PREFIX}.{product_token(product)}"
    assert len(subject.split(".")) == 4 and len(subject) < 256
    assert not any(c in subject for c in " \t\r\n*>")
    assert headers == stored_headers(event_id)
    assert json.loads(headers) == {"event_type": "billing.usage.recorded", "Nats-Msg-Id": event_id}
    try:
        record = decode_usage_event(payload)
    except InvalidPayload as exc:
        raise AssertionError(
            f"the write API accepted an event billing refuses ({exc.reason}): {kwargs!r}"
        ) from exc
    assert record.event_id == event_id
    assert record.user_id == kwargs["user_id"] and record.product_id == product
    tokens = [kwargs[n] for n in ("input_tokens", "output_tokens") if kwargs[n] is not None]
    if tokens:
        assert (record.unit_type, record.usage_amount) == ("token", Decimal(sum(tokens)))
    else:
        amount = quantize_usage(Decimal(repr(float(kwargs["input_units"])))) + 0
        assert (record.unit_type, record.usage_amount) == ("request", amount)
    details = record.usage_details
    assert details["model"] == product and details["provider"] == kwargs["provider"]
    for key, value in (kwargs["metadata"] or {}).items():
        assert key in details
        if isinstance(value, float):
            assert float(details[key]) == value
    assert record.timestamp.tzinfo is UTC


# -- the write API into SQLite --------------------------------------------------------------


@pytest.fixture
def outbox_engine(tmp_path: Path) -> Iterator[tuple[sa.Engine, Path]]:
    path = tmp_path / "fuzz-outbox.db"
    migrate_sqlite_file(path)
    engine = create_outbox_sync_engine(sqlite_url(path, asynchronous=False))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE requests (id INTEGER PRIMARY KEY, note TEXT)")
    yield engine, path
    engine.dispose()


def _counts(conn: sa.Connection) -> tuple[int, int]:
    outbox = conn.exec_driver_sql("SELECT count(*) FROM usage_outbox").scalar_one()
    requests = conn.exec_driver_sql("SELECT count(*) FROM requests").scalar_one()
    return int(outbox), int(requests)


def test_write_api_into_sqlite(outbox_engine: tuple[sa.Engine, Path]) -> None:
    engine, path = outbox_engine
    seen = {"accepted": 0, "refused": 0}

    @fuzz(WRITE_EXAMPLES)
    @given(kwargs=usage_kwargs())
    def run(kwargs: dict[str, Any]) -> None:
        wrong = wrong_fields(kwargs)
        with engine.connect() as conn:
            before = _counts(conn)
        event_id: str | None = None
        with engine.begin() as conn:  # the caller's transaction, committed either way
            conn.exec_driver_sql("INSERT INTO requests (note) VALUES ('business data')")
            try:
                event_id = record_usage_sync(conn, **kwargs)
            except InvalidUsageEvent as exc:
                check_refusal(exc, kwargs, wrong)
        with engine.connect() as conn:
            outbox, requests = _counts(conn)
            assert requests == before[1] + 1  # the caller's own row is the caller's business
            if event_id is None:
                seen["refused"] += 1
                assert outbox == before[0], "a refused event left a row"
                return
            seen["accepted"] += 1
            assert not wrong, f"accepted although {sorted(wrong)} are wrong: {kwargs!r}"
            assert outbox == before[0] + 1
            row = conn.exec_driver_sql(
                "SELECT subject, headers, payload, state, attempts FROM usage_outbox "
                "WHERE event_id = ?",
                (event_id,),
            ).one()
        assert (row.state, row.attempts) == ("pending", 0)
        check_accepted(kwargs, event_id, row.subject, row.headers, bytes(row.payload))

    run()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    _report("write API (record_usage_sync into SQLite)", seen)
    assert seen["accepted"] > 100 and seen["refused"] > 100, seen


def test_build_usage_event(tmp_path: Path) -> None:
    seen = {"accepted": 0, "refused": 0}

    @fuzz(BUILD_EXAMPLES)
    @given(kwargs=usage_kwargs())
    def run(kwargs: dict[str, Any]) -> None:
        wrong = wrong_fields(kwargs)
        try:
            event = build_usage_event(**kwargs)
        except InvalidUsageEvent as exc:
            check_refusal(exc, kwargs, wrong)
            seen["refused"] += 1
            return
        seen["accepted"] += 1
        assert not wrong, f"accepted although {sorted(wrong)} are wrong: {kwargs!r}"
        check_accepted(
            kwargs, event.event_id, event.subject, stored_headers(event.event_id), event.payload
        )

    run()
    _report("write API (build_usage_event)", seen)
    assert seen["accepted"] > 100 and seen["refused"] > 100, seen


# -- billing's decoder -----------------------------------------------------------------------

REQUIRED = (
    "event_id",
    "user_id",
    "product_id",
    "usage_amount",
    "unit_type",
    "usage_details",
    "timestamp",
)
_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@dataclass(frozen=True)
class Case:
    text: str  # the JSON text sent
    broken: str | None  # the field made wrong, "json" for the syntax, None when valid
    document: dict[str, Any]


def _valid_document(draw: st.DrawFn) -> dict[str, Any]:
    unit = draw(st.sampled_from(["token", "request"]))
    amount: Any = (
        draw(st.integers(min_value=0, max_value=10**12))
        if unit == "token"
        else draw(st.decimals(min_value=0, max_value=10**12, places=draw(st.integers(0, 9))))
    )
    return {
        "event_id": draw(st.uuids()).hex,
        "user_id": draw(
            st.text(
                st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40
            ).filter(str.strip)
        ),
        "product_id": draw(st.sampled_from(["gpt-4", "gpt-4.1", "flux", "é-model"])),
        "usage_amount": amount,
        "unit_type": unit,
        "usage_details": draw(st.dictionaries(st.text(max_size=5), _json_leaf, max_size=3)),
        "timestamp": draw(
            st.sampled_from(
                [
                    "2025-01-09T12:00:00.000000+00:00",
                    "2025-01-09T14:00:00+02:00",
                    "2025-01-09T12:00:00Z",
                ]
            )
        ),
        **draw(st.dictionaries(st.sampled_from(["extra", "v2_field"]), _json_leaf, max_size=1)),
    }


_BREAKS: dict[str, Callable[[st.DrawFn, Any], Any]] = {
    "event_id": lambda d, v: d(st.sampled_from(["", "  ", "a\x00b", "x" * 256, 7, None])),
    "user_id": lambda d, v: d(st.sampled_from(["", " \t", "u\x00", "u" * 256, 12, [], None])),
    "product_id": lambda d, v: d(st.sampled_from(["", "p" * 300, False, {}])),
    "usage_amount": lambda d, v: d(
        st.sampled_from(["12", None, True, -1, 10**12 + 1, Decimal("1E+13"), "NaN"])
    ),
    "unit_type": lambda d, v: d(st.sampled_from(["tokens", "", "TOKEN", None, 1, ["token"]])),
    "usage_details": lambda d, v: d(st.sampled_from([None, [], "details", 3])),
    "timestamp": lambda d, v: d(
        st.sampled_from(
            ["2025-01-09T12:00:00", "yesterday", "", 1736424000, None, "2025-13-01T00:00:00+00:00"]
        )
    ),
}


def _encode(document: dict[str, Any]) -> str:
    """JSON text with every Decimal written as its exact number literal."""
    marks: dict[str, str] = {}

    def swap(value: Any) -> Any:
        if isinstance(value, Decimal):
            mark = f"@@num{len(marks)}@@"
            marks[mark] = str(value) if value.is_finite() else "NaN"
            return mark
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    text = json.dumps(swap(document), ensure_ascii=False)
    for mark, literal in marks.items():
        text = text.replace(f'"{mark}"', literal)
    return text


@st.composite
def decode_cases(draw: st.DrawFn) -> Case:
    document = _valid_document(draw)
    kind = draw(st.sampled_from(["valid", "break", "break", "missing", "duplicate", "syntax"]))
    if kind == "valid":
        return Case(_encode(document), None, document)
    field = draw(st.sampled_from(REQUIRED))
    if kind == "missing":
        del document[field]
        return Case(_encode(document), field, document)
    if kind == "duplicate":
        text = _encode(document)
        return Case(text[:-1] + f', "{field}": {json.dumps(field)}' + "}", field, document)
    if kind == "syntax":
        text = _encode(document)
        cut = draw(st.integers(min_value=0, max_value=len(text) - 1))
        broken = draw(
            st.sampled_from(
                [
                    text[:cut],
                    text.replace(":", "", 1),
                    text + ",",
                    "[" + text + "]",
                    text.replace('"usage_amount": ', '"usage_amount": NaN, "x": ', 1),
                ]
            )
        )
        return Case(broken, "json", document)
    document[field] = _BREAKS[field](draw, document[field])
    return Case(_encode(document), field, document)


def _check_record(data: bytes) -> None:
    """Decode ``data``; it is either refused with a one-line reason or a usable record."""
    try:
        record = decode_usage_event(data)
    except InvalidPayload as exc:
        assert exc.reason and "\n" not in exc.reason, exc.reason
        return
    for name in ("event_id", "user_id", "product_id"):
        value = getattr(record, name)
        assert isinstance(value, str) and value.strip() and len(value) <= MAX_ID_LENGTH
        assert "\x00" not in value
    assert record.unit_type in UNIT_TYPES
    amount = record.usage_amount
    assert amount.is_finite() and 0 <= amount <= MAX_USAGE_AMOUNT
    assert amount == quantize_usage(amount) and not amount.is_signed()
    if record.unit_type == "token":
        assert amount == amount.to_integral_value()
    assert record.timestamp.tzinfo is UTC and isinstance(record.usage_details, dict)


def test_decoder_on_structured_documents() -> None:
    seen = {"accepted": 0, "refused": 0}

    @fuzz(DECODE_EXAMPLES["structured"])
    @given(case=decode_cases())
    def run(case: Case) -> None:
        data = case.text.encode("utf-8", "surrogatepass")
        try:
            record = decode_usage_event(data)
        except InvalidPayload as exc:
            seen["refused"] += 1
            assert case.broken is not None, f"refused a valid event: {exc.reason}: {case.text}"
            assert exc.reason and "\n" not in exc.reason
            if case.broken not in ("json",):
                assert case.broken in exc.reason, (case.broken, exc.reason)
            return
        seen["accepted"] += 1
        assert case.broken is None, f"accepted with {case.broken} broken: {case.text}"
        _check_record(data)
        doc = case.document
        assert (record.event_id, record.user_id, record.product_id) == (
            doc["event_id"],
            doc["user_id"],
            doc["product_id"],
        )
        assert record.usage_amount == quantize_usage(Decimal(str(doc["usage_amount"]))) + 0

    run()
    _report("billing decoder (structured documents)", seen)
    assert seen["accepted"] > 100 and seen["refused"] > 100, seen


_REAL = [
    build_usage_event(
        user_id="user-1",
        product_id=p,
        provider="openai",
        operation="chat",
        service_type="text",
        **u,
    ).payload
    for p, u in (
        ("gpt-4", {"input_tokens": 100, "output_tokens": 200}),
        ("flux", {"input_units": 2.5}),
        ("meta-llama/Llama-3.1-8B", {"input_tokens": 7, "metadata": {"k": [1, {"x": None}]}}),
    )
]


@st.composite
def mutated_payloads(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_REAL)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete", "dup"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "dup":
            data[at:at] = data[at : at + draw(st.integers(1, 20))]
    return bytes(data)


def test_decoder_on_mutated_real_payloads() -> None:
    seen = {"accepted": 0, "refused": 0}

    @fuzz(DECODE_EXAMPLES["mutated"])
    @given(data=mutated_payloads())
    def run(data: bytes) -> None:
        try:
            decode_usage_event(data)
            seen["accepted"] += 1
        except InvalidPayload:
            seen["refused"] += 1
        _check_record(data)

    run()
    _report("billing decoder (mutated real payloads)", seen)
    assert seen["refused"] > 100, seen


def test_decoder_on_arbitrary_bytes() -> None:
    seen = {"accepted": 0, "refused": 0}

    @fuzz(DECODE_EXAMPLES["bytes"])
    @given(data=st.one_of(st.binary(max_size=300), st.text(max_size=100).map(str.encode)))
    def run(data: bytes) -> None:
        try:
            decode_usage_event(data)
            seen["accepted"] += 1
        except InvalidPayload:
            seen["refused"] += 1
        _check_record(data)

    run()
    _report("billing decoder (arbitrary bytes)", seen)


def _report(what: str, seen: dict[str, int]) -> None:
    total = sum(seen.values())
    RUN[what] = total
    print(
        f"\nfuzz: {what}: {total} inputs, {seen['accepted']} accepted, "
        f"{seen['refused']} refused; {sum(RUN.values())} inputs so far in this module"
    )
