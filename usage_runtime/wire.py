"""Protocol frames written straight to nats-py's outgoing buffer, for both processes.

``nc.publish`` costs about 2.7 us a message in nats-py 2.16 (subject validation, the
header block rebuilt from a dict, one buffer append and a flusher kick per call), and
``Msg.ack()`` about 1.6 us (a ``publish`` of the reply subject); frames built by the
caller and handed over in one append cost 0.15-0.65 us a message (measured:
/work/shared/notes/jetstream-batch.md, and billing's acks). The shipper publishes its
windows this way (:mod:`shipper.frames`), billing acknowledges its batches this way
(:mod:`billing.settle`).

This leans on nats-py's private buffer (``Client._send_command`` / ``_flush_pending`` /
``_flush_queue``), the same calls its own ``publish`` ends with: the one place in the
project that does. pyproject.toml pins nats-py below the next minor version, and
``tests/test_shipper_fastingest.py`` fails loudly when these names or their behaviour
change. Callers check :func:`has_private_api` first and fall back to nats-py's public
calls when it says no.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nats.aio.client import Client
from nats.errors import ConnectionClosedError, OutboundBufferLimitError

#: The private members of nats-py's ``Client`` that :func:`write_frames` uses.
PRIVATE_API = ("_send_command", "_flush_pending", "_flush_queue", "_max_pending_size")


def has_private_api(client: Client) -> bool:
    return all(hasattr(client, name) for name in PRIVATE_API)


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
