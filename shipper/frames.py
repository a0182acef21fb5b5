"""NATS ``HPUB`` frames built here, for :mod:`usage_runtime.wire` to write to nats-py's
outgoing buffer in one append per window (why, and what private API that uses: there).

Subjects and headers need no validation here: the write API and
:func:`shipper.rows.to_message` checked them when the row was stored and claimed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from nats.aio.client import Client

from shipper.publisher import Message
from usage_runtime.wire import PRIVATE_API, has_private_api, write_frames

logger = logging.getLogger("shipper")

_HEADER_LINE = b"NATS/1.0\r\n"
_CRLF = b"\r\n"


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
