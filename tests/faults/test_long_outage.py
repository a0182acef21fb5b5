"""Scenario 9 of issue 5: slow consumer, long outage.

The stream is created fresh by the shipper with a 1 s de-duplication window
(``--duplicate-window 1``). After a first round of events is shipped and billed, the
shipper and billing both go down, and events pile up in the outbox. The shipper died
badly: it had published the first rows of the backlog and received their PubAcks, and
was killed before it could delete them (simulated exactly: those rows are published as the
shipper publishes them, left in the outbox, and the lease is left with them in flight).

The outage lasts longer than the window, so when the shipper comes back and republishes
those rows, JetStream no longer recognises their ``Nats-Msg-Id``: it stores every one a
second time. Billing, back last, reads both copies and must charge each event once: its
inbox (``billing_records`` unique on ``event_id``) catches what the window no longer
does. The audit is told how many duplicates to expect (``replays``), and the test checks
that exactly that many are in the stream and that billing absorbed exactly that many.
"""

from __future__ import annotations

import time

import pytest

from bench.faults.harness import Workspace
from bench.faults.helpers import (
    billing_counters,
    in_flight_recoveries,
    outbox_rows,
    outbox_sql,
    publish_as_shipper,
    stream_info,
    stream_messages,
)
from bench.faults.results import ScenarioResult, timed
from usage_demo.natsserver import NatsServer
from usage_demo.waiting import wait_until_sync

pytestmark = pytest.mark.faults

WINDOW = 1.0  # seconds: the stream's duplicate window
BEFORE = 500  # events shipped and billed before the outage
DURING = 1000  # events written during the outage
CRASHED = 200  # backlog rows the dead shipper had published, acknowledged, not deleted


def test_outage_longer_than_the_dedupe_window_is_absorbed_by_billing(
    workspace: Workspace, nats_server: NatsServer
) -> None:
    ws, url = workspace, nats_server.url
    with timed() as elapsed:
        ws.set_prices()
        billing = ws.billing(url)
        shipper = ws.shipper(url, flags=["--duplicate-window", str(WINDOW)])
        ws.writers(1, events=BEFORE).wait(60)
        ws.wait_settled(BEFORE, 30)
        info = stream_info([url])
        assert info is not None and info.config.duplicate_window == WINDOW

        # The outage: the shipper dies, billing is down too; events pile up.
        assert shipper.stop() == 0
        assert billing.stop() == 0
        ws.writers(1, events=DURING).wait(60)
        backlog = outbox_rows(ws.outbox_path)
        assert len(backlog) == DURING
        # The dead shipper's last batch: published, acknowledged, never deleted.
        crashed = backlog[:CRASHED]
        assert publish_as_shipper([url], crashed) == [False] * CRASHED
        published_at = time.monotonic()
        # Within the window JetStream still recognises them (and does not store them).
        assert publish_as_shipper([url], crashed[:3]) == [True] * 3
        outbox_sql(ws.outbox_path, "DELETE FROM usage_outbox_lease")
        outbox_sql(
            ws.outbox_path,
            "INSERT INTO usage_outbox_lease (name, owner, expires_at, in_flight_from, "
            "in_flight_to) VALUES ('shipper', 'killed-shipper', ?, ?, ?)",
            time.time() - 1,
            crashed[0]["id"],
            crashed[-1]["id"],
        )
        # The outage goes on past the window (its length is the fault being injected:
        # twice the window, so the server's purge timer has run too).
        wait_until_sync(
            lambda: time.monotonic() - published_at >= 2 * WINDOW,
            10,
            message="the outage outlasts the window",
            interval=0.05,
        )
        outage = time.monotonic() - published_at

        shipper.start()
        total = BEFORE + DURING
        wait_until_sync(
            lambda: ws.pending() == 0 and stream_messages([url]) >= total + CRASHED,
            30,
            message="the backlog shipped",
            explain=lambda: f"outbox {ws.pending()}, stream {stream_messages([url])}",
            interval=0.05,
        )
        billing.start()  # the slow consumer comes back to both copies of each
        ws.wait_settled(total, 30)
        assert shipper.stop() == 0, shipper.log_text()[-3000:]
        assert billing.stop() == 0, billing.log_text()[-3000:]
        report = ws.audit(url, replays=CRASHED)

    recoveries, counted = in_flight_recoveries(shipper.log_text())
    counters = billing_counters(billing.log_text())
    result = ScenarioResult(
        "9. slow consumer, long outage (stream duplicate window 1 s)",
        report,
        faults=2,  # the crash after publish and before delete, the outage past the window
        seconds=elapsed(),
        notes=[
            f"{BEFORE} events before the outage, {DURING} during it; shipper and billing "
            f"down {outage:.1f} s after the dead shipper's last PubAck (window {WINDOW} s)",
            f"{CRASHED} rows published and acknowledged, not deleted; the next shipper "
            f"counted {counted} rows in flight and republished them: all stored again",
            f"billing counters over its runs: {counters}",
        ],
    )
    print(result.summary())
    assert report.ok, result.summary()
    # exactly the dead shipper's rows are in the stream twice, nothing else
    assert report.stream_messages == total + CRASHED
    assert report.stream_distinct == total
    assert (recoveries, counted) == (1, CRASHED)
    assert counters.get("duplicates") == CRASHED, counters
    assert counters.get("billed", 0) + counters.get("unpriced", 0) == total, counters
