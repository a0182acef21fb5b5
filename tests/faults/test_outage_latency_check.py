"""The outage scenario's p99 check: a machine-wide stall in one second does not fail it,
a shipper that slows the writers in most seconds of the outage does."""

from __future__ import annotations

from bench.faults.nats_outage import _bound, typical_percentile


def _second(start: float, second: int, slow: int, slow_seconds: float) -> list[tuple[float, float]]:
    """300 writes in the second: ``slow`` of them take ``slow_seconds``, the rest 4 ms."""
    return [(start + second + i / 300, slow_seconds if i < slow else 0.004) for i in range(300)]


def test_one_stalled_second_leaves_the_typical_p99_alone() -> None:
    before = [w for s in range(4) for w in _second(0.0, s, 3, 0.030)]
    during = [w for s in range(8) for w in _second(4.0, s, 3, 0.030)]
    during += [(4.5 + i / 1000, 0.950) for i in range(40)]  # every caller held up at once
    b99 = typical_percentile(before, 99, 0.0, 1.0)
    d99 = typical_percentile(during, 99, 4.0, 1.0)
    assert d99 <= _bound(b99)


def test_writers_slowed_in_most_seconds_fail_the_check() -> None:
    before = [w for s in range(4) for w in _second(0.0, s, 3, 0.030)]
    during = [w for s in range(8) for w in _second(4.0, s, 6 if s % 4 else 0, 0.500)]
    b99 = typical_percentile(before, 99, 0.0, 1.0)
    d99 = typical_percentile(during, 99, 4.0, 1.0)
    assert d99 > _bound(b99)
