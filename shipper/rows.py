"""Turning claimed outbox rows into messages, and refusing rows that can never be sent.

The shipper is a forwarder: it republishes the envelope the write API stored. It still
checks each row, because a row edited by hand, truncated by a bad restore or written by
a buggy producer must go to ``dead`` with its reason, not stall the outbox or make
nats-server close the connection (the server counts headers against ``max_payload``;
nats-py checks only the payload).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from outbox.contract import contract_headers
from outbox.store import OutboxRow, stored_headers
from outbox.subject import SUBJECT_PREFIX
from shipper.frames import header_block
from shipper.publisher import Message

_SUBJECT = re.compile(re.escape(SUBJECT_PREFIX) + r"\.[^\s.*>]+")
# What nats-py accepts as a header name (an RFC 7230 token); it raises BadHeaderError for
# anything else, out of the publish and so out of the shipper. Values may not hold CR/LF:
# nats-py would rewrite them to spaces, sending a header other than the stored one.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_LINE_BREAK = re.compile(r"[\r\n]")
_HEADER_LINE_OVERHEAD = len(": \r\n")
_HEADER_BLOCK_OVERHEAD = len("NATS/1.0\r\n\r\n")
#: The wire header block of the contract headers (``contract_headers``) up to the event
#: id, which comes last: a row the write API stored gets its block (and the size check)
#: by a concatenation, not a walk of the headers.
_CONTRACT_BLOCK = header_block(contract_headers("\0"))
_CONTRACT_BLOCK_HEAD, _CONTRACT_BLOCK_TAIL = _CONTRACT_BLOCK.split(b"\0")
assert _CONTRACT_BLOCK_TAIL == b"\r\n\r\n", "Nats-Msg-Id must be the last contract header"
_decode = json.JSONDecoder().decode


@dataclass(frozen=True, slots=True)
class Refusal:
    row: OutboxRow
    reason: str


def wire_size(payload: bytes, headers: dict[str, str]) -> int:
    """Bytes the server counts against ``max_payload``: payload plus the header block."""
    header_bytes = _HEADER_BLOCK_OVERHEAD + sum(
        len(k.encode()) + len(v.encode()) + _HEADER_LINE_OVERHEAD for k, v in headers.items()
    )
    return len(payload) + header_bytes


def _headers(row: OutboxRow) -> dict[str, str] | str:
    """The row's headers (other than the write API stores), or why they cannot be used."""
    try:
        headers = json.loads(row.headers)
    except ValueError as exc:
        return f"headers are not JSON: {exc}"
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        return "headers are not a JSON object of strings"
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            return f"header name {name[:100]!r} is not a valid NATS header name"
        if _LINE_BREAK.search(value):
            return f"header {name!r} has a line break in its value"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a \udxxx escape in the JSON
            return f"header {name!r} is not valid Unicode text"
    if headers.get("Nats-Msg-Id") != row.event_id:
        # Without it JetStream cannot de-duplicate a retry: refusing beats double billing risk.
        return "headers lack Nats-Msg-Id equal to the row's event_id"
    return headers


def _payload_problem(row: OutboxRow, *, parse: bool) -> str | None:
    if not parse:
        # The envelope check: the write API always starts the payload with the event id.
        # It catches truncation and rows pasted from elsewhere at a fraction of a parse;
        # damage inside a payload is caught by billing, which keeps the event as rejected.
        head = b'{"event_id":"' + row.event_id.encode("utf-8", "replace") + b'"'
        if row.payload.startswith(head) and row.payload.endswith(b"}"):
            return None
        return "payload is not a JSON object starting with the row's event_id"
    try:
        document = _decode(row.payload.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError included
        return f"payload is not UTF-8 JSON: {exc}"
    if not isinstance(document, dict) or document.get("event_id") != row.event_id:
        return "payload is not a JSON object carrying the row's event_id"
    return None


#: Subjects already checked against ``_SUBJECT``: a platform has a handful (one per
#: event type), so the regex runs once per subject, not once per row (~0.9 us a row).
_checked_subjects: dict[str, bool] = {}
_PAYLOAD_HEAD = b'{"event_id":"'
_PAYLOAD_ID_AT = len(_PAYLOAD_HEAD)


def _subject_ok(subject: str) -> bool:
    ok = _checked_subjects.get(subject)
    if ok is None:
        ok = _SUBJECT.fullmatch(subject) is not None
        if len(_checked_subjects) < 10_000:  # bounded: hand-edited rows could vary
            _checked_subjects[subject] = ok
    return ok


def to_message(row: OutboxRow, *, max_payload: int, parse_payload: bool) -> Message | Refusal:
    if not _subject_ok(row.subject):
        return Refusal(row, f"subject {row.subject!r} is not one token under {SUBJECT_PREFIX}")
    event_id = row.event_id
    payload = row.payload
    # Fast path, the row as the write API stores it (nearly every row): one comparison
    # replaces a parse of the headers, the header block's size is known, and the envelope
    # check is two slices. About 4x cheaper than the general path below.
    if not parse_payload and row.headers == stored_headers(event_id):
        encoded_id = event_id.encode()
        end = _PAYLOAD_ID_AT + len(encoded_id)
        if (
            payload[:_PAYLOAD_ID_AT] == _PAYLOAD_HEAD
            and payload[_PAYLOAD_ID_AT:end] == encoded_id
            and payload[end : end + 1] == b'"'
            and payload[-1:] == b"}"
        ):
            block = _CONTRACT_BLOCK_HEAD + encoded_id + _CONTRACT_BLOCK_TAIL
            if len(payload) + len(block) <= max_payload:
                return Message(row.subject, payload, contract_headers(event_id), block)
    return _checked_message(row, max_payload=max_payload, parse_payload=parse_payload)


def _checked_message(row: OutboxRow, *, max_payload: int, parse_payload: bool) -> Message | Refusal:
    """The general path: every check spelled out, each refusal with its reason."""
    if row.headers == stored_headers(row.event_id):
        headers = contract_headers(row.event_id)
        block = _CONTRACT_BLOCK_HEAD + row.event_id.encode() + _CONTRACT_BLOCK_TAIL
        size = len(row.payload) + len(block)
    else:
        parsed = _headers(row)
        if isinstance(parsed, str):
            return Refusal(row, parsed)
        headers, block = parsed, b""
        size = wire_size(row.payload, headers)
    if (problem := _payload_problem(row, parse=parse_payload)) is not None:
        return Refusal(row, problem)
    if size > max_payload:
        return Refusal(
            row,
            f"message is {size} bytes with headers, over the server's max_payload {max_payload}",
        )
    return Message(row.subject, row.payload, headers, block)
