"""The shipper's /metrics, /healthz and /readyz, scraped over HTTP while events flow.

A real nats-server, a real outbox file, the shipper in-process (and once as the CLI);
every wait is a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from outbox import Outbox
from shipper import Shipper
from shipper.metrics import PrometheusShipperMetrics
from tests.fixtures.shipper import (
    CliProcesses,
    ShipperRunner,
    execute,
    shipper_config,
    shipper_env,
    usage_args,
    write_events,
)
from tests.metrics_http import Scrape, http_get, json_log_lines, ready, scrape
from usage_demo.natsserver import NatsServer
from usage_demo.waiting import wait_until
from usage_runtime.health import HealthServer

NEW = {"outcome": "new"}
DUPLICATE = {"outcome": "duplicate"}


async def _serving(server: HealthServer | None) -> str:
    assert server is not None, "metrics_port was set: the shipper serves"
    await wait_until(lambda: server.port != 0, message="the metrics server is listening")
    return server.url


async def test_numbers_move_as_events_flow_and_readyz_follows_nats(
    outbox_path: Path, nats_server: NatsServer, run_shipper: ShipperRunner
) -> None:
    shipper, _task = run_shipper.start(
        shipper_config(
            outbox_path,
            nats_server.url,
            exit_when_idle=False,
            metrics_port=0,
            publish_timeout=1.0,
        )
    )
    url = await _serving(shipper.metrics.server)
    assert await http_get(url, "/healthz") == (200, "ok\n")
    assert (await http_get(url, "/nowhere"))[0] == 404
    await wait_until(lambda: _status(url, 200), message="ready once connected")

    # Events flow: pending drains to 0, every one published as new, one lag each.
    await write_events(outbox_path, 300)
    last = await _wait_scrape(
        url,
        lambda s: (
            s.value("usage_shipper_events_published_total", **NEW) == 300
            and s.get("usage_shipper_outbox_pending") == 0
        ),
        "300 published and none pending",
    )
    assert last.value("usage_shipper_lag_seconds_count") == 300
    assert last.value("usage_shipper_lag_seconds_sum") > 0
    assert last.value("usage_shipper_batch_publish_seconds_count") >= 2  # batches of 200
    assert last.value("usage_shipper_events_published_total", **DUPLICATE) == 0
    assert last.value("usage_shipper_nats_connections_total") == 1
    assert last.get("usage_shipper_outbox_oldest_pending_age_seconds") == 0
    assert last.get("usage_shipper_outbox_dead") == 0

    # NATS goes away: not ready, and what is written waits, visibly older every scrape.
    nats_server.stop()
    _status_code, body = await _wait_status(url, 503)
    assert "NATS" in body, body
    assert (await http_get(url, "/healthz"))[0] == 200, "alive while NATS is down"
    await write_events(outbox_path, 50)
    down = await _wait_scrape(
        url,
        lambda s: (
            s.get("usage_shipper_outbox_pending") == 50
            and s.value("usage_shipper_outbox_oldest_pending_age_seconds") > 0
        ),
        "50 pending with an age",
    )
    assert down.value("usage_shipper_lag_seconds_count") == 300, "nothing acked meanwhile"

    # Back: ready again, the backlog drains, and every event has exactly one lag.
    nats_server.start()
    await _wait_status(url, 200)
    done = await _wait_scrape(
        url,
        lambda s: (
            s.get("usage_shipper_outbox_pending") == 0
            and s.value("usage_shipper_events_published_total", **NEW)
            + s.value("usage_shipper_events_published_total", **DUPLICATE)
            == 350
        ),
        "the 50 shipped after the outage",
    )
    # A publish buffered by nats-py during the outage may be stored on reconnect and its
    # row published again: a duplicate, still one acknowledgement per event.
    assert done.value("usage_shipper_lag_seconds_count") == 350
    assert done.value("usage_shipper_outbox_oldest_pending_age_seconds") == 0
    reconnected = done.value("usage_shipper_nats_reconnects_total") + done.value(
        "usage_shipper_nats_connections_total"
    )
    assert reconnected >= 2, done


async def test_dead_rows_are_counted_by_reason_kind_and_in_the_gauge(
    outbox_path: Path, nats_server: NatsServer, run_shipper: ShipperRunner
) -> None:
    await write_events(outbox_path, 20)
    execute(outbox_path, "UPDATE usage_outbox SET headers = 'not json' WHERE id = 7")
    shipper, _task = run_shipper.start(
        shipper_config(outbox_path, nats_server.url, exit_when_idle=False, metrics_port=0)
    )
    url = await _serving(shipper.metrics.server)
    last = await _wait_scrape(
        url,
        lambda s: (
            s.get("usage_shipper_outbox_pending") == 0 and s.get("usage_shipper_outbox_dead") == 1
        ),
        "19 shipped, 1 dead",
    )
    assert last.value("usage_shipper_events_published_total", **NEW) == 19
    assert last.value("usage_shipper_publish_errors_total", kind="refused") == 1
    assert last.value("usage_shipper_dead_lettered_total") == 1
    for kind in ("unreachable", "retry", "rejected", "connection"):
        assert last.get("usage_shipper_publish_errors_total", kind=kind) == 0


async def test_a_metrics_port_in_use_fails_at_start_up(
    outbox_path: Path, nats_server: NatsServer
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        shipper = Shipper(shipper_config(outbox_path, nats_server.url, metrics_port=port))
        with pytest.raises(OSError):
            await asyncio.wait_for(shipper.run(), 10)
    assert shipper.stats.connections == 0, "it failed before touching NATS"


async def test_two_shippers_in_one_process_have_their_own_registries(tmp_path: Path) -> None:
    first, second = PrometheusShipperMetrics(), PrometheusShipperMetrics()
    first.dead_lettered(3)
    assert first.registry is not second.registry
    assert first.registry.get_sample_value("usage_shipper_dead_lettered_total") == 3
    assert second.registry.get_sample_value("usage_shipper_dead_lettered_total") == 0


async def test_cli_serves_metrics_and_logs_json_lines_without_secrets_or_payloads(
    outbox_path: Path, nats_server: NatsServer, cli_processes: CliProcesses, tmp_path: Path
) -> None:
    secret, marker = "s3cret-Pa55word", "payload-marker-7f3a"
    async with Outbox(outbox_path) as outbox:
        await outbox.record_many({**usage_args(i), "metadata": {"note": marker}} for i in range(40))
    execute(outbox_path, "UPDATE usage_outbox SET headers = 'not json' WHERE id = 3")
    log = tmp_path / "shipper.log"
    process = cli_processes.start(
        "run",
        "--metrics-port",
        "0",
        "--log-format",
        "json",
        "--batch-size",
        "16",
        env=shipper_env(
            USAGE_OUTBOX_URL=str(outbox_path),
            NATS_URL=nats_server.url,
            NATS_USER="shipper",
            NATS_PASSWORD=secret,  # the test server asks for none; it must not be logged
        ),
        log_path=log,
    )

    def serving_port() -> int | None:
        for line in json_log_lines(log) if log.exists() else []:
            if line.get("action") == "metrics_serving":
                return int(line["port"])
        return None

    await wait_until(serving_port, 20, message="the metrics_serving log line")
    url = f"http://127.0.0.1:{serving_port()}"
    last = await _wait_scrape(
        url,
        lambda s: (
            s.value("usage_shipper_events_published_total", **NEW) == 39
            and s.get("usage_shipper_outbox_dead") == 1
        ),
        "39 shipped, 1 dead",
        within=20,
    )
    assert last.value("usage_shipper_lag_seconds_count") == 39
    assert (await ready(url))[0] == 200
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 15) == 0

    text = log.read_text()
    assert secret not in text
    assert marker not in text
    lines = json_log_lines(log)
    # The shipper's own lines, and those of the runtime parts it shares with billing.
    ours = [line for line in lines if line["logger"].startswith(("shipper", "usage_runtime"))]
    assert all("action" in line for line in ours), [line for line in ours if "action" not in line]
    actions = {line["action"] for line in ours}
    expected = {"starting", "metrics_serving", "lease_taken", "nats_connected", "ready"}
    assert expected | {"dead_lettered", "stop_requested", "stopped"} <= actions, actions
    dead = next(line for line in ours if line["action"] == "dead_lettered")
    assert "headers are not JSON" in dead["message"]


# -- helpers ------------------------------------------------------------------------------


async def _status(url: str, expected: int) -> bool:
    return (await ready(url))[0] == expected


async def _wait_status(url: str, expected: int, within: float = 15.0) -> tuple[int, str]:
    await wait_until(lambda: _status(url, expected), within, message=f"/readyz {expected}")
    return await ready(url)


async def _wait_scrape(
    url: str, condition: Callable[[Scrape], bool], what: str, *, within: float = 15.0
) -> Scrape:
    """Scrape until ``condition(scrape)`` holds; return that scrape."""
    seen: list[Scrape] = []

    async def check() -> bool:
        seen.append(await scrape(url))
        return bool(condition(seen[-1]))

    try:
        await wait_until(check, within, interval=0.1, message=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last scrape:\n{seen[-1].text if seen else '-'}") from None
    return seen[-1]
