"""Exact decimal columns on every backend: no float ever holds money.

PostgreSQL has an exact ``NUMERIC(p, s)``. SQLite does not: a ``NUMERIC`` column there
converts ``'0.1'`` to the REAL ``0.1`` (a binary float), and ``SUM()`` adds floats. So on
SQLite an :class:`ExactDecimal` is stored as a scaled ``INTEGER`` (value x 10**scale):
SQLite adds integers exactly, ``SUM()`` over them stays an integer (and raises
``integer overflow`` rather than rounding), and the result processor turns the integer
back into a :class:`~decimal.Decimal`, also for ``func.sum(column)``.

What this costs on SQLite: a stored value must fit a signed 64-bit integer after scaling
(at scale 9, about +/-9.2e9), and the raw file shows ``1500000`` for ``0.0015``. A value
with more decimal places than the column's scale is refused, never rounded here: the
rounding rules live in :mod:`billing.pricing`, where they are documented and tested.
"""

from __future__ import annotations

from decimal import Context, Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

# Wide enough for NUMERIC(38, s) plus scaling; the default context keeps only 28 digits.
_CONTEXT = Context(prec=80)


class ExactDecimal(sa.types.TypeDecorator[Decimal]):
    """``NUMERIC(precision, scale)``; a scaled ``BIGINT`` on SQLite. Values are Decimals."""

    impl = sa.Numeric
    cache_ok = True

    def __init__(self, precision: int, scale: int) -> None:
        super().__init__(precision=precision, scale=scale, asdecimal=True)
        self.precision = precision
        self.scale = scale
        self._quantum = Decimal(1).scaleb(-scale)
        self._unit: int = 10**scale

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.BigInteger())
        return dialect.type_descriptor(
            sa.Numeric(precision=self.precision, scale=self.scale, asdecimal=True)
        )

    def _exact(self, value: object) -> Decimal:
        # An int is a whole amount; a float (or a bool) is always a bug.
        if isinstance(value, bool) or not isinstance(value, Decimal | int):
            raise TypeError(f"exact decimal column given {type(value).__name__}: {value!r}")
        value = Decimal(value)
        if not value.is_finite():
            raise ValueError(f"exact decimal column given {value}")
        quantized = value.quantize(self._quantum, context=_CONTEXT)
        if quantized != value:
            raise ValueError(f"{value} has more than {self.scale} decimal places")
        return quantized

    def to_sqlite(self, value: Decimal | None) -> int | None:
        """The scaled integer SQLite stores (:mod:`billing.batch_insert` binds it itself)."""
        if value is None:
            return None
        if type(value) is Decimal and value.is_finite():
            # The one type callers pass, in integers: a finite Decimal is exactly
            # numerator / denominator, the denominator a product of 2s and 5s; it fits the
            # scale when it divides 10**scale. A third of the time of scaleb, int() and a
            # Decimal comparison (this runs several times per billed event).
            numerator, denominator = value.as_integer_ratio()
            factor, remainder = divmod(self._unit, denominator)
            if remainder:
                raise ValueError(f"{value} has more than {self.scale} decimal places")
            return numerator * factor
        return int(self._exact(value).scaleb(self.scale, context=_CONTEXT))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        exact = self._exact(value)
        if dialect.name == "sqlite":
            return int(exact.scaleb(self.scale, context=_CONTEXT))
        return exact

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            if not isinstance(value, int):
                # SQLite turns an integer that overflowed in arithmetic into a REAL.
                raise OverflowError(f"stored scaled integer is not an integer: {value!r}")
            scaled = Decimal(value).scaleb(-self.scale, context=_CONTEXT)
            return scaled.quantize(self._quantum, context=_CONTEXT)
        return Decimal(value).quantize(self._quantum, context=_CONTEXT)

    def __repr__(self) -> str:
        return f"ExactDecimal({self.precision}, {self.scale})"
