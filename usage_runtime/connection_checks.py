"""The checks both daemons make of their NATS settings before connecting: each returns
the one line to show (and the caller raises its own config error), or None.

A URL may carry credentials: what is shown of it is always :func:`redact_url`'s form.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Protocol
from urllib.parse import urlsplit

from usage_runtime.redact import redact_url

NATS_SCHEMES = ("nats", "tls", "ws", "wss")
#: The settings (the same names in both daemons' configs) naming files the process must
#: be able to read before it connects.
NATS_FILE_SETTINGS = (
    "nats_nkey_seed_file",
    "nats_creds_file",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
)


def nats_url_problem(server: str) -> str | None:
    """What is wrong with one NATS server URL, if anything."""
    parts = urlsplit(server)
    shown = redact_url(server)
    if parts.scheme not in NATS_SCHEMES or not parts.hostname:
        return f"nats url {shown!r}: expected nats://host:port"
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        # not the error's text: it quotes the "port", which is a piece of the password
        # when that holds a "/" (urlsplit then cuts the netloc short)
        return f"nats url {shown!r}: bad port"
    return None


def unreadable_file_problem(settings: Iterable[tuple[str, str | None]]) -> str | None:
    """The first ``(setting name, path)`` whose file this process cannot read."""
    for name, path in settings:
        if path is not None and not os.access(path, os.R_OK):
            return f"{name.replace('_', ' ')}: {path} is not a readable file"
    return None


def tls_pair_problem(cert_file: str | None, key_file: str | None) -> str | None:
    if bool(cert_file) != bool(key_file):
        return "tls: a client certificate needs both --tls-cert and --tls-key"
    return None


class NatsSettings(Protocol):
    """What both daemons' configs have: the servers, and the TLS client pair (the file
    settings are read by name, :data:`NATS_FILE_SETTINGS`)."""

    # Read-only (properties), as the frozen dataclass fields of the configs are.
    @property
    def nats_servers(self) -> Sequence[str]: ...
    @property
    def tls_cert_file(self) -> str | None: ...
    @property
    def tls_key_file(self) -> str | None: ...


def nats_settings_problem(config: NatsSettings, *, more_files: Iterable[str] = ()) -> str | None:
    """The first problem of the above in ``config``, in the order a user would fix them;
    ``more_files`` names the config's other settings that name files to read."""
    files = ((name, getattr(config, name)) for name in (*NATS_FILE_SETTINGS, *more_files))
    return (
        next(filter(None, map(nats_url_problem, config.nats_servers)), None)
        or unreadable_file_problem(files)
        or tls_pair_problem(config.tls_cert_file, config.tls_key_file)
    )
