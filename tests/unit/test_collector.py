"""The daemon's collector settings (shipper/collector.py), restored after each test."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from shipper.collector import YOUNG_THRESHOLD, tune_collector


@pytest.fixture
def collector_restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("collector_restored")
def test_tune_collector_freezes_start_up_and_widens_the_young_generation() -> None:
    older = gc.get_threshold()[1:]
    tune_collector()
    assert gc.get_freeze_count() > 0, "start-up objects are still walked by every collection"
    assert gc.get_threshold() == (YOUNG_THRESHOLD, *older)


@pytest.mark.usefixtures("collector_restored")
def test_a_drain_sized_burst_of_objects_starts_no_collection() -> None:
    tune_collector()
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.callbacks.append(count)
    try:
        # One batch's worth, as a drain holds it: ~7 objects a row for 1,000 rows.
        batch = [(i, f"row-{i}", [i], {"id": i}) for i in range(1_000)]
        del batch
    finally:
        gc.callbacks.remove(count)
    assert collections == []
