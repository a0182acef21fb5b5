"""Credentials out of URLs before they reach a log line or an error message.

Works on the text alone, so a URL too broken to parse is still shown safely. NATS URLs
(``nats://user:pw@h``, ``nats://token@h``) lose their whole user part; a database URL
keeps its user name and loses its password (``postgresql://billing:***@db/billing``).
"""

from __future__ import annotations

_NATS_SCHEMES = ("nats", "tls", "ws")


def redact_url(url: str) -> str:
    """``url`` without its secret."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return "***" if "@" in url else url  # no scheme: whatever precedes "@" may be one
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return url
    if scheme.startswith(_NATS_SCHEMES):
        hidden = "***"  # user:password, or a token: all of it
    else:
        user, colon, _password = userinfo.partition(":")
        hidden = f"{user}:***" if colon else user
    return f"{scheme}://{hidden}@{host}"
