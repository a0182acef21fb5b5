"""NATS ``HPUB`` frames built here and written to nats-py's outgoing buffer.

``nc.publish`` costs about 2.7 us a message in nats-py 2.16 (subject validation, the
header block rebuilt from a dict, one buffer append and a flusher kick per call); a
frame built here and a whole window handed over in one append cost about 0.65 us
(measured: /work/shared/notes/jetstream-batch.md). At fast-ingest rates that difference
is a third of the shipper's CPU per message.

This leans on nats-py's private buffer (``Client._send_command`` / ``_flush_pending`` /
``_flush_queue``), the same two calls its own ``publish`` ends with. pyproject.toml pins
nats-py below the next minor version, and ``tests/test_shipper_frames.py`` fails loudly
when these names or their behaviour change. When they are missing at run time,
:func:`sender_for` falls back to ``nc.publish``: slower, same protocol.

Subjects and headers need no validation here: the write API and
:func:`shipper.rows.to_message` checked them when the row was stored and claimed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from nats.aio.client import Client
from nats.errors import ConnectionClosedError, OutboundBufferLimitError

from shipper.publisher import Message

logger = logging.getLogger("shipper")

_HEADER_LINE = b"NATS/1.0\r\n"
_CRLF = b"\r\n"
#: The private members of nats-py's ``Client`` that :func:`write_frames` uses.
PRIVATE_API = ("_send_command", "_flush_pending", "_flush_queue", "_max_pending_size")


def header_block(headers: dict[str, str]) -> bytes:
    """The header block nats-py would send for ``headers`` (values without CR/LF)."""
    lines = [_HEADER_LINE]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n".encode())
    lines.append(_CRLF)
    return b"".join(lines)


def hpub_frame(message: Message, reply: str) -> bytes:
    """One ``HPUB`` protocol frame: subject, reply subject, headers and payload."""
    headers = message.block or header_block(message.headers)
    payload = message.payload
    size = len(headers) + len(payload)
    line = f"HPUB {message.subject} {reply} {len(headers)} {size}\r\n".encode()
    return b"".join((line, headers, payload, _CRLF))


#: Sends frames (and their messages, for the fallback) on a connection.
Sender = Callable[[Sequence[bytes], Sequence[tuple[Message, str]]], Awaitable[None]]


def has_private_api(client: Client) -> bool:
    return all(hasattr(client, name) for name in PRIVATE_API)


def sender_for(client: Client) -> Sender:
    """How to put frames on ``client``'s connection: one buffer append for them all, or
    ``nc.publish`` per message when this nats-py lacks the private API."""
    if has_private_api(client):

        async def write(frames: Sequence[bytes], _messages: Sequence[tuple[Message, str]]) -> None:
            await write_frames(client, frames)

        return write
    logger.warning(
        "this nats-py has no %s: publishing through nc.publish (slower)",
        "/".join(PRIVATE_API),
        extra={"action": "frames_unavailable"},
    )

    async def publish(_frames: Sequence[bytes], messages: Sequence[tuple[Message, str]]) -> None:
        for message, reply in messages:
            await client.publish(
                message.subject, message.payload, reply=reply, headers=message.headers
            )

    return publish


async def write_frames(client: Client, frames: Sequence[bytes]) -> None:
    """Append ``frames`` to ``client``'s outgoing buffer as one write and kick its flusher,
    with the checks ``nc.publish`` makes first (closed; disconnected with a full buffer)."""
    if client.is_closed:
        raise ConnectionClosedError
    data = b"".join(frames)
    private: Any = client
    if not client.is_connected and (
        private._max_pending_size <= 0
        or len(data) + client.pending_data_size > private._max_pending_size
    ):
        raise OutboundBufferLimitError
    client.stats["out_msgs"] += len(frames)
    client.stats["out_bytes"] += len(data)
    await private._send_command(data)
    queue = private._flush_queue
    if queue is not None and queue.empty():
        await private._flush_pending()
