"""Connect (`stripe.accounts`): each usage row is reported to the Stripe account that owns its
customer, against a real PostgreSQL and the emulator's connected accounts through the stripe
SDK. The platform's customers and customers the mirror does not know go to the key's own
account; each account's meters are its own; a resend goes to the account stored with it."""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest
import stripe

from syncd.config import Config
from syncd.db import Database, Tx
from syncd.emulator import Emulator
from syncd.registry import BY_TABLE
from syncd.stripe_api import StripeAPI
from syncd.usage import FlushResult, UsageFlusher, summary
from syncd.versions import Version
from syncd.writer import Writer
from tests.conftest import emulator_config
from tests.support.usage import insert_rows, random_rows, statuses

METER_POST = "POST /v1/billing/meter_events"
METER_LIST = "GET /v1/billing/meters"


@dataclasses.dataclass
class Connect:
    """The platform and two connected accounts, each with its own mirrored customers."""

    emu: Emulator
    platform: str
    a: str
    b: str
    customers: dict[str, list[str]]  # account -> its customers' ids

    @property
    def accounts(self) -> list[str]:
        return [self.platform, self.a, self.b]

    def account_of(self, customer: str) -> str:
        return next(acct for acct, ids in self.customers.items() if customer in ids)

    def view(self, account: str) -> Any:
        """The emulator's state of `account` (the platform's is the emulator itself)."""
        return self.emu if account == self.platform else self.emu.account(account)


def options(c: Connect, account: str) -> dict[str, Any]:
    """SDK request options for `account` (the platform: none, the key's own)."""
    return {} if account == c.platform else {"stripe_account": account}


async def mirror(db: Database, account: str, table: str, objs: list[Any], **kw: Any) -> None:
    """Write Stripe objects into the mirror as `account`'s sync would (its account_id)."""
    writer = Writer(db, account_id=account, connect=True)

    async def go(conn: Tx) -> None:
        await writer.upsert(
            conn, BY_TABLE[table], objs, version=Version.at(time.time()), api_version=None, **kw
        )

    await db.transact(go)


async def make_meter(c: Connect, account: str, event_name: str = "api_calls") -> str:
    http = stripe.AIOHTTPClient()
    try:
        meter = await c.emu.client(http_client=http).v1.billing.meters.create_async(
            params={
                "display_name": event_name,
                "event_name": event_name,
                "default_aggregation": {"formula": "sum"},
            },
            options=options(c, account),
        )
        return str(meter.id)
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]


async def connect(db: Database, emu: Emulator, n: int = 3) -> Connect:
    """Two connected accounts; n customers in each account, mirrored with their account_id;
    `{state}.accounts` as the daemon fills it."""
    a, b = emu.create_account(type="express")["id"], emu.create_account(type="standard")["id"]
    c = Connect(emu, emu.account_id, a, b, {})
    http = stripe.AIOHTTPClient()
    try:
        client = emu.client(http_client=http)
        for account in c.accounts:
            made = [
                await client.v1.customers.create_async(options=options(c, account))
                for _ in range(n)
            ]
            c.customers[account] = [cus.id for cus in made]
            await mirror(db, account, "customers", [orjson.loads(str(cus)) for cus in made])
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]
    await sql(
        db,
        "INSERT INTO syncd.accounts (account_id, platform, source) VALUES"
        " ($1, true, 'platform'), ($2, false, 'configured'), ($3, false, 'configured')",
        c.platform,
        a,
        b,
    )
    return c


async def sql(db: Database, statement: str, *args: Any) -> list[Any]:
    return list(await db.run(lambda conn: conn.fetch(statement, *args)))


def usage_config(db_url: str, c: Connect, **stripe_: Any) -> Config:
    return emulator_config(
        db_url,
        c.emu,
        usage={"meters": {"api_calls": "api_calls"}},
        stripe={"accounts": [c.a, c.b], **stripe_},
    )


async def flush(cfg: Config, name: str = "") -> FlushResult:
    async with Database.connect(cfg.database, min_size=1) as db, StripeAPI(cfg) as api:
        return await UsageFlusher(cfg, db, api, instance=name).flush()


