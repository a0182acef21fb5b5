"""The shipper benchmark's table: every figure beside its ceiling, goal and verdict."""

from __future__ import annotations

from dataclasses import dataclass

from bench.ceilings import Rate
from bench.drain import Drain, cpu_reading
from bench.latency import Latency
from bench.memory import Memory
from bench.report import Row, mib, per_s, verdict
from bench.stream import DEFAULTS
from shipper.fastingest import DEFAULT_FLOW
from shipper.pipeline import SETTLE_CHUNK


def checked(rate: Rate) -> str:
    return "" if rate.clean else f" [lost {rate.lost}, errors {rate.errors}]"


@dataclass
class Ceilings:
    publish_async: Rate
    lean: Rate
    fast: Rate  # fast-ingest at the shipper's flow
    flows: dict[int, Rate]  # fast-ingest at other flows, for choosing the default
    outbox: Rate  # the outbox's read + delete alone, no publishing (bench.outbox_floor)
    repeat: int = 1  # runs of each (and of both drains); the best is kept (bench.shipper)

    @property
    def one_process(self) -> float:
        """Events/s of the outbox's part and fast-ingest publishing in series: what one
        interpreter doing both reaches at best (their costs per row add up)."""
        return 1 / (1 / self.outbox.per_s + 1 / self.fast.per_s)


