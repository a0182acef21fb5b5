"""The checks both daemons make of their NATS settings before connecting: each returns
the one line to show (and the caller raises its own config error), or None.

A URL may carry credentials: what is shown of it is always :func:`redact_url`'s form.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
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


def nats_settings_problem(
    servers: Iterable[str],
    files: Iterable[tuple[str, str | None]],
    cert_file: str | None,
    key_file: str | None,
) -> str | None:
    """The first problem of the above, in the order a user would fix them."""
    return (
        next(filter(None, map(nats_url_problem, servers)), None)
        or unreadable_file_problem(files)
        or tls_pair_problem(cert_file, key_file)
    )
