"""Shipper settings: one frozen dataclass, built from flags and environment, checked once.

Every problem is reported at start-up as a one-line :class:`ConfigError`, never as a
traceback an hour later. Secrets are kept out of ``repr`` so a logged config is safe.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from outbox.drivers import missing_driver
from outbox.errors import ConfigError
from outbox.service import DEFAULT_PATH, resolve_url
from outbox.stream_spec import DEFAULT_STREAM, DEFAULT_STREAM_MAX_AGE
from usage_runtime.connection_checks import nats_settings_problem
from usage_runtime.redact import redact_url

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
#: Free pages given back per transaction by a run until SIGTERM (``vacuum_pages`` unset):
#: about 0.5 ms of the write lock each (docs/retention.md).
DEFAULT_VACUUM_PAGES = 64


@dataclass(frozen=True, kw_only=True)
class ShipperConfig:
    # where the events are
    database_url: str = resolve_url(DEFAULT_PATH)
    # where they go
    nats_servers: tuple[str, ...] = (DEFAULT_NATS_URL,)
    nats_user: str | None = None
    nats_password: str | None = field(default=None, repr=False)
    nats_token: str | None = field(default=None, repr=False)
    nats_nkey_seed_file: str | None = None
    nats_creds_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    connect_timeout: float = 2.0
    max_reconnect_attempts: int = 10
    # discovery
    consul_host: str | None = None
    consul_port: int = 8500
    consul_scheme: str = "http"
    consul_token: str | None = field(default=None, repr=False)
    consul_ca_file: str | None = None  # verify an https Consul with this CA (else the system's)
    consul_service: str = "nats"
    consul_timeout: float = 2.0
    # the stream
    stream: str = DEFAULT_STREAM
    create_stream: bool = True
    duplicate_window: float = 600.0
    # max_age of a created stream, and the shortest max_age of an adopted one that is not
    # warned about (a shorter one can delete events billing has not read yet)
    stream_max_age: float = DEFAULT_STREAM_MAX_AGE
    replicas: int = 1
    # the loop
    batch_size: int = 1000
    max_in_flight: int = 4000
    # fast-ingest batches where nats-server (2.14+) and the stream allow them
    batch_publish: bool = True
    poll_interval: float = 0.01  # a read with no write lock: cheap enough to run often
    publish_timeout: float = 5.0
    max_attempts: int = 8
    retry_base: float = 1.0
    retry_cap: float = 300.0
    backoff_cap: float = 5.0
    parse_payloads: bool = False  # full JSON check of every payload, not just its envelope
    lease_ttl: float = 15.0
    shutdown_timeout: float = 10.0
    exit_when_idle: bool = False
    # with exit_when_idle: give up (exit 1) when the outbox is not drained this many s in
    burst_deadline: float | None = None
    # retention: acknowledged rows kept this long as "sent" (0 = deleted at once)
    keep_sent_hours: float = 0.0
    cleanup_batch: int = 500  # sent rows deleted per transaction
    # pages given back per transaction (0 = never shrink the file); None (not given): a run
    # until SIGTERM shrinks in DEFAULT_VACUUM_PAGES steps while idle, a burst run
    # (exit_when_idle) not at all: its exit would wait for the whole shrink (see
    # vacuum_step)
    vacuum_pages: int | None = None
    vacuum_min_free_pages: int = 1024  # start shrinking once this many pages are free
    log_format: str = "text"
    log_level: str = "INFO"
    # observability: /metrics, /healthz and /readyz on this port (None = off, 0 = any free)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"  # loopback: exposing the port is a deliberate choice

    def validate(self) -> ShipperConfig:
        """Raise :class:`ConfigError` naming the setting and the problem; return self."""
        try:
            url = make_url(self.database_url)
        except ArgumentError as exc:
            shown = redact_url(self.database_url)
            raise ConfigError(f"database url {shown!r} is not a valid URL") from exc
        missing = missing_driver(url)
        if missing is not None:
            raise ConfigError(missing)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            parent = Path(url.database).resolve().parent
            if not parent.is_dir() or not os.access(parent, os.W_OK):
                raise ConfigError(
                    f"database url: directory {parent} does not exist or is read-only"
                )
            if Path(url.database).is_dir():
                raise ConfigError(f"database url: {url.database} is a directory, not a file")
            if Path(url.database).exists() and not os.access(url.database, os.R_OK | os.W_OK):
                raise ConfigError(f"database url: {url.database} is not readable and writable")
        if not self.nats_servers:
            raise ConfigError("nats servers: none given")
        if problem := nats_settings_problem(self, more_files=("consul_ca_file",)):
            raise ConfigError(problem)
        if self.nats_password and not self.nats_user:
            raise ConfigError("nats password given without a nats user")
        positive = (
            "batch_size",
            "max_in_flight",
            "poll_interval",
            "publish_timeout",
            "max_attempts",
            "retry_base",
            "retry_cap",
            "backoff_cap",
            "lease_ttl",
            "shutdown_timeout",
            "connect_timeout",
            "consul_timeout",
            "replicas",
            "stream_max_age",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(
                    f"{name.replace('_', ' ')} must be positive, got {getattr(self, name)}"
                )
        for name in ("keep_sent_hours", "vacuum_pages", "vacuum_min_free_pages"):
            if (getattr(self, name) or 0) < 0:
                raise ConfigError(f"{name.replace('_', ' ')} must not be negative")
        if self.cleanup_batch <= 0:
            raise ConfigError(f"cleanup batch must be positive, got {self.cleanup_batch}")
        if self.duplicate_window < 0.1:
            raise ConfigError("duplicate window must be at least 0.1 s")
        if self.duplicate_window > self.stream_max_age:
            raise ConfigError("duplicate window must not be longer than the stream max age")
        if not 1 <= self.consul_port <= 65535:
            raise ConfigError(f"consul port {self.consul_port} is out of range")
        if self.consul_scheme not in ("http", "https"):
            raise ConfigError(f"consul scheme must be http or https, got {self.consul_scheme!r}")
        if self.consul_ca_file and self.consul_scheme != "https":
            raise ConfigError("consul ca: a CA file is only used with --consul-scheme https")
        if not isinstance(logging.getLevelName(self.log_level.upper()), int):
            raise ConfigError(
                f"log level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {self.log_level!r}"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log format must be text or json, got {self.log_format!r}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics port {self.metrics_port} is out of range")
        if self.burst_deadline is not None:
            if not self.burst_deadline > 0:
                raise ConfigError(f"burst deadline must be positive, got {self.burst_deadline}")
            if not self.exit_when_idle:
                raise ConfigError("burst deadline: only a burst run (--exit-when-idle) has one")
        if self.lease_ttl <= self.backoff_cap:
            raise ConfigError("lease ttl must be longer than the backoff cap")
        return self

    @property
    def vacuum_step(self) -> int:
        """Free pages given back per transaction; 0: the file is not shrunk by this run.

        Given (flag or environment), it is what was given. Not given, a burst run does not
        shrink the file: the shrink of a drained backlog costs about as long as the drain
        (bench/burst.py), and its free pages are reused by the next events anyway. A run
        until SIGTERM does it while idle, in small steps."""
        if self.vacuum_pages is not None:
            return self.vacuum_pages
        return 0 if self.exit_when_idle else DEFAULT_VACUUM_PAGES

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.redacted().items())
        return f"ShipperConfig({settings})"

    def redacted(self) -> dict[str, object]:
        """The settings with every secret replaced, for a start-up log line."""
        shown: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if not f.repr and value:
                value = "***"
            elif f.name == "database_url":
                value = redact_url(value)
            elif f.name == "nats_servers":
                value = tuple(redact_url(server) for server in value)
            shown[f.name] = value
        return shown
