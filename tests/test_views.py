"""The application schema: each view returns what the tutorial app expects, from data synced out
of a seeded emulator account (asserted against the emulator's own objects)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from syncd.config import Config
from syncd.db import Database, Tx
from syncd.registry import BY_TABLE
from syncd.versions import Version
from syncd.writer import Writer
from tests.support.views import VIEWS, Synced, ts


async def rows(db: Database, sql: str, *args: Any) -> list[dict[str, Any]]:
    return await db.run(lambda c: c.fetch(sql, *args), transaction=False)  # type: ignore[no-any-return]


async def test_customers_view_maps_user_ids(synced: Synced) -> None:
    acc, db = synced.acc, synced.db
    customers = synced.objects("customer")
    got = {r["stripe_customer_id"]: r for r in await rows(db, "SELECT * FROM billing.customers")}
    live = {
        cid
        for cid, c in customers.items()
        if not c.get("deleted")
        and (c["metadata"].get("supabase_user_id") or cid == acc.checkout_customer)
    }
    assert set(got) == live
    sub = got[acc.subscriber_customer]
    cus = customers[acc.subscriber_customer]
    assert dict(sub) == {
        "id": acc.subscriber,
        "stripe_customer_id": cus["id"],
        "email": cus["email"],
        "full_name": cus["name"],
        "created_at": ts(cus["created"]),
        "updated_at": sub["updated_at"],
        "account_id": "",  # the key's own account (Connect: the account's id)
    }
    # Checkout made this customer without metadata: the session's client_reference_id maps it.
    assert got[acc.checkout_customer]["id"] == acc.checkout_user
    assert got[acc.checkout_customer]["email"] == "new@example.com"
    assert acc.deleted_customer not in got  # tombstoned in the mirror
    assert got[acc.legacy_customer]["id"] == "legacy-42"  # not a uuid: still readable
    one = await rows(db, "SELECT * FROM billing.customers WHERE id = $1", acc.subscriber)
    assert [r["stripe_customer_id"] for r in one] == [acc.subscriber_customer]


async def test_subscriptions_view_matches_stripe(synced: Synced) -> None:
    acc, db = synced.acc, synced.db
    customers = synced.objects("customer")
    subs = synced.objects("subscription")
    got = {r["id"]: r for r in await rows(db, "SELECT * FROM billing.subscriptions")}
    assert set(got) == set(subs)
    assert {r["status"] for r in got.values()} >= {"active", "canceled"}
    for sid, s in subs.items():
        row = got[sid]
        item = s["items"]["data"][0]
        cus = customers[s["customer"]]
        expected_user = cus["metadata"].get("supabase_user_id") or (
            acc.checkout_user if s["customer"] == acc.checkout_customer else None
        )
        assert row["user_id"] == expected_user
        assert row["customer_id"] == s["customer"]
        assert row["status"] == s["status"]
        assert row["price_id"] == item["price"]["id"]
        assert row["product_id"] == item["price"]["product"]
        assert row["quantity"] == item["quantity"]
        assert row["cancel_at_period_end"] == s["cancel_at_period_end"]
        assert row["cancel_at"] == ts(s["cancel_at"])
        assert row["canceled_at"] == ts(s["canceled_at"])
        # basil moved the period to the items: the view reads it from there
        assert "current_period_end" not in s
        assert row["current_period_start"] == ts(item["current_period_start"])
        assert row["current_period_end"] == ts(item["current_period_end"])
        assert row["trial_start"] == ts(s["trial_start"])
        assert row["trial_end"] == ts(s["trial_end"])
        assert row["created_at"] == ts(s["created"])
    mine = await rows(
        db, "SELECT id FROM billing.subscriptions WHERE user_id = $1", acc.checkout_user
    )
    assert len(mine) == 1 and subs[mine[0]["id"]]["customer"] == acc.checkout_customer


async def test_subscription_items_view_lists_every_item(synced: Synced) -> None:
    items = synced.objects("subscription_item")
    got = {r["id"]: r for r in await rows(synced.db, "SELECT * FROM billing.subscription_items")}
    live = {i for i, o in items.items() if not o.get("deleted")}
    assert set(got) == live
    assert any(n > 10 for n in _count_by(got.values(), "subscription_id").values())  # > a page
    for iid in live:
        assert got[iid]["price_id"] == items[iid]["price"]["id"]
        assert got[iid]["quantity"] == items[iid]["quantity"]


def _count_by(rows_: Any, key: str) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for r in rows_:
        out[r[key]] = out.get(r[key], 0) + 1
    return out


async def test_pricing_plans_view(synced: Synced) -> None:
    acc = synced.acc
    prices = synced.objects("price")
    products = synced.objects("product")
    got = {r["id"]: r for r in await rows(synced.db, "SELECT * FROM billing.pricing_plans")}
    assert prices[acc.deleted_price].get("deleted")
    prices = {pid: p for pid, p in prices.items() if not p.get("deleted")}
    assert set(got) == set(prices)  # the deleted plan's price is not there
    for pid, p in prices.items():
        row, prod = got[pid], products[p["product"]]
        recurring = p["recurring"] or {}
        assert row["product_id"] == prod["id"]
        assert row["name"] == prod["name"]
        assert row["description"] == prod["description"]
        assert row["amount"] == p["unit_amount"]
        assert row["currency"] == p["currency"]
        assert row["interval"] == recurring.get("interval")
        assert row["interval_count"] == recurring.get("interval_count")
        assert row["trial_period_days"] == recurring.get("trial_period_days")
        assert row["features"] == [f["name"] for f in prod["marketing_features"]]
        assert row["is_active"] == (p["active"] and prod["active"])
        assert row["created_at"] == ts(p["created"])
    featured = [r for r in got.values() if r["product_id"] == acc.featured_product]
    assert featured and all(
        r["features"] == ["Unlimited projects", "Priority support"] for r in featured
    )
    assert got[acc.archived_price]["is_active"] is False
    assert got[acc.one_time_price]["interval"] is None
    assert got[acc.one_time_price]["amount"] == 1500


async def test_payments_view(synced: Synced) -> None:
    acc, db = synced.acc, synced.db
    sessions = synced.objects("checkout.session")
    invoices = synced.objects("invoice")
    buyer = await rows(db, "SELECT * FROM billing.payments WHERE user_id = $1", acc.buyer)
    assert len(buyer) == 1
    session = sessions[buyer[0]["id"]]
    assert session["mode"] == "payment" and session["client_reference_id"] == acc.buyer
    assert dict(buyer[0]) == {
        "id": session["id"],
        "user_id": acc.buyer,
        "customer_id": session["customer"],
        "amount": 3000,
        "currency": "usd",
        "status": "paid",
        "description": "Credits pack",
        "metadata": {"order": "A-1"},
        "created_at": ts(session["created"]),
        "source": "checkout_session",
        "payment_intent_id": session["payment_intent"],
        "account_id": "",
    }
    guest = await rows(db, "SELECT * FROM billing.payments WHERE user_id = $1", acc.guest)
    assert [(r["amount"], r["customer_id"]) for r in guest] == [(1500, None)]
    paid = {
        i["id"]: i
        for i in invoices.values()
        if i["customer"] == acc.subscriber_customer and i["status"] == "paid"
    }
    assert paid
    sub = await rows(db, "SELECT * FROM billing.payments WHERE user_id = $1", acc.subscriber)
    assert {r["id"] for r in sub} == set(paid)
    for r in sub:
        inv = paid[r["id"]]
        assert r["amount"] == inv["amount_paid"] and r["status"] == "paid"
        assert r["created_at"] == ts(inv["status_transitions"]["paid_at"])
        assert r["description"] == inv["lines"]["data"][0]["description"]
        assert r["source"] == "invoice"
    everyone = await rows(db, "SELECT id FROM billing.payments")
    expected = {i for i, o in invoices.items() if o["status"] == "paid"} | {
        s for s, o in sessions.items() if o["mode"] == "payment" and o["status"] == "complete"
    }
    assert {r["id"] for r in everyone} == expected


async def test_invoices_view(synced: Synced) -> None:
    acc = synced.acc
    invoices = synced.objects("invoice")
    got = await rows(synced.db, "SELECT * FROM billing.invoices WHERE user_id = $1", acc.subscriber)
    mine = {i: o for i, o in invoices.items() if o["customer"] == acc.subscriber_customer}
    assert {r["id"] for r in got} == set(mine)
    for r in got:
        inv = mine[r["id"]]
        assert (r["status"], r["amount_due"], r["amount_paid"], r["total"]) == (
            inv["status"],
            inv["amount_due"],
            inv["amount_paid"],
            inv["total"],
        )
        assert r["hosted_invoice_url"] == inv["hosted_invoice_url"]


async def test_active_entitlements_view(synced: Synced) -> None:
    acc, db = synced.acc, synced.db
    sql = "SELECT lookup_key, feature_name, customer_id FROM billing.active_entitlements WHERE user_id = $1"
    for user, customer in (
        (acc.subscriber, acc.subscriber_customer),
        (acc.checkout_user, acc.checkout_customer),
    ):
        assert [tuple(r) for r in await rows(db, sql, user)] == [
            ("api-access", "API access", customer)
        ]
    assert await rows(db, sql, acc.buyer) == []


async def test_views_run_as_the_caller(db: Database) -> None:
    options = await rows(
        db,
        "SELECT c.relname, c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'billing' AND c.relkind = 'v'",
    )
    got = {r["relname"]: r["reloptions"] for r in options}
    assert set(VIEWS) <= set(got)
    for view in VIEWS:
        assert got[view] == ["security_invoker=true"], view


# The user mapping itself, written in the orders a resync and the event stream can produce.

CUS = {"id": "cus_map1", "object": "customer", "created": 1700000000, "livemode": False}


def session(sid: str, ref: str | None, created: int, status: str = "complete") -> dict[str, Any]:
    return {
        "id": sid,
        "object": "checkout.session",
        "created": created,
        "customer": "cus_map1",
        "client_reference_id": ref,
        "mode": "subscription",
        "status": status,
        "metadata": {},
    }


async def write(db: Database, table: str, objs: list[dict[str, Any]], version: float) -> None:
    writer = Writer(db)
    v = Version.at(version)
    await db.transact(
        lambda c: writer.upsert(c, BY_TABLE[table], objs, version=v, api_version=None)
    )


async def user_id(db: Database) -> str | None:
    return await db.run(  # type: ignore[no-any-return]
        lambda c: c.fetchval("SELECT user_id FROM stripe.customers WHERE id = 'cus_map1'"),
        transaction=False,
    )


async def test_checkout_reference_maps_a_customer_written_before_it(db: Database) -> None:
    await write(db, "customers", [{**CUS, "metadata": {}}], 1)
    assert await user_id(db) is None
    await write(db, "checkout_sessions", [session("cs_1", "user-a", 10, status="open")], 2)
    assert await user_id(db) is None  # not completed: the buyer may never have paid
    await write(db, "checkout_sessions", [session("cs_1", "user-a", 10)], 3)
    assert await user_id(db) == "user-a"
    await write(db, "checkout_sessions", [session("cs_2", "user-b", 20)], 4)
    assert await user_id(db) == "user-b"  # the latest completed session wins


async def test_checkout_reference_maps_a_customer_written_after_it(db: Database) -> None:
    await write(db, "checkout_sessions", [session("cs_1", "user-a", 10)], 1)
    await write(db, "customers", [{**CUS, "metadata": {}}], 2)
    assert await user_id(db) == "user-a"
    await write(db, "customers", [{**CUS, "metadata": {"supabase_user_id": ""}}], 3)
    assert await user_id(db) == "user-a"  # an empty value is no user id


async def test_metadata_wins_over_checkout_reference(db: Database) -> None:
    await write(db, "customers", [{**CUS, "metadata": {"supabase_user_id": "meta-user"}}], 1)
    await write(db, "checkout_sessions", [session("cs_1", "user-a", 10)], 2)
    assert await user_id(db) == "meta-user"
    await write(db, "customers", [{**CUS, "metadata": {}}], 3)
    assert await user_id(db) == "user-a"  # the key was removed: back to the fallback
    await write(db, "customers", [{**CUS, "metadata": {"supabase_user_id": "meta-2"}}], 4)
    assert await user_id(db) == "meta-2"


async def test_customer_written_while_its_session_commits_keeps_the_mapping(db: Database) -> None:
    """A customer upsert that waits for a concurrent session writer (which holds the customer's
    row) must see that writer's session once it commits, not its own stale snapshot."""
    await write(db, "customers", [{**CUS, "metadata": {}}], 1)
    writer = Writer(db)
    async with db.pool.acquire() as sessions_conn, db.pool.acquire() as customers_conn:
        tx = sessions_conn.transaction()
        await tx.start()
        await writer.upsert(
            Tx(db, sessions_conn),
            BY_TABLE["checkout_sessions"],
            [session("cs_1", "user-a", 10)],
            version=Version.at(2),
            api_version=None,
        )
        # the customers writer starts its statement now, then waits for the session's lock
        pending = asyncio.ensure_future(
            writer.upsert(
                Tx(db, customers_conn),
                BY_TABLE["customers"],
                [{**CUS, "metadata": {}, "email": "x@example.com"}],
                version=Version.at(3),
                api_version=None,
            )
        )
        await asyncio.sleep(0.3)
        assert not pending.done()
        await tx.commit()
        await pending
    assert await user_id(db) == "user-a"


