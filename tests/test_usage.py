"""Usage flush against a real PostgreSQL and the emulator: totals exact, aggregation, errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import orjson
import pytest

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


def usage_config(db_url: str, emu: Emulator, **usage: object) -> Config:
    values: dict[str, object] = {"meters": {"api_calls": "api_calls", "seats": "seats"}}
    values.update(usage)
    return emulator_config(db_url, emu, usage=values)


async def flush(cfg: Config) -> FlushResult:
    async with Database.connect(cfg.database, min_size=1) as db, StripeAPI(cfg) as api:
        return await UsageFlusher(cfg, db, api).flush()


async def test_rows_are_reported_once_with_exact_totals(db_url: str, emulator: Emulator) -> None:
    meters = {"api_calls": await make_meter(emulator, "api_calls")}
    meters["seats"] = await make_meter(emulator, "seats")
    ids = [c["id"] for c in customers(emulator, 20)]
    rows = random_rows(ids, 2000, metrics=("api_calls", "seats"))
    await insert_rows(db_url, rows)
    cfg = usage_config(db_url, emulator, batch_size=700)
    result = await flush(cfg)
    assert result.rows_reported == 2000 and result.rows_failed == result.rows_rejected == 0
    assert await statuses(db_url) == {"reported": 2000}
    assert emulator_totals(emulator, meters) == await row_totals(db_url)
    # Aggregated: far fewer requests than rows, one per (customer, metric, minute) per round.
    sent = emulator.stats.count("POST /v1/billing/meter_events", 200)
    assert sent == result.events_sent < 2000
    # A second flush finds nothing to do and sends nothing.
    again = await flush(cfg)
    assert again.rows_reported == 0 and again.events_sent == 0
    assert emulator.stats.count("POST /v1/billing/meter_events") == sent


async def test_events_aggregate_per_customer_metric_and_bucket(
    db_url: str, emulator: Emulator
) -> None:
    await make_meter(emulator, "api_calls")
    (cus,) = [c["id"] for c in customers(emulator, 1)]
    base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)
    rows = [
        (None, None, cus, "api_calls", Decimal("1.5"), base + timedelta(seconds=1)),
        (None, None, cus, "api_calls", Decimal("2"), base + timedelta(seconds=59)),
        (None, None, cus, "api_calls", Decimal("4"), base + timedelta(seconds=60)),
    ]
    await insert_rows(db_url, rows)
    cfg = usage_config(db_url, emulator)
    assert (await flush(cfg)).events_sent == 2
    conn = await asyncpg.connect(db_url)
    try:
        events = await conn.fetch(
            'SELECT value, "timestamp", params FROM syncd.usage_events ORDER BY "timestamp"'
        )
    finally:
        await conn.close()
    start = int(base.timestamp())
    assert [(e["value"], e["timestamp"]) for e in events] == [
        (Decimal("3.5"), start),
        (Decimal("4"), start + 60),
    ]
    params = orjson.loads(events[0]["params"])
    assert params["payload"] == {"stripe_customer_id": cus, "value": "3.5"}
    assert params["identifier"].startswith("syncd_")


async def test_meter_payload_keys_follow_the_meter(db_url: str, emulator: Emulator) -> None:
    meter = await make_meter(
        emulator,
        "api_calls",
        customer_mapping={"type": "by_id", "event_payload_key": "account"},
        value_settings={"event_payload_key": "tokens"},
    )
    (cus,) = [c["id"] for c in customers(emulator, 1)]
    await insert_rows(db_url, random_rows([cus], 10))
    cfg = usage_config(db_url, emulator)
    assert (await flush(cfg)).rows_reported == 10
    assert emulator_totals(emulator, {"api_calls": meter}) == await row_totals(db_url)


async def test_customer_is_resolved_from_subscription_or_user(
    db_url: str, emulator: Emulator, db: Database
) -> None:
    meter = await make_meter(emulator, "api_calls")
    a, b = customers(emulator, 2)
    # The mirror knows customer b by its app user id and a subscription of customer a.
    await mirror_object(
        db_url, "customers", {"id": b["id"], "metadata": {"supabase_user_id": "user-b"}}
    )
    await mirror_object(db_url, "subscriptions", {"id": "sub_a", "customer": a["id"]})
    now = datetime.now(UTC)
    await insert_rows(
        db_url,
        [
            ("user-b", None, None, "api_calls", Decimal(3), now),
            (None, "sub_a", None, "api_calls", Decimal(5), now),
            ("user-a", "sub_a", None, "api_calls", Decimal(7), now),
        ],
    )
    cfg = usage_config(db_url, emulator)
    assert (await flush(cfg)).rows_reported == 3
    totals = emulator_totals(emulator, {"api_calls": meter})
    assert totals == {("api_calls", a["id"]): Decimal(12), ("api_calls", b["id"]): Decimal(3)}
    info = await summary(db)
    assert info["counts"] == {"reported": 3}


async def test_bad_inserts_fail_at_once_with_a_named_constraint(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        insert = "INSERT INTO billing.usage_records (customer_id, user_id, metric, quantity)"
        cases = [
            (f"{insert} VALUES ('cus_1', NULL, 'api_calls', -1)", "quantity_not_negative"),
            (f"{insert} VALUES ('cus_1', NULL, 'api_calls', 'NaN')", "quantity_not_negative"),
            (f"{insert} VALUES (NULL, NULL, 'api_calls', 1)", "usage_records_needs_owner"),
            (f"{insert} VALUES ('cus_1', NULL, '', 1)", "metric_not_empty"),
        ]
        for sql, constraint in cases:
            with pytest.raises(asyncpg.CheckViolationError, match=constraint):
                await conn.execute(sql)
        key_insert = (
            "INSERT INTO billing.usage_records (user_id, metric, quantity, idempotency_key)"
            " VALUES ('u1', 'api_calls', 1, 'req-42')"
        )
        await conn.execute(key_insert)
        with pytest.raises(asyncpg.UniqueViolationError, match="idempotency_key"):
            await conn.execute(key_insert)  # a retrying app cannot count twice
        # A Supabase uuid casts to the text user_id.
        await conn.execute(
            "INSERT INTO billing.usage_records (user_id, metric, quantity)"
            " VALUES (gen_random_uuid(), 'api_calls', 2)"
        )
        assert await conn.fetchval("SELECT count(*) FROM billing.usage_records") == 2
    finally:
        await conn.close()


async def test_one_request_in_flight_per_customer_and_meter(
    db_url: str, emulator: Emulator
) -> None:
    """Stripe answers 429 to a second meter event in flight for the same customer and meter:
    the flush never sends one (the emulator enforces the rule here), and every row is reported."""
    meters = {"api_calls": await make_meter(emulator, "api_calls")}
    ids = [c["id"] for c in customers(emulator, 3)]
    # Many minutes per customer: many requests per (customer, meter), 32 senders at once.
    start = datetime.now(UTC) - timedelta(hours=3)
    rows = [
        (None, None, ids[i % 3], "api_calls", Decimal(1 + i % 5), start + timedelta(minutes=i))
        for i in range(150)
    ]
    await insert_rows(db_url, rows)
    emulator.limits.configure(meter_event_concurrency=True)
    emulator.faults.set(pattern="POST /v1/billing/meter_events", latency_ms=20)
    cfg = usage_config(db_url, emulator, meters={"api_calls": "api_calls"}, concurrency=32)
    result = await flush(cfg)
    assert result.rows_reported == 150 and result.events_sent == 150
    assert emulator.limits.count("POST /v1/billing/meter_events") == (150, 0)  # no 429
    assert emulator_totals(emulator, meters) == await row_totals(db_url)


async def test_the_longest_chain_goes_first(db_url: str, emulator: Emulator) -> None:
    """A customer with many minutes of usage has many requests, which Stripe takes one at a
    time: they start at once and run beside the others'. (Sent round-robin, this customer's
    requests after the first were left for last and then went one at a time.)"""
    meters = {"api_calls": await make_meter(emulator, "api_calls")}
    ids = [c["id"] for c in customers(emulator, 21)]
    hot, cold = ids[0], ids[1:]
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
    rows = [
        (None, None, hot, "api_calls", Decimal(i + 1), start + timedelta(minutes=i))
        for i in range(20)
    ]
    rows += [(None, None, cus, "api_calls", Decimal(2), start) for cus in cold]
    await insert_rows(db_url, rows)
    emulator.limits.use_stripe_limits("live")
    emulator.faults.set(pattern="POST /v1/billing/meter_events", latency_ms=20)
    cfg = usage_config(db_url, emulator, meters={"api_calls": "api_calls"}, concurrency=2)
    result = await flush(cfg)
    assert result.rows_reported == 40 and result.events_sent == 40
    assert emulator.limits.count("POST /v1/billing/meter_events") == (40, 0)  # no 429
    assert emulator_totals(emulator, meters) == await row_totals(db_url)
    # The order Stripe took them in: one of the two senders kept the hot chain going from the
    # start (round-robin: 1 of the first 20 was the hot customer's).
    taken = [e.customer for e in emulator.state.meters_state.events]
    assert taken[:20].count(hot) >= 8


async def test_stripe_test_mode_limits_every_row_once(db_url: str, emulator: Emulator) -> None:
    """Stripe's test-mode limits enforced (meter events count toward the account's 25/s and the
    endpoint's 25/s; one in flight per customer and meter) and syncd at all of that budget with
    32 senders: 2,000 rows of 4 customers and 2 meters go without a 429, none lost, none twice."""
    meters = {m: await make_meter(emulator, m) for m in ("api_calls", "seats")}
    ids = [c["id"] for c in customers(emulator, 4)]
    await insert_rows(db_url, random_rows(ids, 2000, metrics=("api_calls", "seats"), spread=600))
    emulator.limits.use_stripe_limits("test")
    emulator.limits.reset_counters()
    emulator.faults.set(pattern="POST /v1/billing/meter_events", latency_ms=10)
    cfg = emulator_config(
        db_url,
        emulator,
        usage={"meters": {"api_calls": "api_calls", "seats": "seats"}, "concurrency": 32},
        stripe={"rate_limit": 25.0},
    )
    result = await flush(cfg)
    assert result.rows_reported == 2000 and result.error is None
    events = result.events_sent
    assert emulator.limits.count() == (events + 1, 0)  # the meter list and the events; no 429
    assert emulator.stats.count("POST /v1/billing/meter_events", 200) == events  # each once
    assert await statuses(db_url) == {"reported": 2000}
    assert emulator_totals(emulator, meters) == await row_totals(db_url)
    conn = await asyncpg.connect(db_url)
    try:
        carried = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT row_id) AS rows, count(DISTINCT e) AS events"
            " FROM (SELECT id AS e, unnest(row_ids) AS row_id FROM syncd.usage_events) c"
        )
    finally:
        await conn.close()
    assert dict(carried) == {"n": 2000, "rows": 2000, "events": events}
