"""What the fault scenarios' writers record: the products and their prices, the mix of
calls (:func:`usage_call`) and what each call means to bill (:func:`written_record`)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from bench.faults.audit import Written

#: Unit prices loaded into billing, per (product_id, unit_type). Product names with a dot
#: or a slash exercise the subject encoding; one product has no price at all.
PRICES: dict[tuple[str, str], str] = {
    ("gpt-4", "token"): "0.00003",
    ("gpt-4.1", "token"): "0.000008",
    ("meta-llama/Llama-3.1-8B", "token"): "0.0000002",
    ("text-embedding-3-small", "token"): "0.00000002",
    ("flux-schnell", "request"): "0.003",
}
#: Billing keeps its events as unpriced (recorded, not charged); the audit expects that.
UNPRICED_PRODUCT = "experimental-omni-1"


# -- writers ------------------------------------------------------------------------------

PRODUCTS: tuple[tuple[str, str], ...] = (
    ("gpt-4", "openai"),
    ("gpt-4.1", "openai"),
    ("meta-llama/Llama-3.1-8B", "meta"),
    ("text-embedding-3-small", "openai"),
    ("flux-schnell", "bfl"),
    (UNPRICED_PRODUCT, "lab"),
)


def usage_call(rng: random.Random, writer: int, index: int) -> dict[str, Any]:
    """The arguments of one recorded call: a mix of products, users and amounts."""
    product, provider = rng.choice(PRODUCTS)
    call: dict[str, Any] = {
        "user_id": f"user-{rng.randrange(40):02d}",
        "product_id": product,
        "provider": provider,
        "operation": "chat",
        "service_type": "text",
        "metadata": {"writer": writer, "n": index},
    }
    if product == "flux-schnell":
        call.update(service_type="image", operation="generate")
        call["input_units"] = rng.choice((1, 2, 4, 0.5, 2.25))
    elif product == "text-embedding-3-small":
        call.update(operation="embed", input_tokens=rng.randrange(1, 8000))
    else:
        call.update(input_tokens=rng.randrange(0, 4000), output_tokens=rng.randrange(1, 2000))
    return call


def written_record(event_id: str, call: Mapping[str, Any]) -> Written:
    """What the writer meant to record, computed from its own arguments (not the payload)."""
    tokens = [call[k] for k in ("input_tokens", "output_tokens") if k in call]
    if tokens:
        amount, unit = str(sum(tokens)), "token"
    else:
        amount, unit = repr(float(call["input_units"])), "request"
    return Written(event_id, call["user_id"], call["product_id"], unit, amount)
