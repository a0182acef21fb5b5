"""Soak form of the fault scenarios of issue 5: larger counts, longer outages, repeated.

    .venv/bin/python -m bench.soak --minutes 3          # one round, about 4 minutes
    .venv/bin/python -m bench.soak --minutes 60         # bigger rounds, repeated for an hour
    .venv/bin/python -m bench.soak --only 1,2 --seed 7  # chosen scenarios, reproducible

Runs the scenario functions of ``bench/faults`` that the CI tests in ``tests/faults`` run
(shipper crash loop, NATS outage stopped and SIGKILLed, NATS freeze, billing crash loop,
many writers, and 10: four billing processes on one durable on the local PostgreSQL, one
SIGKILLed at random every few seconds), each ending with the one audit, with sizes scaled
by ``--minutes``: every round is at least the base size (60,000 events and 30 SIGKILLs of
the shipper, a 30 s NATS outage, 50,000 events for scenario 10, ...), growing up to five
times that for long soaks; rounds repeat, with fresh seeds, until the time is used up
(always at least one round). Each scenario prints what it did and what
it found; the end is a table, and the exit code is 1 if anything failed.

Every run uses fresh files in a temporary directory (``--keep DIR`` to keep them).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.faults.billing_scale_out import scenario_billing_scale_out
from bench.faults.crash_loops import scenario_billing_crash_loop, scenario_shipper_crash_loop
from bench.faults.many_writers import scenario_many_writers
from bench.faults.nats_outage import scenario_nats_freeze, scenario_nats_outage
from bench.faults.results import ScenarioResult
from bench.postgres import DEFAULT_POSTGRES, throwaway_postgres

Scenario = Callable[[Path, float, int], ScenarioResult]


def _shipper_crash_loop(root: Path, scale: float, seed: int) -> ScenarioResult:
    return scenario_shipper_crash_loop(
        root,
        events=int(60_000 * scale),
        writers=4,
        kills=int(30 * scale),
        write_seconds=40.0 * scale,
        seed=seed,
    )


def _nats_outage(root: Path, scale: float, seed: int) -> ScenarioResult:
    return scenario_nats_outage(root, outage=30.0 * scale, before=5.0, after=3.0)


def _nats_outage_crash(root: Path, scale: float, seed: int) -> ScenarioResult:
    return scenario_nats_outage(root, outage=30.0 * scale, before=5.0, after=3.0, crash=True)


def _nats_freeze(root: Path, scale: float, seed: int) -> ScenarioResult:
    return scenario_nats_freeze(root, freezes=int(5 * scale), freeze=3.0, seed=seed)


def _billing_crash_loop(root: Path, scale: float, seed: int) -> ScenarioResult:
    return scenario_billing_crash_loop(
        root,
        events=int(30_000 * scale),
        writers=2,
        kills=int(20 * scale),
        write_seconds=20.0 * scale,
        seed=seed,
    )


def _many_writers(root: Path, scale: float, seed: int) -> ScenarioResult:
    return scenario_many_writers(root, writers=8, events=int(2_500 * scale))


def _billing_scale_out(root: Path, scale: float, seed: int) -> ScenarioResult:
    # 4 processes on one durable need PostgreSQL: a throwaway database on the local server.
    with throwaway_postgres(DEFAULT_POSTGRES) as url:
        return scenario_billing_scale_out(
            root,
            postgres_url=url,
            events=int(50_000 * scale),
            writers=4,
            write_seconds=40.0 * scale,
            kills=int(20 * scale),
            replays=int(5_000 * scale),
            seed=seed,
        )


#: Scenario number (as in the issue) -> (label, runner). 2 runs twice: stopped, SIGKILLed.
SCENARIOS: dict[str, list[tuple[str, Scenario]]] = {
    "1": [("1 shipper crash loop", _shipper_crash_loop)],
    "2": [("2 NATS outage", _nats_outage), ("2 NATS outage (SIGKILL)", _nats_outage_crash)],
    "3": [("3 NATS freeze", _nats_freeze)],
    "5": [("5 billing crash loop", _billing_crash_loop)],
    "6": [("6 many writers", _many_writers)],
    "10": [("10 billing scale-out (PG)", _billing_scale_out)],
}


@dataclass
class Tally:
    runs: int = 0
    failed: int = 0
    faults: int = 0
    seconds: float = 0.0
    events: int = 0
    problems: list[str] = field(default_factory=list)


def _run_one(label: str, scenario: Scenario, root: Path, scale: float, seed: int) -> Tally:
    tally = Tally(runs=1)
    started = time.monotonic()
    print(f"\n-- {label}: scale {scale:.2f}, seed {seed}", flush=True)
    try:
        result = scenario(root, scale, seed)
    except Exception as exc:  # a scenario that could not even finish is a finding too
        tally.failed = 1
        tally.problems.append(f"{label}: {type(exc).__name__}: {exc}")
        traceback.print_exc()
    else:
        print(result.summary(), flush=True)
        tally.faults = result.faults
        tally.events = result.report.written
        if not result.ok:
            tally.failed = 1
            tally.problems += [f"{label}: {p}" for p in result.report.problems + result.failures]
    tally.seconds = time.monotonic() - started
    return tally


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="time to soak (default 3)")
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help="scenario numbers, comma-separated"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the first round")
    parser.add_argument("--keep", type=Path, default=None, help="keep the files under DIR")
    args = parser.parse_args(argv)
    chosen = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)}")
    plan = [item for n in chosen for item in SCENARIOS[n]]
    scale = min(5.0, max(1.0, args.minutes / 4))
    seeds = random.Random(args.seed if args.seed is not None else random.randrange(2**32))
    deadline = time.monotonic() + args.minutes * 60
    base = args.keep or Path(tempfile.mkdtemp(prefix="usage-soak-"))
    base.mkdir(parents=True, exist_ok=True)
    print(
        f"soak: {args.minutes:g} min, scenarios {', '.join(label for label, _ in plan)}; "
        f"scale {scale:.2f}; files in {base}"
    )
    tallies: dict[str, Tally] = {label: Tally() for label, _ in plan}
    rounds = 0
    while rounds == 0 or time.monotonic() < deadline:
        rounds += 1
        print(f"\n==== round {rounds}", flush=True)
        for index, (label, scenario) in enumerate(plan):
            root = base / f"round{rounds}-{index}"
            one = _run_one(label, scenario, root, scale, seeds.randrange(2**32))
            tally = tallies[label]
            tally.runs += one.runs
            tally.failed += one.failed
            tally.faults += one.faults
            tally.seconds += one.seconds
            tally.events += one.events
            tally.problems += one.problems
    print(f"\n==== soak done: {rounds} round(s)")
    print(f"{'scenario':<28} {'runs':>5} {'failed':>7} {'faults':>7} {'events':>9} {'seconds':>8}")
    for label, tally in tallies.items():
        print(
            f"{label:<28} {tally.runs:>5} {tally.failed:>7} {tally.faults:>7} "
            f"{tally.events:>9} {tally.seconds:>8.0f}"
        )
    problems = [p for tally in tallies.values() for p in tally.problems]
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("verdict: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
