"""What a fault scenario found (:class:`ScenarioResult`) and the checks the scenarios
share beyond the audit."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from bench.faults.audit import AuditReport
from bench.faults.writer import WriterResult


@dataclass
class ScenarioResult:
    """What a scenario did and found; printed by the tests and by the soak script.

    ``failures`` are the scenario's own checks beyond the audit (errors that reached a
    writer, a latency bound, a fault that did not take effect); ``ok`` needs both clean.
    """

    name: str
    report: AuditReport
    faults: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def check(self, condition: bool, failure: str) -> None:
        if not condition:
            self.failures.append(failure)

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.failures

    def summary(self) -> str:
        lines = [f"== {self.name}: {self.faults} faults injected, {self.seconds:.1f} s"]
        lines += [f"   {note}" for note in self.notes]
        lines += [f"   {line}" for line in self.report.summary().splitlines()]
        lines += [f"   FAILED CHECK: {failure}" for failure in self.failures]
        lines.append(f"   verdict: {'ok' if self.ok else 'FAILED'}")
        return "\n".join(lines)


#: What the shipper logs on connecting, per publish path (shipper.link).
PUBLISH_MODE_LINES = {
    True: "publishing in fast-ingest batches",
    False: "publishing with one PubAck per message",
}


def check_publish_mode(result: ScenarioResult, shipper_log: str, batch_publish: bool) -> None:
    """The scenario ran on the publish path it was meant to (and only on that one)."""
    result.check(
        PUBLISH_MODE_LINES[batch_publish] in shipper_log
        and PUBLISH_MODE_LINES[not batch_publish] not in shipper_log,
        f"the shipper did not publish only as asked (batch_publish={batch_publish})",
    )
    result.notes.append(f"publish path: {PUBLISH_MODE_LINES[batch_publish]}")


def check_writers(result: ScenarioResult, results: Sequence[WriterResult]) -> None:
    """No error of any kind reached a writer."""
    errors = sum(r.errors for r in results)
    first = [e for r in results for e in r.first_errors][:3]
    result.check(errors == 0, f"{errors} errors reached the writers, e.g. {first}")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, inclusive method."""
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


@contextlib.contextmanager
def timed() -> Iterator[Callable[[], float]]:
    started = time.monotonic()
    yield lambda: time.monotonic() - started


def check_clean_stops(result: ScenarioResult, *exit_codes: int | None) -> None:
    """Every process asked to stop (SIGTERM) exited 0."""
    result.check(all(code == 0 for code in exit_codes), "a clean stop did not exit 0")
