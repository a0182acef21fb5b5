"""Shipper processes for the benchmarks: ``python -m shipper run``, its log, its memory."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path

from bench.stream import TIMEOUT
from usage_demo.processes import CliProcess, module_command

ROOT = Path(__file__).resolve().parents[1]


READY_LINE = "shipping to stream"


perf = time.perf_counter


def log_has(path: Path, text: str) -> bool:
    try:
        return text in path.read_text(errors="replace")
    except FileNotFoundError:
        return False


def tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(FileNotFoundError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def vm_rss_kib(pid: int) -> int | None:
    """The process's resident set size in KiB, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


async def start_shipper(
    database: Path, url: str, log: Path, *, exit_when_idle: bool, extra: Sequence[str] = ()
) -> CliProcess:
    command = [
        *module_command("shipper", "run"),
        "--database-url",
        str(database),
        "--nats-url",
        url,
        "--log-level",
        "INFO",
    ]
    if exit_when_idle:
        command += ["--exit-when-idle", "true"]
    command += extra
    return CliProcess(command, log_path=log, cwd=ROOT, name="the shipper").start(fresh=True)


async def wait_ready(process: CliProcess, log: Path) -> None:
    """Until the shipper logs that it is ready (``ProcessFailed`` if it exits first)."""
    await process.wait_for_line_async(READY_LINE, TIMEOUT, interval=0.01)


async def stop_process(process: CliProcess) -> int:
    """SIGTERM; SIGKILL after 30 s; the exit code."""
    return (await process.stop_async(30)).returncode