def expected(c: Connect, rows: list[tuple[Any, ...]]) -> dict[str, dict[str, Decimal]]:
    """Per account, the sum of its own customers' rows per customer."""
    out: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for row in rows:
        out[c.account_of(row[2])][row[2]] += row[4]
    return {acct: dict(sums) for acct, sums in out.items()}


def recorded(c: Connect, account: str, meter: str) -> dict[str, Decimal]:
    """What `account`'s meter counted per customer in the emulator (and nothing elsewhere)."""
    totals = c.view(account).meter_totals()
    assert {m for m, _ in totals} <= {meter}
    return {customer: value for (_, customer), value in totals.items()}


async def stored_accounts(db_url: str) -> dict[str, int]:
    """Requests stored per account_id."""
    conn = await asyncpg.connect(db_url)
    try:
        found = await conn.fetch(
            "SELECT account_id, count(*) AS n FROM syncd.usage_events GROUP BY 1"
        )
    finally:
        await conn.close()
    return {r["account_id"]: r["n"] for r in found}


def posts(c: Connect, account: str, status: int | None = None) -> int:
    """Meter events the emulator served for `account` (the platform: those with no header)."""
    if account != c.platform:
        return c.emu.stats.count(METER_POST, status, account=account)
    connected = sum(c.emu.stats.count(METER_POST, status, account=x) for x in (c.a, c.b))
    return c.emu.stats.count(METER_POST, status) - connected


async def summed(c: Connect, account: str, meter: str, customer: str) -> Decimal:
    """The customer's total as Stripe's meter event summaries give it to `account`."""
    http = stripe.AIOHTTPClient()
    try:
        page = await c.emu.client(http_client=http).v1.billing.meters.event_summaries.list_async(
            meter,
            params={"customer": customer, "start_time": 0, "end_time": 4_000_000_000},
            options=options(c, account),
        )
        return sum((Decimal(str(s.aggregated_value)) for s in page.data), Decimal(0))
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("limits", ["shared", "account"])
async def test_each_row_is_reported_once_to_its_customers_account(
    db_url: str, emulator: Emulator, db: Database, limits: str
) -> None:
    c = await connect(db, emulator)
    # Two more customers of the platform's: one the mirror has with no account (''), one it
    # does not have at all. Both are the key's own account's: no header.
    http = stripe.AIOHTTPClient()
    try:
        client = emulator.client(http_client=http)
        plain, unknown = [await client.v1.customers.create_async() for _ in range(2)]
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]
    await mirror(db, "", "customers", [orjson.loads(str(plain))])
    c.customers[c.platform] += [plain.id, unknown.id]
    idle = emulator.create_account()["id"]  # connected, configured, no rows: never asked
    meters = {acct: await make_meter(c, acct) for acct in c.accounts}
    ids = [cus for acct in c.accounts for cus in c.customers[acct]]
    rows = random_rows(ids, 900, spread=600, seed=5)
    await insert_rows(db_url, rows)
    cfg = usage_config(db_url, c, connect_limits=limits)
    cfg = dataclasses.replace(
        cfg,
        stripe=dataclasses.replace(cfg.stripe, accounts=[c.a, c.b, idle]),
        # 3 rounds; no grace: the customer the mirror lacks goes to the key's own at once.
        usage=dataclasses.replace(cfg.usage, batch_size=300, unresolved_grace=0.0),
    )

    result = await flush(cfg)

    assert result.rows_reported == 900 and result.rows_failed == result.rows_rejected == 0
    assert await statuses(db_url) == {"reported": 900}
    sums = expected(c, rows)
    for acct in c.accounts:
        # Each account counted exactly its own customers' rows, and nobody else's.
        assert recorded(c, acct, meters[acct]) == sums[acct], acct
        cus = c.customers[acct][0]
        assert await summed(c, acct, meters[acct], cus) == sums[acct][cus]
    # Each request went once, to the account stored with it ('': the key's own).
    stored = await stored_accounts(db_url)
    assert stored == {
        "": posts(c, c.platform, 200),
        c.a: posts(c, c.a, 200),
        c.b: posts(c, c.b, 200),
    }
    assert emulator.stats.count(METER_POST) == result.events_sent == sum(stored.values())
    assert emulator.stats.count(METER_POST, 400) == 0  # no "no such customer", no duplicate
    # Meters are checked once per flush in each account with rows, and only there.
    assert [emulator.stats.count(METER_LIST, account=x) for x in (c.a, c.b, idle)] == [1, 1, 0]
    assert emulator.stats.count(account=idle) == 0