@pytest.mark.parametrize("first", ["customer", "session"])
async def test_first_writes_of_customer_and_session_at_once(db: Database, first: str) -> None:
    """Neither transaction can see the other's uncommitted row: the mapping must still be made
    (the resync writes customers and sessions from several connections at once)."""
    writer = Writer(db)
    writes = {
        "customer": (BY_TABLE["customers"], [{**CUS, "metadata": {}}]),
        "session": (BY_TABLE["checkout_sessions"], [session("cs_1", "user-a", 10)]),
    }
    second = "session" if first == "customer" else "customer"
    async with db.pool.acquire() as first_conn, db.pool.acquire() as second_conn:
        tx = first_conn.transaction()
        await tx.start()
        res, objs = writes[first]
        await writer.upsert(Tx(db, first_conn), res, objs, version=Version.at(1), api_version=None)
        res2, objs2 = writes[second]

        async def later() -> None:
            async with second_conn.transaction():
                await writer.upsert(
                    Tx(db, second_conn), res2, objs2, version=Version.at(1), api_version=None
                )

        pending = asyncio.ensure_future(later())
        await asyncio.sleep(0.3)
        await tx.commit()
        await pending
    assert await user_id(db) == "user-a"


async def test_fallback_follows_the_configured_metadata_key(cfg: Config) -> None:
    async with Database.connect(
        cfg.database, min_size=1, settings={"syncd.user_id_key": "app_user"}
    ) as db:
        await write(db, "customers", [{**CUS, "metadata": {"app_user": "meta-user"}}], 1)
        await write(db, "checkout_sessions", [session("cs_1", "user-a", 10)], 2)
        assert await user_id(db) == "meta-user"
        # the default key means nothing under another configured key: the fallback applies
        await write(db, "customers", [{**CUS, "metadata": {"supabase_user_id": "x"}}], 3)
        assert await user_id(db) == "user-a"


