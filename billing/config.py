"""Consumer settings: one frozen, keyword-only dataclass, from flags and environment.

Every setting has a default here and an option in :mod:`billing.options`, with its
environment variable (:data:`ENV`); the command line overrides both.
:meth:`BillingConfig.validate` reports the first problem as a one-line
:class:`BillingConfigError`, at start-up, never an hour later.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from billing.engines import DEFAULT_DATABASE_URL
from billing.errors import BillingConfigError
from billing.options import ENV, SETTINGS
from outbox.stream_spec import DEFAULT_STREAM, DEFAULT_STREAM_MAX_AGE, USAGE_SUBJECTS
from usage_runtime.connection_checks import nats_settings_problem
from usage_runtime.options import BadValue, parse_value
from usage_runtime.redact import redact_url

DEFAULT_NATS_URL: Final = "nats://127.0.0.1:4222"
#: What the consumer reads: every usage subject, also multi-token ones if a stream has them.
FILTER_SUBJECT: Final = USAGE_SUBJECTS

_NAME = re.compile(r"[A-Za-z0-9_-]+")


#: More batches at once than this only queue on the database's locks.
MAX_PARALLEL_BATCHES: Final = 16


@dataclass(frozen=True, kw_only=True)
class BillingConfig:
    #: Where billing's tables live (SQLite file by default, or PostgreSQL by URL).
    database_url: str = DEFAULT_DATABASE_URL
    #: One NATS URL, or several separated by commas (a cluster).
    nats_url: str = DEFAULT_NATS_URL
    #: NATS credentials: a user and password, a token, an NKey seed file, or a ``.creds``
    #: file (user JWT and seed). Secrets are kept out of ``repr`` and the start-up log.
    nats_user: str | None = None
    nats_password: str | None = field(default=None, repr=False)
    nats_token: str | None = field(default=None, repr=False)
    nats_nkey_seed_file: str | None = None
    nats_creds_file: str | None = None
    #: TLS: verify the server with this CA file (else the system's CAs); a client
    #: certificate and key for servers that ask for one.
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    #: JetStream stream holding the usage events (created when missing and allowed, as
    #: the platform's billing service expects it: see ``outbox.stream_spec``).
    stream: str = DEFAULT_STREAM
    #: ``max_age`` in seconds of a stream billing creates (never a count limit).
    stream_max_age: float = DEFAULT_STREAM_MAX_AGE
    #: Durable consumer name: the server remembers what this name has acknowledged.
    durable: str = "billing"
    create_stream: bool = True
    #: Messages fetched per request, and applied per database transaction.
    batch_size: int = 256
    #: Delivered but unacknowledged messages the server allows at once.
    max_ack_pending: int = 2048
    #: Batches applied at once, each in its own transaction (0: by database, see
    #: :attr:`batches_in_flight`).
    parallel_batches: int = 0
    #: Seconds before the server redelivers an unacknowledged message.
    ack_wait: float = 30.0
    #: Seconds one fetch waits for messages; also the longest a stop waits for a fetch.
    fetch_timeout: float = 1.0
    #: Deliveries a message that cannot be stored gets before it is parked as rejected.
    max_deliveries: int = 5
    #: Seconds before a message that could not be stored is redelivered.
    retry_delay: float = 2.0
    connect_timeout: float = 2.0
    #: Run billing's migrations before consuming.
    migrate: bool = True
    #: ``text`` for people, ``json`` for log pipelines.
    log_format: str = "text"
    log_level: str = "INFO"
    #: Serve ``/metrics``, ``/healthz`` and ``/readyz`` on this port (None: off; 0: any free).
    metrics_port: int | None = None
    #: Loopback by default: exposing the port beyond the host is a deliberate choice.
    metrics_host: str = "127.0.0.1"

    @property
    def batches_in_flight(self) -> int:
        """``parallel_batches``, or by database when 0: 3 on PostgreSQL, where the server
        works on one batch while this process prepares the next (measured 13-15k -> 17-19k
        events/s), and 1 on SQLite, which has one writer at a time."""
        if self.parallel_batches:
            return self.parallel_batches
        return 3 if make_url(self.database_url).get_backend_name() == "postgresql" else 1

    @property
    def nats_servers(self) -> list[str]:
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

    def redacted(self) -> dict[str, object]:
        """The settings with secrets and passwords in URLs hidden, for a start-up log line."""
        shown: dict[str, object] = {
            f.name: "***" if not f.repr and getattr(self, f.name) else getattr(self, f.name)
            for f in fields(self)
        }
        shown["database_url"] = make_url(self.database_url).render_as_string(hide_password=True)
        shown["nats_url"] = ",".join(redact_url(url) for url in self.nats_servers)
        return shown

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.redacted().items())
        return f"BillingConfig({settings})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> BillingConfig:
        """Defaults, then environment variables, then ``overrides`` (not validated)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV[f.name])
            if raw is not None and raw.strip() != "":
                values[f.name] = parse_setting(f.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def validate(self) -> BillingConfig:
        """Raise :class:`BillingConfigError` naming the setting and the problem; return self."""
        try:
            url = make_url(self.database_url)
        except ArgumentError as exc:
            raise BillingConfigError(
                f"database url {redact_url(self.database_url)!r} is not a valid URL"
            ) from exc
        backend = url.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise BillingConfigError(
                f"database url: {backend} is not supported (sqlite, postgresql)"
            )
        if backend == "sqlite" and url.database not in (None, "", ":memory:"):
            parent = Path(url.database).resolve().parent
            if not parent.is_dir() or not os.access(parent, os.W_OK):
                raise BillingConfigError(
                    f"database url: directory {parent} does not exist or is read-only"
                )
        if not self.nats_servers:
            raise BillingConfigError("nats url: none given")
        if problem := nats_settings_problem(self):
            raise BillingConfigError(problem)
        if self.nats_password and not self.nats_user:
            raise BillingConfigError("nats password given without a nats user")
        for name in ("stream", "durable"):
            value = getattr(self, name)
            if not _NAME.fullmatch(value):
                raise BillingConfigError(f"{name} {value!r}: use letters, digits, '-' and '_' only")
        for name in ("batch_size", "max_ack_pending", "max_deliveries"):
            if getattr(self, name) < 1:
                raise BillingConfigError(f"{name.replace('_', ' ')} must be at least 1")
        for name in (
            "ack_wait",
            "fetch_timeout",
            "retry_delay",
            "connect_timeout",
            "stream_max_age",
        ):
            if not getattr(self, name) > 0:
                raise BillingConfigError(f"{name.replace('_', ' ')} must be positive")
        if not 0 <= self.parallel_batches <= MAX_PARALLEL_BATCHES:
            raise BillingConfigError(
                f"parallel batches {self.parallel_batches}: 0 (by database) to "
                f"{MAX_PARALLEL_BATCHES}"
            )
        if self.max_ack_pending < self.batch_size:
            raise BillingConfigError(
                f"max ack pending ({self.max_ack_pending}) must be at least the batch size "
                f"({self.batch_size}), or a fetch can never be filled"
            )
        if self.ack_wait <= self.fetch_timeout:
            raise BillingConfigError(
                "ack wait must be longer than the fetch timeout, or messages are redelivered "
                "while their batch is still being applied"
            )
        if self.log_format not in ("text", "json"):
            raise BillingConfigError(f"log format {self.log_format!r}: text or json")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise BillingConfigError(f"log level {self.log_level!r}: DEBUG, INFO, WARNING, ERROR")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise BillingConfigError(f"metrics port {self.metrics_port} is out of range")
        return self


def parse_setting(name: str, raw: str) -> Any:
    """Convert an environment value to the setting's type; one-line error if it cannot."""
    try:
        return parse_value(SETTINGS[name], raw, f"${ENV[name]}")
    except BadValue as exc:
        raise BillingConfigError(str(exc)) from exc
