"""Charges: exact decimal arithmetic and one documented rounding rule.

The rule
--------

* ``usage_amount`` is kept to **6 decimal places** (:data:`USAGE_PLACES`). Token counts are
  whole numbers and are exact; a fractional unit count with more places (``0.1 + 0.2``
  serialised by Python as ``0.30000000000000004``) is rounded half-to-even once, when it is
  decoded: ``0.300000``.
* A unit price has at most **12 decimal places** (:data:`PRICE_PLACES`): enough for
  per-token prices such as 0.000000075 (7.5 cents per million tokens). A price with more
  places is refused when it is set, not rounded.
* ``charge = usage_amount x unit_price``, multiplied exactly (no intermediate rounding:
  the product of a 6-place and a 12-place number has at most 18 places and is computed in
  a context wide enough to hold every digit), then rounded **once** to **9 decimal places**
  (:data:`CHARGE_PLACES`) with **ROUND_HALF_EVEN** (banker's rounding: a tie goes to the
  even last digit, so rounding errors do not drift one way over many events).
* The wallet debit is exactly ``-charge``; the wallet balance is the exact sum of its
  debits. No further rounding happens anywhere.

So 1 token at 0.000000075 costs 0.000000075 (exact), 3 tokens at 0.0000000005 cost
0.0000000015 -> 0.000000002 (tie, to even), and 1,000,000 tokens at 0.000000075 cost
exactly 0.075.

Limits (checked before anything is stored, so no column can overflow on SQLite, where
exact decimals are scaled 64-bit integers; see :mod:`billing.types`):
a usage amount at most :data:`MAX_USAGE_AMOUNT`, a unit price at most
:data:`MAX_UNIT_PRICE`, a charge at most :data:`MAX_CHARGE`.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from typing import Final

USAGE_PLACES: Final = 6
PRICE_PLACES: Final = 12
CHARGE_PLACES: Final = 9
ROUNDING: Final = ROUND_HALF_EVEN

USAGE_QUANTUM: Final = Decimal(1).scaleb(-USAGE_PLACES)
PRICE_QUANTUM: Final = Decimal(1).scaleb(-PRICE_PLACES)
CHARGE_QUANTUM: Final = Decimal(1).scaleb(-CHARGE_PLACES)

#: One event billing more than a trillion units is a producer bug, not usage.
MAX_USAGE_AMOUNT: Final = Decimal(10) ** 12
MAX_UNIT_PRICE: Final = Decimal(10) ** 6
#: One event charging more than this is refused (kept in ``rejected_events``).
MAX_CHARGE: Final = Decimal(10) ** 9

#: Every operation here is exact in this context: 80 digits hold any product of the
#: bounded operands above; Inexact is not trapped only because quantize() rounds on purpose.
_CONTEXT: Final = Context(prec=80, rounding=ROUNDING, traps=[InvalidOperation])


class PricingError(ValueError):
    """A price or a charge is out of range or malformed."""


def quantize_usage(amount: Decimal) -> Decimal:
    """The billable usage amount: ``amount`` rounded half-to-even to 6 places."""
    return amount.quantize(USAGE_QUANTUM, rounding=ROUNDING, context=_CONTEXT)


def compute_charge(usage_amount: Decimal, unit_price: Decimal) -> Decimal:
    """``usage_amount x unit_price``, exact, then rounded once half-to-even to 9 places.

    Raises :class:`PricingError` when the charge is over :data:`MAX_CHARGE`.
    """
    exact = _CONTEXT.multiply(usage_amount, unit_price)
    charge = exact.quantize(CHARGE_QUANTUM, rounding=ROUNDING, context=_CONTEXT)
    if charge > MAX_CHARGE:
        raise PricingError(f"charge {charge:f} is over the {MAX_CHARGE} limit for one event")
    return charge


def parse_unit_price(text: str | Decimal) -> Decimal:
    """A unit price from user input: a finite, non-negative decimal with at most 12 places.

    Too many places is an error, not a silent rounding: a price is a contract with the
    customer and is stored exactly as agreed.
    """
    try:
        price = Decimal(text.strip()) if isinstance(text, str) else Decimal(text)
    except InvalidOperation as exc:
        raise PricingError(f"price {text!r} is not a decimal number") from exc
    if not price.is_finite():
        raise PricingError(f"price {text!r} is not finite")
    if price < 0:
        raise PricingError(f"price {text!r} is negative")
    if price > MAX_UNIT_PRICE:
        raise PricingError(f"price {text!r} is over the {MAX_UNIT_PRICE} limit")
    exact = price.quantize(PRICE_QUANTUM, context=_CONTEXT)
    if exact != price:
        raise PricingError(f"price {text!r} has more than {PRICE_PLACES} decimal places")
    return exact
