"""Event ids and timestamps: UUIDv7 (RFC 9562) and ISO 8601 UTC, one or a batch at a time.

The batch forms exist because the write API's batch path runs them thousands of times a
second: one ``os.urandom`` call for a whole batch instead of one per id (a system call
each), and the date-time text formatted once per second.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Final

_stamp_cache: tuple[int, str] = (0, "1970-01-01T00:00:00")


def iso_timestamp(now_ns: int) -> str:
    """``now_ns`` (Unix nanoseconds) as ISO 8601 UTC with microseconds and an explicit
    offset, e.g. ``2025-01-09T12:00:00.000000+00:00`` (what ``datetime.isoformat`` gives,
    truncated to the microsecond). The date-time part is formatted once per second."""
    global _stamp_cache
    seconds, nanos = divmod(now_ns, 1_000_000_000)
    cached_seconds, prefix = _stamp_cache
    if seconds != cached_seconds:
        prefix = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _stamp_cache = (seconds, prefix)
    return f"{prefix}.{nanos // 1000:06d}+00:00"


def _uuid7_tick(now_ns: int) -> int:
    """48 bits of Unix milliseconds, then the sub-millisecond fraction in 12 bits (RFC 9562
    method 3: ``rand_a`` as extra clock precision, steps of 1/4096 ms, ~244 ns)."""
    millis, rest = divmod(now_ns, 1_000_000)
    return (millis & 0xFFFF_FFFF_FFFF) << 12 | rest * 4096 // 1_000_000


_VARIANT_MASK: Final = 0x3FFF_FFFF_FFFF_FFFF
_VARIANT: Final = 0x8000_0000_0000_0000  # the RFC 9562 variant, bits 10xx


def new_event_id(now_ns: int) -> str:
    """A UUIDv7 for the instant ``now_ns`` (Unix nanoseconds): the millisecond and its
    fraction (so ids from one process sort by write time to ~250 ns), then 62 random
    bits. The id therefore carries the same instant as the event's ``timestamp``."""
    tick = _uuid7_tick(now_ns)
    head = ((tick >> 12) << 16 | 0x7000 | tick & 0xFFF).to_bytes(8)
    tail = int.from_bytes(os.urandom(8)) & _VARIANT_MASK | _VARIANT
    text = (head + tail.to_bytes(8)).hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _variant_byte(byte: int) -> int:
    return byte & 0x3F | 0x80


#: Maps a random byte to one whose top two bits are the RFC 9562 variant (10xx).
_VARIANT_TABLE: Final = bytes(_variant_byte(byte) for byte in range(256))


def new_event_ids(now_ns: int, count: int) -> list[str]:
    """``count`` UUIDv7s for one batch written at the instant ``now_ns``.

    Id ``i`` carries the clock value of ``now_ns`` plus ``i`` steps of the 12-bit fraction
    (RFC 9562 section 6.2: a clock value incremented within one batch), so the ids are
    distinct from each other even before their 62 random bits, and sort in the batch's
    order; they stay within ``count`` x 244 ns of the batch's instant. The random bits of
    the whole batch come from one ``os.urandom`` call, made hex in one go; the time part
    is formatted once per millisecond.
    """
    if count <= 0:
        return []
    randomness = bytearray(os.urandom(8 * count))
    randomness[0::8] = randomness[0::8].translate(_VARIANT_TABLE)
    random_hex = randomness.hex()
    tick = _uuid7_tick(now_ns)
    millis, fraction = tick >> 12, tick & 0xFFF
    ids: list[str] = []
    append = ids.append
    at = 0
    while len(ids) < count:
        head = f"{millis & 0xFFFF_FFFF_FFFF:012x}"
        prefix = f"{head[:8]}-{head[8:]}-7"
        for step in range(fraction, min(4096, fraction + count - len(ids))):
            append(f"{prefix}{step:03x}-{random_hex[at : at + 4]}-{random_hex[at + 4 : at + 16]}")
            at += 16
        millis, fraction = millis + 1, 0
    return ids