async def test_other_writers_get_the_same_user_id(db: Database) -> None:
    """syncd's upserts compute user_id themselves; a plain INSERT/UPDATE (psql, an older syncd)
    still gets it from the triggers, metadata first, then the checkout fallback."""
    await write(db, "checkout_sessions", [session("cs_1", "user-a", 10)], 1)

    async def sql(statement: str, *args: Any) -> None:
        await db.run(lambda c: c.execute(statement, *args))

    raw = {**CUS, "metadata": {"supabase_user_id": "meta-user"}}
    await sql(
        "INSERT INTO stripe.customers (id, raw, fetched_at, user_id) VALUES ($1, $2::jsonb, now(), 'x')",
        CUS["id"],
        orjson.dumps(raw).decode(),
    )
    assert await user_id(db) == "meta-user"  # an explicit value does not beat the metadata
    await sql("UPDATE stripe.customers SET raw = raw - 'metadata' || '{\"metadata\": {}}'")
    assert await user_id(db) == "user-a"  # the key removed: the checkout fallback
    await sql(
        "UPDATE stripe.customers SET raw = jsonb_set(raw, '{metadata}', '{\"supabase_user_id\": \"\"}')"
    )
    assert await user_id(db) == "user-a"  # an empty value is no user id
    await sql(
        "UPDATE stripe.customers SET raw = jsonb_set(raw, '{metadata}', '{\"supabase_user_id\": \"m2\"}')"
    )
    assert await user_id(db) == "m2"


