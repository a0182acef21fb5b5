"""The billing consumer's /metrics, /healthz and /readyz, scraped over HTTP while it bills.

A real nats-server and a real SQLite billing database; the consumer in-process (and once
as ``usage-billing run``). Every wait is a condition with a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from nats.js import JetStreamContext

from billing import jetstream as billing_js
from billing.config import BillingConfig
from billing.consumer import BillingConsumer
from billing.database import BillingDatabase
from tests.fixtures.billing import ConfigFactory, publish, publish_raw, usage_event
from tests.metrics_http import Scrape, http_get, json_log_lines, ready, scrape
from usage_demo.natsserver import NatsServer
from usage_demo.processes import CliProcess, module_command
from usage_demo.waiting import wait_until

EVENTS = "usage_billing_events_total"
REPO = Path(__file__).resolve().parents[1]


async def _set_price(url: str) -> None:
    async with BillingDatabase(url) as db:
        await db.set_price("gpt-4", "token", "0.001")


async def _wait_scrape(url: str, condition: Callable[[Scrape], bool], what: str) -> Scrape:
    seen: list[Scrape] = []

    async def check() -> bool:
        seen.append(await scrape(url))
        return condition(seen[-1])

    try:
        await wait_until(check, interval=0.1, message=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last scrape:\n{seen[-1].text if seen else '-'}") from None
    return seen[-1]


async def _ready_is(url: str, status: int) -> bool:
    return (await ready(url))[0] == status


async def test_billed_counts_lag_and_readiness_follow_the_consumer(
    billing_config: ConfigFactory,
    billing_url: str,
    jetstream: JetStreamContext,
    nats_server: NatsServer,
) -> None:
    config = billing_config(metrics_port=0)
    await _set_price(billing_url)
    consumer = BillingConsumer(config)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        server = consumer.metrics.server
        assert server is not None
        await wait_until(lambda: server.port != 0, message="the metrics server is listening")
        url = server.url
        assert await http_get(url, "/healthz") == (200, "ok\n")
        await wait_until(lambda: _ready_is(url, 200), message="ready once consuming")

        events = [usage_event(f"user-{i % 3}", "gpt-4", input_tokens=i + 1) for i in range(40)]
        for event in events:
            await publish(jetstream, event)
        await publish(jetstream, events[0], msg_id="second-copy")  # absorbed by the inbox
        await publish(jetstream, usage_event("u", "no-price-model"))  # recorded, unpriced
        await publish_raw(jetstream, "billing.usage.recorded.gpt-4", b"[]", "bad")  # rejected

        last = await _wait_scrape(
            url,
            lambda s: (
                s.value(EVENTS, outcome="billed") == 40
                and s.value(EVENTS, outcome="duplicate") == 1
                and s.value(EVENTS, outcome="unpriced") == 1
                and s.value(EVENTS, outcome="rejected") == 1
            ),
            "40 billed, 1 duplicate, 1 unpriced, 1 rejected",
        )
        assert last.value(EVENTS, outcome="retry") == 0
        assert last.value("usage_billing_lag_seconds_count") == 41  # first recordings only
        assert last.value("usage_billing_lag_seconds_sum") > 0
        assert last.value("usage_billing_batch_apply_seconds_count") >= 1
        await _wait_scrape(
            url,
            lambda s: s.get("usage_billing_consumer_pending_messages") == 0,
            "nothing pending for the durable",
        )

        # NATS goes away: alive, not ready; back: ready again, and billing resumes.
        nats_server.stop()
        await wait_until(lambda: _ready_is(url, 503), message="/readyz 503 while NATS is down")
        status, body = await ready(url)
        assert status == 503 and "NATS" in body, body
        assert (await http_get(url, "/healthz"))[0] == 200
        nats_server.start()
        await wait_until(lambda: _ready_is(url, 200), message="/readyz 200 once NATS is back")
        await publish(jetstream, usage_event("late", "gpt-4"))
        back = await _wait_scrape(
            url, lambda s: s.value(EVENTS, outcome="billed") == 41, "the event after the outage"
        )
        assert back.value("usage_billing_nats_reconnects_total") >= 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert not await _listening(url), "closing the consumer stops its server"


async def test_no_metrics_port_means_no_server(billing_config: ConfigFactory) -> None:
    consumer = BillingConsumer(billing_config())
    assert consumer.metrics.server is None


async def test_cli_serves_metrics_and_logs_json_lines_without_secrets(
    nats_server: NatsServer, jetstream: JetStreamContext, tmp_path: Path
) -> None:
    secret = "b1lling-Pa55word"
    db = tmp_path / "billing.db"
    log = tmp_path / "billing.log"
    await billing_js.ensure_stream(jetstream, BillingConfig(nats_url=nats_server.url))
    for i in range(12):
        await publish(jetstream, usage_event("cli", "gpt-4", input_tokens=i + 1))
    # The test server asks for no credentials; the password in the URL must not be logged.
    nats_url = nats_server.url.replace("nats://", f"nats://billing:{secret}@")
    env = {
        "PATH": "/usr/bin:/bin",
        "BILLING_DATABASE_URL": str(db),
        "NATS_URL": nats_url,
        "BILLING_FETCH_TIMEOUT": "0.2",
        "BILLING_METRICS_PORT": "0",
        "BILLING_LOG_FORMAT": "json",
    }
    process = CliProcess(module_command("billing", "run"), env=env, log_path=log, cwd=REPO).start()
    try:

        def serving_port() -> int | None:
            for line in json_log_lines(log):
                if line.get("action") == "metrics_serving":
                    return int(line["port"])
            return None

        await wait_until(
            lambda: serving_port() is not None, within=20, message="the metrics_serving log line"
        )
        url = f"http://127.0.0.1:{serving_port()}"
        last = await _wait_scrape(
            url,
            lambda s: s.value(EVENTS, outcome="unpriced") == 12,
            "12 recorded (no price set: unpriced)",
        )
        assert last.value("usage_billing_lag_seconds_count") == 12
        assert (await ready(url))[0] == 200
        assert (await process.stop_async(15)).returncode == 0  # SIGTERM; SIGKILL after 15 s
    finally:
        process.close()
    assert secret not in log.read_text()
    ours = [line for line in json_log_lines(log) if line["logger"].startswith("billing")]
    assert all("action" in line for line in ours), [x for x in ours if "action" not in x]
    actions = {line["action"] for line in ours}
    assert {"starting", "consumer_started", "consumer_stopped"} <= actions, actions


async def _listening(url: str) -> bool:
    try:
        await http_get(url, "/healthz", within=1)
    except OSError:
        return False
    return True