async def test_a_batch_left_sending_is_resent_to_the_account_stored_with_it(
    db_url: str, emulator: Emulator, db: Database
) -> None:
    c = await connect(db, emulator)
    meters = {acct: await make_meter(c, acct) for acct in c.accounts}
    ids = [cus for acct in c.accounts for cus in c.customers[acct]]
    rows = random_rows(ids, 600, spread=600, seed=9)
    await insert_rows(db_url, rows)
    # Account a's meter events fail (retries run out): the flush stops and leaves the batch
    # `sending`, as a crash would.
    emulator.faults.set(pattern=METER_POST, status=500, error_rate=1.0, account=c.a)
    cfg = usage_config(db_url, c, max_retries=0)
    first = await flush(cfg, "crashed")
    assert first.events_unsent > 0 and first.error is not None
    assert "sending" in await statuses(db_url)
    assert posts(c, c.a, 200) == 0 and posts(c, c.a, 500) > 0
    # The mirror no longer says the customers are a's: only the stored account sends the
    # resend there (a recomputed one would go to the platform, which has no such customers).
    await sql(db, "UPDATE stripe.customers SET account_id = '' WHERE account_id = $1", c.a)
    emulator.faults.clear()

    second = await flush(cfg, "next")

    assert second.batches_recovered == 1 and second.batches == 0
    assert await statuses(db_url) == {"reported": 600}
    sums = expected(c, rows)
    for acct in c.accounts:
        assert recorded(c, acct, meters[acct]) == sums[acct], acct
    assert emulator.stats.count(METER_POST, 400) == 0
    stored = await stored_accounts(db_url)
    assert stored[c.a] == posts(c, c.a, 200) > 0


async def test_a_meter_missing_in_one_account_holds_only_that_accounts_rows(
    db_url: str, emulator: Emulator, db: Database
) -> None:
    c = await connect(db, emulator)
    meters = {acct: await make_meter(c, acct) for acct in (c.platform, c.a)}  # none in b
    ids = [cus for acct in c.accounts for cus in c.customers[acct]]
    rows = random_rows(ids, 300, spread=600, seed=3)
    await insert_rows(db_url, rows)
    sums = expected(c, rows)
    in_b = sum(1 for r in rows if c.account_of(r[2]) == c.b)
    cfg = usage_config(db_url, c)

    first = await flush(cfg)

    assert first.meters_missing == [f"api_calls in {c.b}"]
    assert first.rows_waiting == in_b and first.rows_reported == 300 - in_b
    assert await statuses(db_url) == {"reported": 300 - in_b, "pending": in_b}
    for acct in (c.platform, c.a):
        assert recorded(c, acct, meters[acct]) == sums[acct], acct
    assert posts(c, c.b) == 0 and c.emu.account(c.b).meter_totals() == {}
    (problem,) = (await summary(db))["meter_problems"]
    assert problem["account_id"] == c.b and problem["metric"] == "api_calls"

    meters[c.b] = await make_meter(c, c.b)
    second = await flush(cfg)

    assert second.rows_reported == in_b and second.meters_missing == []
    assert await statuses(db_url) == {"reported": 300}
    for acct in c.accounts:
        assert recorded(c, acct, meters[acct]) == sums[acct], acct
    assert (await summary(db))["meter_problems"] == []


