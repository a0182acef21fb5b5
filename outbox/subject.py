"""Encoding of ``product_id`` into exactly one NATS subject token.

Billing subscribes to ``billing.usage.recorded.*``: a model name such as ``gpt-4.1``
interpolated raw would become two tokens and never reach that subscriber, and names may
hold characters NATS forbids in a token (space, tab, ``*``, ``>``).

The encoding, which is part of the wire contract:

* ``A-Z a-z 0-9 - _`` map to themselves, so plain names are unchanged
  (``gpt-4`` -> ``gpt-4``);
* every other byte of the name's UTF-8 form becomes ``%`` followed by two upper-case
  hex digits, as in URL percent-encoding (``gpt-4.1`` -> ``gpt-4%2E1``,
  ``meta-llama/Llama-3.1-8B Instruct`` -> ``meta-llama%2FLlama-3%2E1-8B%20Instruct``).

``%`` is legal in a NATS token and is itself encoded (``%25``), so the mapping is
injective: two different product ids never share a token. Decoding is
``urllib.parse.unquote``; billing never needs it because the exact ``product_id``
travels in the payload.
"""

from __future__ import annotations

import re
from functools import lru_cache

SUBJECT_PREFIX = "billing.usage.recorded"
#: The longest token we produce; keeps the whole subject well under NATS's 256 characters.
MAX_TOKEN_LENGTH = 200

_PLAIN = re.compile(r"[A-Za-z0-9_-]+")
_SAFE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _encode_token(product_id: str) -> str:
    if _PLAIN.fullmatch(product_id):
        return product_id
    return "".join(
        chr(byte) if byte in _SAFE_BYTES else f"%{byte:02X}" for byte in product_id.encode("utf-8")
    )


# A service bills a handful of model names over and over: encode each once. Names longer
# than a token may be are never cached (they are refused anyway), so the cache stays small.
_cached_token = lru_cache(maxsize=4096)(_encode_token)


def product_token(product_id: str) -> str:
    """Return the single subject token for ``product_id`` (which must be non-empty)."""
    if len(product_id) > MAX_TOKEN_LENGTH:
        return _encode_token(product_id)
    return _cached_token(product_id)


def usage_subject(product_id: str) -> str:
    """The subject a usage event for ``product_id`` is published on."""
    return f"{SUBJECT_PREFIX}.{product_token(product_id)}"
