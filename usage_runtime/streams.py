"""Find, adopt or create the JetStream stream a process works on: one rule for both.

The shipper (which publishes) and billing (which reads) must agree on which stream holds
the usage events, or one of them works on a stream the other never sees. The rule:

1. the stream named in the configuration, when it exists and captures the wanted
   subjects; when it exists and does **not**, :class:`StreamRefused` (an operator
   configured it; rewriting it, or silently using it, would be wrong);
2. else another stream that captures them (an operator's naming), found by subject;
3. else, when a configuration to create is given, that stream; a creation refused
   because another process created a stream meanwhile takes whichever won, and one
   refused for good (overlapping subjects, replicas the deployment cannot hold) is a
   :class:`StreamRefused` carrying JetStream's error.

Which subjects count is the caller's (``outbox.stream_spec`` has the patterns and the
subject arithmetic): this module imports nothing else of the project.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import StreamConfig, StreamInfo
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

logger = logging.getLogger("usage_runtime.streams")

#: Whether a stream's subjects capture the ones wanted.
Captures = Callable[[list[str] | None], bool]


class StreamRefused(Exception):
    """The stream cannot be used or created, for a reason only an operator can fix.

    ``api_error`` is JetStream's refusal of a creation, when that was the reason.
    """

    def __init__(self, message: str, *, api_error: APIError | None = None) -> None:
        super().__init__(message)
        self.api_error = api_error


@dataclass(frozen=True, slots=True)
class FoundStream:
    info: StreamInfo
    #: True when this call created it.
    created: bool

    @property
    def name(self) -> str:
        return self.info.config.name or ""


async def find_stream(
    js: JetStreamContext, name: str, *, subject: str, captures: Captures, wanted: str
) -> StreamInfo | None:
    """Rules 1 and 2: the stream to adopt, or None when there is none yet.

    ``subject``: a subject the stream must hold (to find one by subject); ``captures``:
    whether a stream's subjects will do; ``wanted``: the subjects, as said in errors.
    """
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        info = None
    if info is not None:
        if not captures(info.config.subjects):
            raise StreamRefused(
                f"stream {name!r} exists with subjects {info.config.subjects}, which do not "
                f"capture {wanted!r}; add the subject or name another stream"
            )
        return info
    try:
        other = await js.find_stream_name_by_subject(subject)
    except NotFoundError:
        return None
    if not other:
        return None
    info = await js.stream_info(other)
    if not captures(info.config.subjects):
        return None
    logger.info("adopting existing stream %s", other, extra={"action": "stream_adopted"})
    return info


async def find_or_create_stream(
    js: JetStreamContext,
    name: str,
    *,
    subject: str,
    captures: Captures,
    wanted: str,
    create: StreamConfig | None,
) -> FoundStream | None:
    """Rules 1 to 3: the stream, or None when there is none and ``create`` is None.

    Transient JetStream errors (no leader yet, a timeout) propagate for a retry.
    """
    info = await find_stream(js, name, subject=subject, captures=captures, wanted=wanted)
    if info is not None:
        return FoundStream(info, created=False)
    if create is None:
        return None
    try:
        info = await js.add_stream(create)
    except APIError as exc:
        if isinstance(exc, ServiceUnavailableError) or exc.code not in (400, 500):
            raise  # no JetStream leader yet, or the like: worth a retry
        # Another process (a shipper, a billing consumer) may have created it meanwhile.
        info = await find_stream(js, name, subject=subject, captures=captures, wanted=wanted)
        if info is not None:
            return FoundStream(info, created=False)
        raise StreamRefused(
            f"cannot create stream {create.name!r} on {create.subjects}: "
            f"{exc.description} (JetStream {exc.code}/{exc.err_code})",
            api_error=exc,
        ) from exc
    logger.info(
        "created stream %s on %s",
        create.name,
        ", ".join(create.subjects or []),
        extra={"action": "stream_created"},
    )
    return FoundStream(info, created=True)