async def test_legacy_usage_records_go_to_the_items_account(
    db_url: str, emulator: Emulator, db: Database
) -> None:
    c = await connect(db, emulator, n=1)
    http = stripe.AIOHTTPClient()
    items: dict[str, str] = {}
    subs: dict[str, str] = {}
    try:
        client = emulator.client(http_client=http)
        for acct in (c.platform, c.b):
            opts: Any = options(c, acct)
            product = await client.v1.products.create_async(params={"name": "API"}, options=opts)
            price = await client.v1.prices.create_async(
                params={
                    "product": product.id,
                    "currency": "usd",
                    "unit_amount": 1,
                    "lookup_key": "api_calls",
                    "recurring": {"interval": "month", "usage_type": "metered"},
                },
                options=opts,
            )
            sub = orjson.loads(
                str(
                    await client.v1.subscriptions.create_async(
                        params={"customer": c.customers[acct][0], "items": [{"price": price.id}]},
                        options=opts,
                    )
                )
            )
            await mirror(db, acct, "subscriptions", [sub])
            await mirror(db, acct, "subscription_items", sub["items"]["data"], parent_id=sub["id"])
            subs[acct], items[acct] = sub["id"], sub["items"]["data"][0]["id"]
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]
    now = datetime.now(UTC)
    await insert_rows(
        db_url,
        [
            (None, subs[c.platform], None, "api_calls", Decimal(2), now),
            (None, subs[c.b], None, "api_calls", Decimal(5), now),
            (None, subs[c.b], None, "api_calls", Decimal(6), now),
        ],
    )
    cfg = emulator_config(
        db_url, emulator, usage={"target": "legacy"}, stripe={"accounts": [c.a, c.b]}
    )

    assert (await flush(cfg)).rows_reported == 3
    assert emulator.usage_totals() == {items[c.platform]: 2}
    assert emulator.account(c.b).usage_totals() == {items[c.b]: 11}
    assert await stored_accounts(db_url) == {"": 1, c.b: 1}


async def test_a_disconnected_account_holds_only_its_own_usage(
    db_url: str, emulator: Emulator, db: Database
) -> None:
    c = await connect(db, emulator)
    meters = {acct: await make_meter(c, acct) for acct in c.accounts}
    ids = [cus for acct in c.accounts for cus in c.customers[acct]]
    rows = random_rows(ids, 300, spread=600, seed=4)
    await insert_rows(db_url, rows)
    sums = expected(c, rows)
    in_b = sum(1 for r in rows if c.account_of(r[2]) == c.b)
    emulator.deauthorize_account(c.b)  # b answers 403 account_invalid from now on
    cfg = usage_config(db_url, c)

    first = await flush(cfg)

    # The others are reported in full; b's rows wait, unsent, not failed.
    assert first.error is None and first.rows_reported == 300 - in_b
    for acct in (c.platform, c.a):
        assert recorded(c, acct, meters[acct]) == sums[acct], acct
    assert c.emu.account(c.b).meter_totals() == {}
    assert "failed" not in await statuses(db_url)

    # It connects again: the next flush delivers what waited, once.
    emulator.authorize_account(c.b)
    second = await flush(cfg)
    assert second.error is None
    assert await statuses(db_url) == {"reported": 300}
    for acct in c.accounts:
        assert recorded(c, acct, meters[acct]) == sums[acct], acct


async def test_a_customer_not_mirrored_yet_waits_for_its_account(
    db_url: str, emulator: Emulator, db: Database
) -> None:
    c = await connect(db, emulator)
    meter = await make_meter(c, c.a)
    await make_meter(c, c.platform)
    http = stripe.AIOHTTPClient()
    try:
        client = emulator.client(http_client=http)
        new = await client.v1.customers.create_async(options=options(c, c.a))
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]
    rows = random_rows([new.id], 20, spread=60, seed=2)
    await insert_rows(db_url, rows)
    cfg = usage_config(db_url, c)

    first = await flush(cfg)

    # Its account is not known until account a's sync mirrors it: the rows wait (within
    # usage.unresolved_grace), rather than going to the platform and failing.
    assert first.rows_waiting == 20 and first.rows_reported == 0
    assert await statuses(db_url) == {"pending": 20}
    assert emulator.stats.count(METER_POST) == 0

    await mirror(db, c.a, "customers", [orjson.loads(str(new))])
    second = await flush(cfg)

    assert second.rows_reported == 20
    assert recorded(c, c.a, meter) == {new.id: sum(r[4] for r in rows)}
