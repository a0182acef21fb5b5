"""Reading a component's ``/metrics``, ``/healthz`` and ``/readyz`` from a test.

The servers run on the test's own event loop (the component runs in-process), so a
blocking client would deadlock; this one speaks just enough HTTP/1.1 over asyncio.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

#: The log line a component writes once its metrics port is up.
SERVING = re.compile(r"serving /metrics, /healthz and /readyz on (http://[\d.]+:\d+)")


def served_url(log: Path) -> str | None:
    """The metrics base URL a component's log names (its first), or None yet."""
    match = SERVING.search(log.read_text()) if log.exists() else None
    return match.group(1) if match else None


async def http_get(url: str, path: str, *, within: float = 5.0) -> tuple[int, str]:
    """GET ``path`` on ``url`` (``http://host:port``); status and body."""
    parts = urlsplit(url)
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
            await writer.drain()
            response = await reader.read()  # the server closes after one answer
        finally:
            writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body.decode()


class Scrape:
    """One parsed ``/metrics`` answer."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                self.samples[key] = sample.value

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when it is not (yet) exposed."""
        found = self.get(name, **labels)
        return 0.0 if found is None else found

    def __repr__(self) -> str:  # shown when a wait fails
        return self.text


async def scrape(url: str) -> Scrape:
    status, body = await http_get(url, "/metrics")
    assert status == 200, body
    return Scrape(body)


async def ready(url: str) -> tuple[int, str]:
    return await http_get(url, "/readyz")


def json_log_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a ``--log-format json`` log; fails on a line that is not JSON."""
    lines = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                lines.append(json.loads(line))
            except ValueError as exc:
                raise AssertionError(f"not a JSON log line: {line!r}") from exc
    return lines
