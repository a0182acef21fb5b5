"""Shipper processes for the benchmarks: ``python -m shipper run``, its log, its memory."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from bench.stream import TIMEOUT

ROOT = Path(__file__).resolve().parents[1]


READY_LINE = "shipping to stream"


perf = time.perf_counter


def log_file(path: Path) -> IO[bytes]:
    return path.open("wb")


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
) -> asyncio.subprocess.Process:
    command = [
        sys.executable,
        "-m",
        "shipper",
        "run",
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
    handle = log_file(log)
    try:
        return await asyncio.create_subprocess_exec(
            *command, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=handle, stderr=handle
        )
    finally:
        handle.close()


async def wait_ready(process: asyncio.subprocess.Process, log: Path) -> None:
    deadline = perf() + TIMEOUT
    while not log_has(log, READY_LINE):
        if process.returncode is not None or perf() > deadline:
            raise RuntimeError(f"the shipper did not get ready; its log {log}:\n{tail(log)}")
        await asyncio.sleep(0.01)


async def stop_process(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
    return process.returncode if process.returncode is not None else -1
