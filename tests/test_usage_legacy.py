"""The legacy target (`usage.target = "legacy"`): usage records on the subscription item whose
metered price has lookup_key = metric, an Idempotency-Key per request, whole quantities."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import stripe

from syncd.config import Config
from syncd.db import Database
from syncd.emulator import Emulator
from syncd.stripe_api import StripeAPI
from syncd.usage import FlushResult, UsageFlusher
from tests.conftest import emulator_config
from tests.support.usage import customers, insert_rows, mirror_object, statuses


async def subscription(emu: Emulator, customer: str, lookup_keys: list[str]) -> dict[str, Any]:
    """A subscription with one metered item per lookup key, mirrored as the sync would."""
    http = stripe.AIOHTTPClient()
    try:
        client = emu.client(http_client=http)
        product = await client.v1.products.create_async(params={"name": "API"})
        items = []
        for key in lookup_keys:
            price = await client.v1.prices.create_async(
                params={
                    "product": product.id,
                    "currency": "usd",
                    "unit_amount": 1,
                    "lookup_key": key,
                    "recurring": {"interval": "month", "usage_type": "metered"},
                }
            )
            items.append({"price": price.id})
        sub = await client.v1.subscriptions.create_async(
            params={"customer": customer, "items": items}
        )
        return orjson.loads(str(sub))  # type: ignore[no-any-return]
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]


async def mirror_subscription(db_url: str, sub: dict[str, Any]) -> None:
    await mirror_object(db_url, "subscriptions", sub)
    conn = await asyncpg.connect(db_url)
    try:
        for item in sub["items"]["data"]:
            await conn.execute(
                "INSERT INTO stripe.subscription_items (id, parent_id, raw, fetched_at)"
                " VALUES ($1, $2, $3::jsonb, now())",
                item["id"],
                sub["id"],
                orjson.dumps(item).decode(),
            )
    finally:
        await conn.close()


def legacy_config(db_url: str, emu: Emulator, **stripe_: Any) -> Config:
    return emulator_config(db_url, emu, usage={"target": "legacy"}, stripe=stripe_)


async def flush(cfg: Config) -> FlushResult:
    async with Database.connect(cfg.database, min_size=1) as db, StripeAPI(cfg) as api:
        return await UsageFlusher(cfg, db, api).flush()


async def test_legacy_usage_records_land_on_the_metered_item(
    db_url: str, emulator: Emulator
) -> None:
    (cus,) = [c["id"] for c in customers(emulator, 1)]
    sub = await subscription(emulator, cus, ["api_calls", "storage_gb"])
    await mirror_subscription(db_url, sub)
    item_of = {i["price"]["lookup_key"]: i["id"] for i in sub["items"]["data"]}
    now = datetime.now(UTC)
    await insert_rows(
        db_url,
        [
            (None, sub["id"], None, "api_calls", Decimal(3), now),
            (None, sub["id"], None, "api_calls", Decimal(4), now),
            (None, sub["id"], None, "storage_gb", Decimal(10), now),
            (None, sub["id"], None, "storage_gb", Decimal("0.5"), now),  # not whole: rejected
            ("u1", None, cus, "api_calls", Decimal(1), now),  # no subscription: rejected
        ],
    )
    result = await flush(legacy_config(db_url, emulator))
    assert (result.rows_reported, result.rows_rejected) == (2, 3)
    assert emulator.usage_totals() == {item_of["api_calls"]: 7}
    conn = await asyncpg.connect(db_url)
    try:
        errors = [
            r["error"]
            for r in await conn.fetch(
                "SELECT error FROM billing.usage_records WHERE status = 'failed' ORDER BY id"
            )
        ]
    finally:
        await conn.close()
    assert (
        errors[0] == errors[1] == ("rejected: legacy usage records take whole quantities, got 10.5")
    )
    assert "needs subscription_id" in errors[2]


async def test_legacy_resend_after_a_lost_answer_counts_once(
    db_url: str, emulator: Emulator
) -> None:
    (cus,) = [c["id"] for c in customers(emulator, 1)]
    sub = await subscription(emulator, cus, ["api_calls"])
    await mirror_subscription(db_url, sub)
    await insert_rows(db_url, [(None, sub["id"], None, "api_calls", Decimal(5), datetime.now(UTC))])
    # Stripe records the usage but the answer never arrives in time (client timeout).
    emulator.faults.set(pattern="POST /v1/subscription_items/*", after_ms=1500, times=1)
    cfg = legacy_config(db_url, emulator, max_retries=0, request_timeout=0.5)
    lost = await flush(cfg)
    assert lost.events_unsent == 1 and await statuses(db_url) == {"sending": 1}
    assert sum(emulator.usage_totals().values()) == 5  # recorded, unbeknown to syncd
    again = await flush(cfg)
    assert again.batches_recovered == 1 and again.rows_reported == 1
    assert sum(emulator.usage_totals().values()) == 5  # the Idempotency-Key replayed
