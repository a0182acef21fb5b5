"""Making sure a JetStream stream captures the usage subjects, without overruling operators.

An existing stream is adopted when it captures ``billing.usage.recorded.*``; when the one
named in the configuration exists but does not, the shipper refuses to start and says
what is wrong, rather than rewriting a stream an operator configured.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig, StreamInfo
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from shipper.config import STREAM_SUBJECT, ShipperConfig
from shipper.errors import StreamMismatch

logger = logging.getLogger("shipper.stream")


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


def _captures(info: StreamInfo) -> bool:
    return any(subject_covers(p, STREAM_SUBJECT) for p in info.config.subjects or [])


async def ensure_stream(js: JetStreamContext, config: ShipperConfig) -> str:
    """Return the name of the stream that captures the usage subjects, creating it if
    allowed. Raise :class:`StreamMismatch` with the reason when it cannot be used."""
    try:
        info = await js.stream_info(config.stream)
    except NotFoundError:
        info = None
    if info is not None:
        if not _captures(info):
            raise StreamMismatch(
                f"stream {config.stream!r} exists with subjects {info.config.subjects}, "
                f"which do not capture {STREAM_SUBJECT!r}; add the subject or name another "
                "stream with --stream"
            )
        _warn_on_dedupe_window(info, config)
        return config.stream
    try:
        # Another stream may already capture the subjects (an operator's naming).
        other = await js.find_stream_name_by_subject(STREAM_SUBJECT)
    except NotFoundError:
        other = None
    if other:
        info = await js.stream_info(other)
        if _captures(info):
            logger.info("adopting existing stream %s", other, extra={"action": "stream_adopted"})
            _warn_on_dedupe_window(info, config)
            return other
    if not config.create_stream:
        raise StreamMismatch(
            f"no stream captures {STREAM_SUBJECT!r} and --no-create-stream was given"
        )
    try:
        await js.add_stream(
            StreamConfig(
                name=config.stream,
                subjects=[STREAM_SUBJECT],
                storage=StorageType.FILE,
                num_replicas=config.replicas,
                duplicate_window=config.duplicate_window,
            )
        )
    except APIError as exc:
        if isinstance(exc, ServiceUnavailableError) or exc.code not in (400, 500):
            raise  # no JetStream leader yet, or the like: worth a retry
        # A refusal of the request itself (subjects overlapping an operator's stream,
        # replicas the deployment cannot hold...): retrying cannot fix it, an operator can.
        raise StreamMismatch(
            f"cannot create stream {config.stream!r} on {STREAM_SUBJECT!r}: "
            f"{exc.description} (JetStream {exc.code}/{exc.err_code})"
            f"{await _overlapping(js)}"
        ) from exc
    logger.info(
        "created stream %s on %s",
        config.stream,
        STREAM_SUBJECT,
        extra={"action": "stream_created"},
    )
    return config.stream


async def _overlapping(js: JetStreamContext) -> str:
    """``"; stream X holds subjects [...]"`` for streams that take part of the subjects."""
    try:
        streams = await js.streams_info()
    except Exception:  # only an explanation is lost
        return ""
    clashes = [
        f"stream {info.config.name!r} holds {info.config.subjects}"
        for info in streams
        if any(subjects_collide(p, STREAM_SUBJECT) for p in info.config.subjects or [])
    ]
    return "; " + ", ".join(clashes) if clashes else ""


def subjects_collide(a: str, b: str) -> bool:
    """Whether some subject matches both patterns ``a`` and ``b``."""
    left, right = a.split("."), b.split(".")
    for x, y in zip(left, right, strict=False):
        if ">" in (x, y):
            return True
        if x != y and "*" not in (x, y):
            return False
    return len(left) == len(right)


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
