"""Usage errors: permanent refusals end `failed` with Stripe's reason, bad input is rejected
with ours, transient failures leave rows queued and the next flush delivers them once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from unittest.mock import ANY

import asyncpg
import stripe
import structlog.testing

from syncd.config import Config
from syncd.db import Database
from syncd.emulator import Emulator
from syncd.stripe_api import StripeAPI
from syncd.usage import FlushResult, UsageFlusher, summary
from tests.conftest import emulator_config
from tests.support.usage import (
    customers,
    emulator_totals,
    insert_rows,
    make_meter,
    mirror_object,
    random_rows,
    row_totals,
    statuses,
)

METER_POST = "POST /v1/billing/meter_events"


def usage_config(
    db_url: str, emu: Emulator, stripe_: dict[str, Any] | None = None, **usage: Any
) -> Config:
    values: dict[str, Any] = {"meters": {"api_calls": "api_calls"}}
    values.update(usage)
    return emulator_config(db_url, emu, usage=values, stripe=stripe_ or {})


async def flush(cfg: Config) -> FlushResult:
    async with Database.connect(cfg.database, min_size=1) as db, StripeAPI(cfg) as api:
        return await UsageFlusher(cfg, db, api).flush()


async def errors_by_customer(db_url: str) -> dict[str, tuple[str, str | None]]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT customer_id, status, error FROM billing.usage_records")
    finally:
        await conn.close()
    return {r["customer_id"]: (r["status"], r["error"]) for r in rows}


async def sdk(emu: Emulator, fn: Any) -> Any:
    http = stripe.AIOHTTPClient()
    try:
        return await fn(emu.client(http_client=http))
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]


async def test_permanent_refusals_fail_rows_with_stripes_reason(
    db_url: str, emulator: Emulator, db: Database
) -> None:
    meter = await make_meter(emulator, "api_calls")
    good, gone, old = (c["id"] for c in customers(emulator, 3))
    await sdk(emulator, lambda c: c.v1.customers.delete_async(gone))
    now = datetime.now(UTC)
    await insert_rows(
        db_url,
        [
            (None, None, good, "api_calls", Decimal(2), now),
            (None, None, gone, "api_calls", Decimal(3), now),
            (None, None, old, "api_calls", Decimal(4), now - timedelta(days=40)),
        ],
    )
    result = await flush(usage_config(db_url, emulator))
    assert (result.rows_reported, result.rows_failed, result.events_failed) == (1, 2, 2)
    outcome = await errors_by_customer(db_url)
    assert outcome[good] == ("reported", None)
    assert outcome[gone][0] == "failed"
    assert f"No such customer: '{gone}'" in str(outcome[gone][1])
    assert outcome[old][0] == "failed"
    assert "within the past 35 calendar days" in str(outcome[old][1])
    # Only the delivered row counts in Stripe; the failures are visible to `syncd status`.
    assert emulator_totals(emulator, {"api_calls": meter}) == {("api_calls", good): Decimal(2)}
    info = await summary(db)
    assert info["counts"] == {"reported": 1, "failed": 2}
    assert {e["customer_id"] for e in info["latest_errors"]} == {gone, old}


async def test_bad_rows_are_rejected_with_a_reason_and_never_sent(
    db_url: str, emulator: Emulator
) -> None:
    await make_meter(emulator, "api_calls")
    (cus,) = (c["id"] for c in customers(emulator, 1))
    now = datetime.now(UTC)
    await insert_rows(
        db_url,
        [
            (None, None, cus, "bogus_metric", Decimal(1), now),
            ("nobody", None, None, "api_calls", Decimal(1), now),
            (None, "sub_unknown", None, "api_calls", Decimal(1), now),
            (None, None, cus, "api_calls", Decimal(1), now + timedelta(days=2)),
        ],
    )
    result = await flush(usage_config(db_url, emulator, unresolved_grace=0.0))
    assert result.rows_rejected == 4 and result.events_sent == 0
    assert emulator.stats.count(METER_POST) == 0
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT status, error FROM billing.usage_records ORDER BY id")
    finally:
        await conn.close()
    assert [r["status"] for r in rows] == ["failed"] * 4
    reasons = [r["error"] for r in rows]
    assert "unknown metric 'bogus_metric'" in reasons[0]
    assert "no live customer with user_id nobody" in reasons[1]
    assert "subscription sub_unknown not in stripe.subscriptions" in reasons[2]
    assert "in the future" in reasons[3]


async def test_unresolved_rows_wait_for_the_mirror_within_the_grace(
    db_url: str, emulator: Emulator
) -> None:
    await make_meter(emulator, "api_calls")
    (cus,) = customers(emulator, 1)
    await insert_rows(
        db_url, [("late-user", None, None, "api_calls", Decimal(5), datetime.now(UTC))]
    )
    cfg = usage_config(db_url, emulator)
    first = await flush(cfg)
    assert first.rows_waiting == 1 and await statuses(db_url) == {"pending": 1}
    # The mirror catches up: the customer with this app user id arrives.
    await mirror_object(
        db_url, "customers", {"id": cus["id"], "metadata": {"supabase_user_id": "late-user"}}
    )
    assert (await flush(cfg)).rows_reported == 1


async def test_missing_meter_holds_rows_until_it_exists(
    db_url: str, emulator: Emulator, db: Database
) -> None:
    ids = [c["id"] for c in customers(emulator, 3)]
    await insert_rows(db_url, random_rows(ids, 30))
    cfg = usage_config(db_url, emulator)
    result = await flush(cfg)
    assert result.meters_missing == ["api_calls"] and result.rows_waiting == 30
    assert await statuses(db_url) == {"pending": 30}
    info = await summary(db)
    assert (
        info["meter_problems"][0]["problem"] == "no active Stripe meter with event_name 'api_calls'"
    )
    meter = await make_meter(emulator, "api_calls")
    assert (await flush(cfg)).rows_reported == 30
    assert emulator_totals(emulator, {"api_calls": meter}) == await row_totals(db_url)
    assert (await summary(db))["meter_problems"] == []


async def test_exhausted_retries_leave_rows_sending_and_the_next_flush_delivers_once(
    db_url: str, emulator: Emulator, db: Database
) -> None:
    meter = await make_meter(emulator, "api_calls")
    ids = [c["id"] for c in customers(emulator, 10)]
    await insert_rows(db_url, random_rows(ids, 500))
    # Half the requests go through, then Stripe fails and retries run out.
    emulator.faults.set(pattern=METER_POST, status=503, error_rate=0.5)
    cfg = usage_config(db_url, emulator, {"max_retries": 0}, concurrency=1)
    broken = await flush(cfg)
    assert broken.error is not None and "503" in broken.error
    assert broken.events_unsent > 0
    sending = (await statuses(db_url)).get("sending", 0)
    assert sending > 0
    info = await summary(db)  # what `syncd status` shows meanwhile
    assert info["rows_sending"] == sending and info["batches_sending"] == 1
    assert info["oldest_unreported"] is not None and info["oldest_sending_batch_at"] is not None
    emulator.faults.clear()
    healed = await flush(cfg)
    assert healed.batches_recovered == 1 and healed.error is None
    assert await statuses(db_url) == {"reported": 500}
    assert emulator_totals(emulator, {"api_calls": meter}) == await row_totals(db_url)


async def test_transient_errors_are_retried_within_a_flush(db_url: str, emulator: Emulator) -> None:
    meter = await make_meter(emulator, "api_calls")
    ids = [c["id"] for c in customers(emulator, 10)]
    await insert_rows(db_url, random_rows(ids, 400))
    emulator.faults.set(pattern=METER_POST, status=429, error_rate=0.15)
    emulator.faults.set(pattern=METER_POST, status=500, error_rate=0.05)
    result = await flush(usage_config(db_url, emulator))
    assert result.error is None and result.rows_reported == 400
    assert emulator.stats.count(METER_POST, 429) > 0
    assert emulator_totals(emulator, {"api_calls": meter}) == await row_totals(db_url)


async def test_meter_deactivated_after_the_batch_was_written_fails_with_stripes_reason(
    db_url: str, emulator: Emulator
) -> None:
    meter = await make_meter(emulator, "api_calls")
    ids = [c["id"] for c in customers(emulator, 2)]
    await insert_rows(db_url, random_rows(ids, 20))
    emulator.faults.set(pattern=METER_POST, status=500, error_rate=1.0)
    cfg = usage_config(db_url, emulator, {"max_retries": 0})
    assert (await flush(cfg)).events_unsent > 0  # written, not delivered
    emulator.faults.clear()
    await sdk(emulator, lambda c: c.v1.billing.meters.deactivate_async(meter))
    result = await flush(cfg)
    assert result.batches_recovered == 1 and result.rows_failed == 20
    conn = await asyncpg.connect(db_url)
    try:
        errors = await conn.fetch("SELECT DISTINCT status, error FROM billing.usage_records")
    finally:
        await conn.close()
    assert [(e["status"], e["error"]) for e in errors] == [
        (
            "failed",
            "stripe: Stripe answered 400 on /v1/billing/meter_events: "
            "No active meter was found with event_name `api_calls`.",
        )
    ]
    assert emulator.meter_totals() == {}


async def test_nothing_is_rejected_while_no_meter_is_configured(
    db_url: str, emulator: Emulator
) -> None:
    (cus,) = (c["id"] for c in customers(emulator, 1))
    await insert_rows(db_url, random_rows([cus], 5))
    result = await flush(emulator_config(db_url, emulator))  # usage.meters left empty
    assert result.error is not None and "usage.meters is empty" in result.error
    assert await statuses(db_url) == {"pending": 5}


async def test_no_meter_and_no_rows_is_not_a_warning(db_url: str, emulator: Emulator) -> None:
    """An account that reports no usage (usage.meters empty, no rows) is not told every flush
    that nothing can be reported; one whose rows wait for a meter is."""
    cfg = emulator_config(db_url, emulator)
    with structlog.testing.capture_logs() as logs:
        await flush(cfg)
    assert [e for e in logs if e["event"] == "usage_not_configured"] == [
        {"event": "usage_not_configured", "log_level": "debug", "error": ANY}
    ]
    (cus,) = (c["id"] for c in customers(emulator, 1))
    await insert_rows(db_url, random_rows([cus], 2))
    with structlog.testing.capture_logs() as logs:
        await flush(cfg)
    assert [e["log_level"] for e in logs if e["event"] == "usage_not_configured"] == ["warning"]


async def test_an_unknown_endpoint_stops_the_flush_without_failing_rows(
    db_url: str, emulator: Emulator
) -> None:
    """A wrong meter-events address answers 404 without resource_missing: the rows are fine."""
    await make_meter(emulator, "api_calls")
    (cus,) = (c["id"] for c in customers(emulator, 1))
    await insert_rows(db_url, random_rows([cus], 5))
    cfg = usage_config(db_url, emulator, {"meter_events_base": emulator.url + "/nowhere"})
    result = await flush(cfg)
    assert result.error is not None and "Unrecognized request URL" in result.error
    assert await statuses(db_url) == {"sending": 5}
    assert (await flush(usage_config(db_url, emulator))).rows_reported == 5


async def test_a_key_that_cannot_list_meters_still_reports(
    db_url: str, emulator: Emulator, db: Database
) -> None:
    """A restricted usage key may write meter events without reading meters: syncd assumes the
    configured meters with Stripe's default payload keys instead of giving up."""
    meter = await make_meter(emulator, "api_calls")
    ids = [c["id"] for c in customers(emulator, 2)]
    await insert_rows(db_url, random_rows(ids, 20))
    emulator.faults.set(pattern="GET /v1/billing/meters", status=403, error_rate=1.0)
    result = await flush(usage_config(db_url, emulator))
    assert result.error is None and result.rows_reported == 20
    assert emulator_totals(emulator, {"api_calls": meter}) == await row_totals(db_url)
    assert (await summary(db))["meter_problems"] == []
