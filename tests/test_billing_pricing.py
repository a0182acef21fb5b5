"""Price arithmetic: exact decimals, one rounding (half-to-even, 9 places), limits."""

from __future__ import annotations

from decimal import Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.pricing import (
    CHARGE_QUANTUM,
    MAX_CHARGE,
    MAX_UNIT_PRICE,
    MAX_USAGE_AMOUNT,
    PricingError,
    compute_charge,
    parse_unit_price,
    quantize_usage,
)

D = Decimal


def _exact(amount: Decimal, price: Decimal) -> Decimal:
    with localcontext(prec=100):
        return amount * price


@pytest.mark.parametrize(
    ("amount", "price", "charge"),
    [
        # The documented examples.
        ("1", "0.000000075", "0.000000075"),
        ("1000000", "0.000000075", "0.075000000"),
        ("3", "0.0000000005", "0.000000002"),  # 0.0000000015: a tie, rounds to even (2)
        ("1", "0.0000000005", "0.000000000"),  # 0.0000000005: a tie, rounds to even (0)
        ("7", "0.0000000005", "0.000000004"),  # 0.0000000035: tie -> 4 (even)
        ("5", "0.0000000001", "0.000000000"),  # 0.0000000005: tie -> 0 (even)
        ("15", "0.0000000001", "0.000000002"),  # 0.0000000015: tie -> 2 (even)
        ("1", "0.0000000006", "0.000000001"),  # above a tie: up
        ("1", "0.0000000004", "0.000000000"),  # below a tie: down
        # Where binary floats go wrong: 0.1 + 0.2 style amounts and prices.
        ("0.3", "0.1", "0.030000000"),
        ("3", "0.1", "0.300000000"),
        ("0.1", "3", "0.300000000"),
        # Tiny per-token prices times large counts, no digit lost.
        ("123456789", "0.000000123456", "15.241481343"),  # exact: 15.241481342784
        ("1000000000000", "0.000000000001", "1.000000000"),
        ("999999999999", "0.000001", "999999.999999000"),
        ("0", "30", "0E-9"),
    ],
)
def test_charge_is_exact_then_rounded_once_half_even(amount: str, price: str, charge: str) -> None:
    result = compute_charge(D(amount), D(price))
    assert result == D(charge)
    assert result.as_tuple().exponent == -9, "charges always carry exactly 9 places"


def test_no_float_would_have_given_the_same_answers() -> None:
    # The point of the exercise: a float pipeline gets these wrong.
    assert 0.1 + 0.2 != 0.3
    assert compute_charge(D("0.1") + D("0.2"), D("1")) == D("0.3")
    as_float = 123456789 * 0.000000123456
    assert D(repr(as_float)) != D("15.241481342784")  # the float lost the last digit
    assert _exact(D(123456789), D("0.000000123456")) == D("15.241481342784")


def test_the_callers_decimal_context_does_not_leak_in() -> None:
    # compute_charge uses its own wide context: a caller's narrow or rounding-up context
    # (or a trap on Inexact) must not change a charge.
    amount, price = D("123456789.123456"), D("0.000000123456")
    expected = _exact(amount, price).quantize(CHARGE_QUANTUM, rounding="ROUND_HALF_EVEN")
    with localcontext(prec=5, rounding="ROUND_UP"):
        assert compute_charge(amount, price) == expected
    assert expected == D("15.241481358")


def test_a_charge_over_the_limit_is_refused_not_wrapped() -> None:
    with pytest.raises(PricingError, match="over the"):
        compute_charge(MAX_USAGE_AMOUNT, MAX_UNIT_PRICE)
    assert compute_charge(MAX_CHARGE, D(1)) == MAX_CHARGE


@pytest.mark.parametrize(
    ("raw", "amount"),
    [
        ("812", "812.000000"),
        ("0.30000000000000004", "0.300000"),  # Python's repr of 0.1 + 0.2
        ("0.0000005", "0.000000"),  # tie -> even (0)
        ("0.0000015", "0.000002"),  # tie -> even (2)
        ("4.0", "4.000000"),
        ("1E+3", "1000.000000"),
    ],
)
def test_usage_amount_is_kept_to_six_places_half_even(raw: str, amount: str) -> None:
    assert quantize_usage(D(raw)) == D(amount)
    assert quantize_usage(D(raw)).as_tuple().exponent == -6


@pytest.mark.parametrize(
    ("text", "stored"),
    [("0.00003", "0.000030000000"), ("0.000000000001", "1E-12"), ("30", "30"), (" 2.5 ", "2.5")],
)
def test_parse_unit_price_accepts_up_to_twelve_places(text: str, stored: str) -> None:
    assert parse_unit_price(text) == D(stored)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.0000000000001", "more than 12 decimal places"),
        ("-1", "negative"),
        ("NaN", "not finite"),
        ("Infinity", "not finite"),
        ("abc", "not a decimal"),
        ("", "not a decimal"),
        ("1000001", "over the"),
    ],
)
def test_parse_unit_price_refuses_what_it_would_have_to_round(text: str, message: str) -> None:
    with pytest.raises(PricingError, match=message):
        parse_unit_price(text)


@given(
    amount=st.decimals(min_value=0, max_value=10**6, places=6, allow_nan=False),
    price=st.decimals(min_value=0, max_value=1000, places=12, allow_nan=False),
)
def test_charge_is_within_half_a_unit_of_the_exact_product(amount: Decimal, price: Decimal) -> None:
    charge = compute_charge(amount, price)
    # The exact product, by integer arithmetic on the scaled values.
    exact_scaled = int(amount.scaleb(6)) * int(price.scaleb(12))  # units of 1e-18
    charge_scaled = int(charge.scaleb(18))
    error = abs(charge_scaled - exact_scaled)
    assert error <= 5 * 10**8  # half of 1e-9 in 1e-18 units
    if error == 5 * 10**8:  # a tie went to the even neighbour
        assert int(charge.scaleb(9)) % 2 == 0
