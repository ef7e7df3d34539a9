"""Helpers for the application-view tests: a seeded emulator account written into the mirror.

`sync_emulator` is a resync in miniature: every object of the emulator goes into the mirror
through the real writer, top-level types from `emu.objects(...)`, children with their parent's
id (from the object's own parent field, or listed per parent over HTTP through the real client
where Stripe computes them: checkout line items, product features, active entitlements).
`synced` (a fixture) is that account in the mirror; `SUPABASE`, `admin` and `as_role` give a
database Supabase's roles and run queries as PostgREST would.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
import stripe

from syncd.config import Config
from syncd.db import Database
from syncd.emulator import Emulator
from syncd.lifecycle import Lifecycle
from syncd.registry import BY_TABLE, RESOURCES, Resource
from syncd.resync import Resync
from syncd.stripe_api import StripeAPI
from syncd.versions import Version
from syncd.writer import Writer
from tests.conftest import emulator_config

API_VERSION = "2025-03-31.basil"
JSON = dict[str, Any]
# Owned children whose objects name their parent.
PARENT_FIELD = {"subscription_items": "subscription", "invoice_line_items": "invoice"}
# Owned children listed per parent over HTTP (Stripe computes or hides them otherwise).
LISTED = {
    "checkout_session_line_items": "/v1/checkout/sessions/{id}/line_items",
    "product_features": "/v1/products/{id}/features",
    "active_entitlements": "/v1/entitlements/active_entitlements",
}


def _chunks(items: list[JSON], size: int = 500) -> Iterable[list[JSON]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


async def _list_all(api: StripeAPI, path: str, params: dict[str, Any]) -> list[JSON]:
    out: list[JSON] = []
    after: str | None = None
    while True:
        page = await api.get(
            path, {**params, "limit": 100, **({"starting_after": after} if after else {})}
        )
        out.extend(page["data"])
        if not page["has_more"]:
            return out
        after = page["data"][-1]["id"]


async def sync_emulator(
    emu: Emulator, db: Database, cfg: Config, *, tables: Iterable[str] | None = None
) -> dict[str, int]:
    """Write the emulator's objects into the mirror; returns rows written per table."""
    wanted = set(tables) if tables is not None else {r.table for r in RESOURCES}
    writer = Writer(db)
    version = Version.at(float(emu.clock.now()))
    counts: dict[str, int] = {}

    async def write(resource: Resource, objs: list[JSON], parent_id: str | None = None) -> None:
        async def fn(conn: Any) -> None:
            if parent_id is None:
                for chunk in _chunks(objs):
                    await writer.upsert(
                        conn, resource, chunk, version=version, api_version=API_VERSION
                    )
            else:
                await writer.replace_children(
                    conn, resource, parent_id, objs, version=version, api_version=API_VERSION
                )

        await db.transact(fn)
        counts[resource.table] = counts.get(resource.table, 0) + len(objs)

    for resource in RESOURCES:
        if resource.table in wanted and not resource.owned:
            await write(resource, emu.objects(resource.object))
    for table, field in PARENT_FIELD.items():
        if table not in wanted:
            continue
        resource = BY_TABLE[table]
        assert resource.parent is not None
        by_parent: dict[str, list[JSON]] = defaultdict(list)
        for obj in emu.objects(resource.object):
            if not obj.get("deleted"):
                by_parent[obj[field]].append(obj)
        for parent in emu.objects(BY_TABLE[resource.parent].object):
            if not parent.get("deleted"):
                await write(resource, by_parent.get(parent["id"], []), parent["id"])
    listed = [t for t in LISTED if t in wanted]
    if listed:
        async with StripeAPI(cfg, api_key=emu.api_key) as api:
            for table in listed:
                resource = BY_TABLE[table]
                assert resource.parent is not None
                for parent in emu.objects(BY_TABLE[resource.parent].object):
                    if parent.get("deleted"):
                        continue
                    path = LISTED[table].format(id=parent["id"])
                    params = {"customer": parent["id"]} if table == "active_entitlements" else {}
                    await write(resource, await _list_all(api, path, params), parent["id"])
    return counts


