"""The simulated model services and the usage they record.

Two services write into one SQLite file, as two parts of a real deployment would:

* an inference API that keeps its own ``requests`` table and records each call's usage
  with :func:`outbox.record_usage` in the same transaction as its business row;
* a legacy chat service that still calls ``_publish_usage_event`` and got the outbox by
  swapping its base class for :class:`outbox.UsageEventPublisherMixin`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from outbox import UsageEventPublisherMixin

#: Unit prices the demo loads into billing, per (product_id, unit_type).
PRICES: dict[tuple[str, str], str] = {
    ("gpt-4", "token"): "0.00003",
    ("gpt-4.1", "token"): "0.000008",
    ("text-embedding-3-small", "token"): "0.00000002",
    ("meta-llama/Llama-3.1-8B Instruct", "token"): "0.0000002",
    ("flux-schnell", "request"): "0.003",
}
#: A model billing has no price for yet: its events are kept as unpriced, never dropped.
UNPRICED_PRODUCT = "experimental-omni-1"

USERS = (*(f"user-{n:02d}" for n in range(1, 7)), "用户-07")

requests_metadata = sa.MetaData()
requests_table = sa.Table(
    "inference_requests",
    requests_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("event_id", sa.String(36), nullable=False),
)


@dataclass(frozen=True)
class Call:
    """One model call: where it goes and what it used."""

    service: str  # "inference" or "legacy-chat"
    user_id: str
    product_id: str
    provider: str
    operation: str
    service_type: str
    usage: dict[str, Any]

    @property
    def usage_amount(self) -> Decimal:
        tokens = [self.usage[k] for k in ("input_tokens", "output_tokens") if k in self.usage]
        if tokens:
            return Decimal(sum(tokens))
        return Decimal(str(float(self.usage["input_units"])))

    @property
    def unit_type(self) -> str:
        return (
            "token"
            if "input_tokens" in self.usage or "output_tokens" in self.usage
            else ("request")
        )


def calls(count: int, seed: int = 7) -> list[Call]:
    """A reproducible mix: chat, embeddings (input tokens only), per-request images,
    model names with dots, slashes and spaces, several users, and one unpriced model."""
    rng = random.Random(seed)
    made: list[Call] = []
    for n in range(count):
        user = rng.choice(USERS)
        kind = n % 10
        if kind < 3:
            made.append(
                Call(
                    "legacy-chat",
                    user,
                    "gpt-4",
                    "openai",
                    "chat",
                    "text",
                    {"input_tokens": rng.randint(10, 2000), "output_tokens": rng.randint(1, 800)},
                )
            )
        elif kind < 5:
            made.append(
                Call(
                    "inference",
                    user,
                    "gpt-4.1",
                    "openai",
                    "chat",
                    "text",
                    {"input_tokens": rng.randint(10, 4000), "output_tokens": rng.randint(1, 1000)},
                )
            )
        elif kind < 7:
            made.append(
                Call(
                    "inference",
                    user,
                    "text-embedding-3-small",
                    "openai",
                    "embed",
                    "embedding",
                    {"input_tokens": rng.randint(1, 8000)},
                )
            )
        elif kind < 8:
            made.append(
                Call(
                    "inference",
                    user,
                    "meta-llama/Llama-3.1-8B Instruct",
                    "together",
                    "chat",
                    "text",
                    {"input_tokens": rng.randint(10, 3000), "output_tokens": rng.randint(1, 500)},
                )
            )
        elif kind < 9 or n % 50 != 9:
            images = rng.randint(1, 4)
            made.append(
                Call(
                    "inference",
                    user,
                    "flux-schnell",
                    "replicate",
                    "generate",
                    "vision",
                    {"input_units": images, "output_units": images},
                )
            )
        else:
            made.append(
                Call(
                    "inference",
                    user,
                    UNPRICED_PRODUCT,
                    "acme",
                    "chat",
                    "audio",
                    {"input_tokens": rng.randint(1, 100)},
                )
            )
    return made


class LegacyChatService(UsageEventPublisherMixin):
    """An existing service: only its base class changed to get the outbox."""

    def __init__(self, model_name: str, provider_name: str) -> None:
        self.model_name = model_name
        self.provider_name = provider_name


def usage_args(index: int, product_id: str = "gpt-4") -> dict[str, Any]:
    """The write-API keywords of a plain chat event number ``index``, for tests and
    benchmarks that need many events and no story."""
    return {
        "user_id": f"user-{index % 7}",
        "product_id": product_id,
        "provider": "openai",
        "operation": "chat",
        "service_type": "text",
        "input_tokens": index + 1,
        "output_tokens": 2 * index,
    }
