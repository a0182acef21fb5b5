"""Making sure a JetStream stream captures the usage subjects, without overruling operators.

An existing stream is adopted when it captures the shipper's subjects
(``billing.usage.recorded.*``); when the one named in the configuration exists but does
not, the shipper refuses to start and says what is wrong, rather than rewriting a stream an
operator configured. When none exists the shipper creates the stream the platform's real
billing expects (``outbox.stream_spec``: ``billing-stream`` on ``billing.>``, file storage,
a ``max_age`` and no count limit), so billing can start before or after it.

An adopted stream is checked for two ways of losing events without an error, each said
once in a warning and kept in :attr:`StreamChoice.risks` (status and metrics show them):
limits that discard the oldest messages whether or not billing has read them, and
subjects that capture only one token (other producers publish on two).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamInfo

from outbox.stream_spec import (
    DEFAULT_STREAM_SUBJECTS,
    OWN_SUBJECTS,
    USAGE_SUBJECTS,
    captures,
    subject_covers,
    subjects_collide,
)
from shipper.config import ShipperConfig
from shipper.errors import StreamMismatch
from usage_runtime.streams import StreamRefused, find_or_create_stream

__all__ = [
    "STREAM_RISK_NOTE",
    "StreamChoice",
    "discard_risks",
    "ensure_stream",
    "subject_covers",
    "subjects_collide",
]

logger = logging.getLogger("shipper.stream")

#: The outbox note (``outbox.leases.put_note``) that carries :attr:`StreamChoice.risk_text`.
STREAM_RISK_NOTE = "stream_risk"


@dataclass(frozen=True, slots=True)
class StreamChoice:
    """The stream the shipper publishes to, and what about it can lose events."""

    name: str
    created: bool
    #: Limit names (``max_msgs``, ``max_bytes``, ``max_msgs_per_subject``, ``max_age``)
    #: that can discard unread messages, and ``subjects`` when multi-token usage subjects
    #: are not captured. Empty when nothing was found.
    risks: tuple[str, ...] = ()
    #: One sentence for people: what the risks are and what to do; "" when none.
    risk_text: str = ""


def _unlimited(value: int | float | None) -> bool:
    return value is None or value <= 0


def discard_risks(config: StreamConfig, *, min_age: float) -> dict[str, str]:
    """The limits of ``config`` that can delete messages nobody has read yet, each with
    its value as text. Only ``limits`` retention with ``discard old`` deletes: with
    ``discard new`` a full stream refuses the publish and the event stays in the outbox.
    A ``max_age`` counts when it is shorter than ``min_age`` (the retention the shipper
    itself would give a stream)."""
    retention = config.retention or RetentionPolicy.LIMITS
    discard = config.discard or DiscardPolicy.OLD
    if retention != RetentionPolicy.LIMITS or discard != DiscardPolicy.OLD:
        return {}
    found: dict[str, str] = {}
    for limit in ("max_msgs", "max_bytes", "max_msgs_per_subject"):
        value = getattr(config, limit)
        if not _unlimited(value):
            found[limit] = str(value)
    if not _unlimited(config.max_age) and (config.max_age or 0) < min_age:
        found["max_age"] = f"{config.max_age:.0f}s"
    return found


def _assess(info: StreamInfo, config: ShipperConfig, *, created: bool) -> StreamChoice:
    limits = discard_risks(info.config, min_age=config.stream_max_age)
    problems: list[str] = []
    if limits:
        shown = ", ".join(f"{k}={v}" for k, v in limits.items())
        problems.append(
            f"its limits ({shown}, discard old) delete the oldest messages when reached, "
            "read by billing or not; raise or remove them, or set discard new"
        )
    risks = list(limits)
    if not captures(info.config.subjects, USAGE_SUBJECTS):
        risks.append("subjects")
        problems.append(
            f"its subjects {info.config.subjects} do not capture {USAGE_SUBJECTS!r}: usage "
            "that other producers publish on two-token subjects is not stored; add it"
        )
    text = f"stream {info.config.name!r} can lose usage events: " + "; ".join(problems)
    return StreamChoice(
        name=info.config.name or "",
        created=created,
        risks=tuple(risks),
        risk_text=text if problems else "",
    )


def _own_subjects(subjects: list[str] | None) -> bool:
    return captures(subjects, OWN_SUBJECTS)


async def ensure_stream(js: JetStreamContext, config: ShipperConfig) -> StreamChoice:
    """Return the stream that captures the usage subjects, creating it if allowed
    (:func:`usage_runtime.streams.find_or_create_stream`, billing's rule too).
    Raise :class:`StreamMismatch` with the reason when it cannot be used."""
    create = StreamConfig(
        name=config.stream,
        subjects=list(DEFAULT_STREAM_SUBJECTS),
        storage=StorageType.FILE,
        num_replicas=config.replicas,
        duplicate_window=config.duplicate_window,
        max_age=config.stream_max_age,
        allow_batched=True,  # fast-ingest batches: about twice the drain rate
    )
    try:
        found = await find_or_create_stream(
            js,
            config.stream,
            subject=OWN_SUBJECTS,
            captures=_own_subjects,
            wanted=USAGE_SUBJECTS,
            create=create if config.create_stream else None,
        )
    except StreamRefused as exc:
        if exc.api_error is None:
            raise StreamMismatch(f"{exc} with --stream") from exc
        # A refusal of the request itself (subjects overlapping an operator's stream,
        # replicas the deployment cannot hold...): retrying cannot fix it, an operator can.
        raise StreamMismatch(f"{exc}{await _overlapping(js)}") from exc
    if found is None:
        raise StreamMismatch(
            f"no stream captures {USAGE_SUBJECTS!r} and --no-create-stream was given"
        )
    if found.created:
        return _assess(found.info, config, created=True)
    return _adopted(found.info, config)


def _adopted(info: StreamInfo, config: ShipperConfig) -> StreamChoice:
    _warn_on_dedupe_window(info, config)
    choice = _assess(info, config, created=False)
    if choice.risk_text:
        logger.warning(
            "%s",
            choice.risk_text,
            extra={"action": "stream_discard_risk", "risks": list(choice.risks)},
        )
    return choice


async def _overlapping(js: JetStreamContext) -> str:
    """``"; stream X holds subjects [...]"`` for streams that take part of the subjects."""
    try:
        streams = await js.streams_info()
    except Exception:  # only an explanation is lost
        return ""
    clashes = [
        f"stream {info.config.name!r} holds {info.config.subjects}"
        for info in streams
        if any(
            subjects_collide(p, s)
            for p in info.config.subjects or []
            for s in DEFAULT_STREAM_SUBJECTS
        )
    ]
    return "; " + ", ".join(clashes) if clashes else ""


def _warn_on_dedupe_window(info: StreamInfo, config: ShipperConfig) -> None:
    window = info.config.duplicate_window or 0
    if window < config.duplicate_window:
        logger.warning(
            "stream %s de-duplicates over %.0f s, less than the %.0f s asked for; "
            "retries after that rely on billing's own de-duplication",
            info.config.name,
            window,
            config.duplicate_window,
            extra={"action": "stream_dedupe_window_short"},
        )