async def sdk_client(emu: Emulator) -> tuple[stripe.StripeClient, stripe.AIOHTTPClient]:
    http = stripe.AIOHTTPClient()
    return emu.client(http_client=http), http


class Account:
    """What `build_account` made, by role in the scenario (ids from the emulator)."""

    def __init__(self) -> None:
        self.subscriber = ""  # user id of a customer with an active subscription on product 1
        self.subscriber_customer = ""
        self.buyer = ""  # user id of a one-time buyer whose customer has the metadata key
        self.guest = ""  # user id of a one-time buyer without any Stripe customer
        self.checkout_user = ""  # user id known only from a subscription checkout's reference
        self.checkout_customer = ""
        self.deleted_customer = ""
        self.legacy_customer = ""  # metadata user id that is not a uuid
        self.archived_price = ""
        self.deleted_price = ""
        self.one_time_price = ""
        self.featured_product = ""
        self.users: list[str] = []  # every user id with a live customer


async def build_account(emu: Emulator) -> Account:
    """A seeded account plus what the tutorial app does: marketing features, an entitlement
    feature, an archived price, one-time Checkout payments (with and without a customer), a
    subscription Checkout by a new user, a deleted customer and a non-uuid user id."""
    acc = Account()
    emu.seed(customers=30, products=3, subscriptions=12, canceled_fraction=0.3, big_every=5)
    client, http = await sdk_client(emu)
    try:
        v1 = client.v1
        products = sorted(emu.objects("product"), key=lambda p: p["name"])
        featured = products[0]
        acc.featured_product = featured["id"]
        await v1.products.update_async(
            featured["id"],
            {"marketing_features": [{"name": "Unlimited projects"}, {"name": "Priority support"}]},
        )
        feature = await v1.entitlements.features.create_async(
            {"name": "API access", "lookup_key": "api-access"}
        )
        await v1.products.features.create_async(featured["id"], {"entitlement_feature": feature.id})
        # a plan some seeded subscribers are on (monthly), archived since
        archived = next(
            p
            for p in emu.objects("price")
            if p["product"] == products[2]["id"] and p["recurring"]["interval"] == "month"
        )
        await v1.prices.update_async(archived["id"], {"active": False})
        acc.archived_price = archived["id"]
        # a plan deleted in Stripe: its price is gone (tombstoned in the mirror)
        doomed = await v1.plans.create_async(
            {"amount": 700, "currency": "usd", "interval": "month", "product": featured["id"]}
        )
        await v1.plans.delete_async(doomed.id)
        acc.deleted_price = doomed.id
        credits = await v1.products.create_async({"name": "Credits pack"})
        one_time = await v1.prices.create_async(
            {"product": credits.id, "currency": "usd", "unit_amount": 1500}
        )
        acc.one_time_price = one_time.id

        subs = [s for s in emu.objects("subscription") if s["status"] == "active"]
        prices = {p["id"]: p for p in emu.objects("price") if not p.get("deleted")}
        sub = next(
            s
            for s in subs
            if prices[s["items"]["data"][0]["price"]["id"]]["product"] == featured["id"]
        )
        customers = {c["id"]: c for c in emu.objects("customer")}
        acc.subscriber_customer = sub["customer"]
        acc.subscriber = customers[sub["customer"]]["metadata"]["supabase_user_id"]

        # a one-time purchase by a known customer
        subscribed = {s["customer"] for s in emu.objects("subscription")}
        plain = [c for c in customers.values() if c["id"] not in subscribed]
        buyer = plain[0]
        acc.buyer = buyer["metadata"]["supabase_user_id"]
        session = await v1.checkout.sessions.create_async(
            {
                "mode": "payment",
                "customer": buyer["id"],
                "client_reference_id": acc.buyer,
                "line_items": [{"price": one_time.id, "quantity": 2}],
                "metadata": {"order": "A-1"},
            }
        )
        emu.complete_checkout_session(session.id)
        # a guest purchase: Checkout creates no customer for a one-time payment
        acc.guest = "6b4f0a3e-0d4c-4c1e-9a55-7f1f0c2b9d11"
        session = await v1.checkout.sessions.create_async(
            {
                "mode": "payment",
                "client_reference_id": acc.guest,
                "line_items": [{"price": one_time.id, "quantity": 1}],
            }
        )
        emu.complete_checkout_session(session.id)
        # a new user subscribes through Checkout: the customer has no metadata
        acc.checkout_user = "0f0e7c52-5a3b-4d7e-8f59-2c1d9e8b7a60"
        monthly = next(p for p in prices.values() if p["product"] == featured["id"])
        session = await v1.checkout.sessions.create_async(
            {
                "mode": "subscription",
                "client_reference_id": acc.checkout_user,
                "line_items": [{"price": monthly["id"], "quantity": 1}],
            }
        )
        done = emu.complete_checkout_session(session.id, email="new@example.com", name="New User")
        acc.checkout_customer = done["customer"]
        # a customer deleted in Stripe, and one whose user id is not a uuid
        acc.deleted_customer = plain[1]["id"]
        await v1.customers.delete_async(plain[1]["id"])
        legacy = await v1.customers.create_async(
            {"email": "legacy@example.com", "metadata": {"supabase_user_id": "legacy-42"}}
        )
        acc.legacy_customer = legacy.id
        acc.users = sorted(
            {
                c["metadata"]["supabase_user_id"]
                for c in emu.objects("customer")
                if not c.get("deleted") and c["metadata"].get("supabase_user_id")
            }
            | {acc.checkout_user}
        )
    finally:
        await http.close_async()
    return acc