def table(
    window: int,
    ceilings: Ceilings,
    sequential: Rate,
    legacy: Rate,
    drain: Drain,
    fallback: Drain,
    latency: Latency,
    memory: Memory,
) -> list[Row]:
    ceiling_async, ceiling_lean, fast = ceilings.publish_async, ceilings.lean, ceilings.fast
    shipped = drain.per_s
    drain_note = "" if drain.clean else " [INCOMPLETE]"
    lean_ratio = shipped / ceiling_lean.per_s
    sweep = ", ".join(
        f"flow {flow}: {per_s(rate.per_s)}{checked(rate)}" for flow, rate in ceilings.flows.items()
    )
    best = f", best of {ceilings.repeat}" if ceilings.repeat > 1 else ""
    rows = [
        Row(
            f"js.publish_async, window {window:,} ({ceiling_async.events:,}, no DB)",
            per_s(ceiling_async.per_s),
            f"ceiling{best}{checked(ceiling_async)}",
            "-",
            "info",
        ),
        Row(
            f"lean nc.publish + 1 ack sub, window {window:,} ({ceiling_lean.events:,})",
            per_s(ceiling_lean.per_s),
            f"ceiling{best}{checked(ceiling_lean)}",
            "-",
            "info",
        ),
        Row(
            f"fast-ingest, pre-built frames, batches of {DEFAULTS.batch_size:,}, "
            f"flow {DEFAULT_FLOW} ({fast.events:,})",
            per_s(fast.per_s),
            f"ceiling{best}{checked(fast)}; {sweep}" if sweep else f"ceiling{best}{checked(fast)}",
            "-",
            "info",
        ),
        Row(
            f"outbox read + delete alone (raw sqlite3, reads of {DEFAULTS.batch_size:,}, "
            f"deletes of {SETTLE_CHUNK}, no publishing)",
            per_s(ceilings.outbox.per_s),
            f"floor{best}{checked(ceilings.outbox)}; with fast-ingest in series (one interpreter): "
            f"{per_s(ceilings.one_process)} = {ceilings.one_process / fast.per_s:.2f}x "
            f"fast-ingest, {ceilings.one_process / ceiling_lean.per_s:.2f}x lean",
            "-",
            "info",
        ),
        Row(
            f"sequential await js.publish ({sequential.events:,})",
            per_s(sequential.per_s),
            f"reference{checked(sequential)}",
            "-",
            "info",
        ),
        Row(
            f"legacy: connect+publish+close per event ({legacy.events:,})",
            per_s(legacy.per_s),
            f"reference{checked(legacy)}",
            "-",
            "info",
        ),
        Row(
            f"shipper draining {drain.events:,}-row outbox (run->last PubAck)",
            per_s(shipped) + drain_note,
            f"drain only {per_s(drain.drain_per_s)}{best}, "
            f"first store after {drain.startup:.2f} s, "
            + (
                f"run() returned after {drain.returned:.2f} s"
                if drain.returned is not None
                else f"run() busy {drain.grace:.0f} s past the last PubAck: stopped"
            ),
            ">= 30,000/s",
            verdict(shipped >= 30_000 and drain.clean),
        ),
        Row(
            "shipper / publish_async ceiling",
            f"{shipped / ceiling_async.per_s:.2f}x",
            f"drain only {drain.drain_per_s / ceiling_async.per_s:.2f}x",
            ">= 0.90x",
            verdict(shipped / ceiling_async.per_s >= 0.9),
        ),
        Row(
            "shipper / lean per-message-ack ceiling",
            f"{lean_ratio:.2f}x",
            f"drain only {drain.drain_per_s / ceiling_lean.per_s:.2f}x"
            + ("; stretch 1.5x reached" if lean_ratio >= 1.5 else "; stretch 1.5x not"),
            ">= 1.00x",
            verdict(lean_ratio >= 1.0),
        ),
        Row(
            "shipper / fast-ingest ceiling",
            f"{shipped / fast.per_s:.2f}x",
            f"drain only {drain.drain_per_s / fast.per_s:.2f}x; "
            f"{shipped / ceilings.one_process:.2f}x the one-process bound",
            ">= 0.70x",
            verdict(shipped / fast.per_s >= 0.7),
        ),
        Row(
            f"fallback: shipper per message ({fallback.events:,} rows, no allow_batched)",
            per_s(fallback.per_s) + ("" if fallback.clean else " [INCOMPLETE]"),
            f"{fallback.per_s / ceiling_async.per_s:.2f}x publish_async; drain only "
            f"{per_s(fallback.drain_per_s)}{best}; {fallback.per_s / ceiling_lean.per_s:.2f}x lean",
            ">= 0.90x publish_async",
            verdict(fallback.per_s / ceiling_async.per_s >= 0.9 and fallback.clean),
        ),
        Row(
            "shipper / legacy",
            f"{shipped / legacy.per_s:.1f}x",
            f"drain only {drain.drain_per_s / legacy.per_s:.1f}x",
            ">= 30x",
            verdict(shipped / legacy.per_s >= 30),
        ),
        Row(
            "CPU while the shipper drains (cores busy)",
            drain.cpu.describe("nats-server") if drain.cpu is not None else "-",
            cpu_reading(drain.cpu),
            "-",
            "info",
        ),
        Row(
            f"latency commit->stored at {latency.offered:,.0f}/s ({latency.events:,} events)",
            f"p50 {latency.p50 * 1000:.1f} ms p99 {latency.p99 * 1000:.1f} ms",
            f"max {latency.max * 1000:.0f} ms; write->stored p50 {latency.write_p50 * 1000:.1f}"
            f" p99 {latency.write_p99 * 1000:.1f} ms; writer {per_s(latency.achieved)}"
            f" in {latency.groups:,} commits"
            + (f"; MISSING {latency.missing}" if latency.missing else ""),
            "p50 <= 20 ms, p99 <= 100 ms",
            verdict(latency.p50 <= 0.020 and latency.p99 <= 0.100 and not latency.missing),
        ),
        Row(
            f"shipper RSS draining {memory.backlog:,}-row backlog",
            f"ready {mib(memory.ready_kib)} peak {mib(memory.peak_kib)} end {mib(memory.end_kib)}",
            f"{per_s(memory.drain_per_s)} drain, last PubAck after {memory.seconds:.1f} s, "
            + (
                f"exited {memory.exited_after:.1f} s later"
                if memory.exited_after is not None
                else f"still busy {memory.grace:.0f} s later: SIGTERM"
            )
            + ("" if memory.clean else f" [INCOMPLETE: exit {memory.exit_code}]"),
            "flat, < 150 MB",
            verdict(memory.peak_kib < 150 * 1024 and memory.clean),
        ),
    ]
    return rows
