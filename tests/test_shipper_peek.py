"""``usage-shipper peek``: what reached JetStream, without the ``nats`` CLI, read-only."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import nats

from tests.fixtures.shipper import CliProcesses, run_cli, shipper_env, write_events
from usage_demo.natsserver import NatsServer
from usage_demo.waiting import wait_until


async def _ship(path: Path, count: int, url: str) -> list[str]:
    ids = await write_events(path, count)
    env = shipper_env(USAGE_OUTBOX_URL=str(path), NATS_URL=url)
    shipped = await asyncio.to_thread(run_cli, "run", "--exit-when-idle", env=env, timeout=60)
    assert shipped.returncode == 0, shipped.stderr
    return ids


async def _consumers(url: str) -> int:
    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info("billing-stream")).state.consumer_count)
    finally:
        await nc.close()


async def test_peek_prints_the_last_events_with_subject_headers_and_payload(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    ids = await _ship(tmp_path / "outbox.db", 5, nats_server.url)
    env = shipper_env(NATS_URL=nats_server.url)
    result = await asyncio.to_thread(run_cli, "peek", "--last", "2", env=env)
    assert result.returncode == 0, result.stderr
    blocks = result.stdout.split("\n#")
    assert len(blocks) == 2, result.stdout
    for block, event_id in zip(blocks, ids[-2:], strict=True):
        head, *rest = block.lstrip("#").splitlines()
        assert head.split()[1] == "billing.usage.recorded.gpt-4", head
        assert f"  Nats-Msg-Id: {event_id}" in rest
        assert "  event_type: billing.usage.recorded" in rest
        body = rest[rest.index("  {") :]
        payload = json.loads("\n".join(body))
        assert payload["event_id"] == event_id
    assert await _consumers(nats_server.url) == 0  # read by sequence: no consumer made


async def test_peek_follow_prints_new_events_until_interrupted(
    tmp_path: Path, nats_server: NatsServer, cli_processes: CliProcesses
) -> None:
    path = tmp_path / "outbox.db"
    await _ship(path, 1, nats_server.url)
    out = tmp_path / "peek.out"
    process = cli_processes.start(
        "peek", "--last", "0", "--follow", env=shipper_env(NATS_URL=nats_server.url), log_path=out
    )
    await wait_until(lambda: "no usage events" in out.read_text(), 20, message="peek ready")
    (new,) = await _ship(path, 1, nats_server.url)
    await wait_until(lambda: f"Nats-Msg-Id: {new}" in out.read_text(), 20, message="followed")
    process.send_signal(signal.SIGINT)
    assert process.wait(10) == 0, out.read_text()
    assert "Traceback" not in out.read_text()