VIEWS = (
    "customers",
    "subscriptions",
    "subscription_items",
    "pricing_plans",
    "payments",
    "invoices",
    "active_entitlements",
)


def ts(value: Any) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


@dataclass
class Synced:
    emu: Emulator
    db: Database
    cfg: Config
    acc: Account

    def objects(self, type_: str) -> dict[str, dict[str, Any]]:
        return {o["id"]: o for o in self.emu.objects(type_)}


@pytest.fixture(params=["writer", "resync"])
async def synced(
    emulator: Emulator, db_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[Synced]:
    """The account in the mirror: written object by object with the real writer, or by the
    daemon's full resync listing the emulator over HTTP."""
    cfg = emulator_config(db_url, emulator)
    acc = await build_account(emulator)
    async with Database.connect(cfg.database, min_size=1) as db:
        if request.param == "writer":
            await sync_emulator(emulator, db, cfg)
        else:
            async with StripeAPI(cfg) as api:
                resync = Resync(cfg, db, api, Writer(db), Lifecycle(1.0))
                result = await resync.run(reason="test")
            assert result.objects > 0
            assert set(result.summary()["unavailable"]) <= {"tax_rates", "early_fraud_warnings"}
        yield Synced(emulator, db, cfg, acc)


SUPABASE = """
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN NOINHERIT;
    END IF;
END $$;
CREATE SCHEMA auth;
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $f$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
    )::uuid
$f$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated;
"""


async def admin(db: Database, sql: str) -> None:
    await db.run(lambda c: c.execute(sql))


async def as_role(
    db: Database, role: str, sql: str, *args: Any, user: str | None = None
) -> list[asyncpg.Record]:
    """Run `sql` as PostgREST would for a request: SET LOCAL ROLE plus the JWT claims."""

    async def fn(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        await conn.execute(f"SET LOCAL ROLE {role}")
        if user is not None:
            claims = json.dumps({"sub": user, "role": role})
            await conn.execute("SELECT set_config('request.jwt.claims', $1, true)", claims)
        return await conn.fetch(sql, *args)  # type: ignore[no-any-return]

    return await db.run(fn)
