"""One redactor for both processes: what each kind of URL shows of its credentials."""

from __future__ import annotations

import pytest

from usage_runtime.redact import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://user:s3cret@nats-a:4222", "nats://***@nats-a:4222"),
        ("nats://t0ken@nats-a:4222", "nats://***@nats-a:4222"),
        ("tls://u:p/w@h:4222", "tls://***@h:4222"),  # a "/" in the password: still hidden
        (
            "postgresql+psycopg://billing:pa@ss@db/billing",
            "postgresql+psycopg://billing:***@db/billing",
        ),
        ("postgresql+psycopg://billing@db/billing", "postgresql+psycopg://billing@db/billing"),
        ("sqlite+aiosqlite:///var/lib/outbox.db", "sqlite+aiosqlite:///var/lib/outbox.db"),
        ("user:pw@host:4222", "***"),  # no scheme: what precedes "@" may be a secret
        ("nats://h:4222", "nats://h:4222"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    for secret in ("s3cret", "t0ken", "pa@ss", "p/w", ":pw"):
        if secret in url:
            assert secret not in redact_url(url)
