"""The JetStream stream the usage events live in: the defaults both processes share, and
the subject-pattern arithmetic both use to decide whether a stream will do.

The defaults are those of the platform's real billing service (xenoISA/isA_user's
``billing_service``): it creates ``billing-stream`` on ``billing.>`` and binds its durable
consumer to that stream by name, filtered on ``billing.usage.recorded.>``. A shipper that
created any other stream first would make billing's creation fail (JetStream refuses
overlapping subjects) and billing would receive nothing; creating billing's own stream, in
whichever process starts first, works in every start order. ``billing.>`` also gives
billing's own output (``billing.calculated``, ...) a home.

Usage subjects are captured with ``>``, never only ``*``: the platform's other producers
publish on two-token subjects (``billing.usage.recorded.<source>.<resource>``) with core
NATS, and a stream that does not capture them loses them without an error.
"""

from __future__ import annotations

from typing import Final

from outbox.subject import SUBJECT_PREFIX

#: Every usage subject, of one token (this project's) or more (other producers').
USAGE_SUBJECTS: Final = f"{SUBJECT_PREFIX}.>"
#: The subjects this project publishes on (one token under the prefix).
OWN_SUBJECTS: Final = f"{SUBJECT_PREFIX}.*"
DEFAULT_STREAM: Final = "billing-stream"
DEFAULT_STREAM_SUBJECTS: Final = ("billing.>",)
#: A stream created here keeps messages this long (``max_age``) and is never bounded by
#: count: a count limit discards the oldest events during a long billing outage.
DEFAULT_STREAM_MAX_AGE: Final = 30 * 24 * 3600.0
#: Environment variables the shipper and billing read alike.
STREAM_ENV: Final = "USAGE_STREAM"
STREAM_MAX_AGE_ENV: Final = "USAGE_STREAM_MAX_AGE"


def subject_covers(pattern: str, subject: str) -> bool:
    """Whether stream subject ``pattern`` captures every subject matched by ``subject``
    (both may hold ``*`` and ``>`` wildcards)."""
    have, want = pattern.split("."), subject.split(".")
    for i, token in enumerate(have):
        if token == ">":
            return len(want) > i
        if i >= len(want):
            return False
        if token != "*" and token != want[i]:
            return False
        if token == "*" and want[i] == ">":
            return False
    return len(have) == len(want)


def subjects_collide(a: str, b: str) -> bool:
    """Whether some subject matches both patterns ``a`` and ``b``."""
    left, right = a.split("."), b.split(".")
    for x, y in zip(left, right, strict=False):
        if ">" in (x, y):
            return True
        if x != y and "*" not in (x, y):
            return False
    return len(left) == len(right)


def captures(subjects: list[str] | None, wanted: str) -> bool:
    """Whether a stream with ``subjects`` captures every subject ``wanted`` matches."""
    return any(subject_covers(pattern, wanted) for pattern in subjects or [])
