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

from outbox.store import OutboxRow
from outbox.subject import SUBJECT_PREFIX
from shipper.publisher import Message

_SUBJECT = re.compile(re.escape(SUBJECT_PREFIX) + r"\.[^\s.*>]+")
_HEADER_LINE_OVERHEAD = len(": \r\n")
_HEADER_BLOCK_OVERHEAD = len("NATS/1.0\r\n\r\n")


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


def to_message(row: OutboxRow, *, max_payload: int, verify_payload: bool) -> Message | Refusal:
    if not _SUBJECT.fullmatch(row.subject):
        return Refusal(row, f"subject {row.subject!r} is not one token under {SUBJECT_PREFIX}")
    try:
        headers = json.loads(row.headers)
    except ValueError as exc:
        return Refusal(row, f"headers are not JSON: {exc}")
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        return Refusal(row, "headers are not a JSON object of strings")
    if headers.get("Nats-Msg-Id") != row.event_id:
        # Without it JetStream cannot de-duplicate a retry: refusing beats double billing risk.
        return Refusal(row, "headers lack Nats-Msg-Id equal to the row's event_id")
    if verify_payload:
        try:
            document = json.loads(row.payload)
        except ValueError as exc:
            return Refusal(row, f"payload is not JSON: {exc}")
        if not isinstance(document, dict) or document.get("event_id") != row.event_id:
            return Refusal(row, "payload is not a JSON object carrying the row's event_id")
    size = wire_size(row.payload, headers)
    if size > max_payload:
        return Refusal(
            row,
            f"message is {size} bytes with headers, over the server's max_payload {max_payload}",
        )
    return Message(row.subject, row.payload, headers)