async def test_page_of_customers_maps_each_from_metadata_or_checkout(db: Database) -> None:
    """One statement writes customers with and without the key: each gets its own user id."""
    await write(db, "checkout_sessions", [session("cs_1", "user-a", 10)], 1)
    page = [
        {**CUS, "metadata": {}},  # cus_map1: Checkout's customer
        {**CUS, "id": "cus_map2", "metadata": {"supabase_user_id": "u2"}},
        {**CUS, "id": "cus_map3", "metadata": {"supabase_user_id": ""}},
    ]
    writer = Writer(db)

    async def counted(c: Any) -> tuple[int, int]:
        # PL/pgSQL calls within this transaction: the row trigger must not run for syncd's writes
        await c.execute("SET LOCAL track_functions = 'pl'")
        await writer.upsert(
            Tx(db, c), BY_TABLE["customers"], page, version=Version.at(2), api_version=None
        )
        row = await c.fetchrow(
            "SELECT pg_stat_get_xact_function_calls('stripe.customers_set_user_id'::regproc) AS row,"
            " pg_stat_get_xact_function_calls('stripe.customers_map_users'::regproc) AS stmt"
        )
        return (row["row"] or 0, row["stmt"] or 0)

    row_calls, statement_calls = await db.run(counted)
    assert row_calls == 0
    assert statement_calls >= 1  # once for the insert (and once more for its own update)
    got = await db.run(
        lambda c: c.fetch("SELECT id, user_id FROM stripe.customers ORDER BY id"), transaction=False
    )
    assert [(r["id"], r["user_id"]) for r in got] == [
        ("cus_map1", "user-a"),
        ("cus_map2", "u2"),
        ("cus_map3", None),
    ]
    # a second, unchanged write keeps them all
    await write(db, "customers", page, 3)
    again = await db.run(
        lambda c: c.fetch("SELECT id, user_id FROM stripe.customers ORDER BY id"), transaction=False
    )
    assert again == got
