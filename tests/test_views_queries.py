"""docs/queries.md: every recipe runs verbatim against a synced emulator account and answers what
the emulator's own objects say."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Coroutine
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from syncd import history
from syncd.registry import BY_TABLE
from syncd.versions import Version
from syncd.writer import Writer
from tests.conftest import ROOT
from tests.support.views import Synced, ts

Check = Callable[[Synced, str], Coroutine[Any, Any, None]]
CHECKS: dict[str, Check] = {}
LIVE = ("active", "trialing")


def recipes() -> dict[str, str]:
    text = (ROOT / "docs" / "queries.md").read_text(encoding="utf-8")
    out: dict[str, str] = {}
    for block in re.findall(r"```sql\n(.*?)```", text, re.DOTALL):
        m = re.match(r"-- recipe: (\w+)\n", block)
        assert m, f"an sql block in docs/queries.md has no '-- recipe: name' line:\n{block}"
        assert m.group(1) not in out, f"recipe {m.group(1)} twice"
        out[m.group(1)] = block
    return out


def check(fn: Check) -> Check:
    CHECKS[fn.__name__.removeprefix("check_")] = fn
    return fn


async def run(s: Synced, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    n = len(set(re.findall(r"\$\d", sql)))
    rows = await s.db.run(lambda c: c.fetch(sql, *args[:n]), transaction=False)
    return [tuple(r) for r in rows]


def user_subs(s: Synced, user: str, statuses: tuple[str, ...]) -> list[dict[str, Any]]:
    customers = {c["id"]: c for c in s.emu.objects("customer")}

    def owner(sub: dict[str, Any]) -> str | None:
        if sub["customer"] == s.acc.checkout_customer:
            return s.acc.checkout_user
        return customers[sub["customer"]]["metadata"].get("supabase_user_id")  # type: ignore[no-any-return]

    return [
        x for x in s.emu.objects("subscription") if owner(x) == user and x["status"] in statuses
    ]


@check
async def check_is_subscribed(s: Synced, sql: str) -> None:
    acc = s.acc
    for user in (acc.subscriber, acc.checkout_user, acc.buyer, acc.guest, *acc.users):
        expected = bool(user_subs(s, user, LIVE))
        assert await run(s, sql, user) == [(expected,)], user
    assert await run(s, sql, acc.subscriber) == [(True,)]
    assert await run(s, sql, acc.buyer) == [(False,)]


@check
async def check_subscribed_per_account(s: Synced, sql: str) -> None:
    # One account here (the key's own, account_id ''): one row per user with subscriptions.
    acc = s.acc
    for user in (acc.subscriber, acc.checkout_user, acc.buyer, acc.guest, *acc.users):
        subs = user_subs(s, user, tuple({x["status"] for x in s.emu.objects("subscription")}))
        expected = [("", bool(user_subs(s, user, LIVE)))] if subs else []
        assert await run(s, sql, user) == expected, user
    assert await run(s, sql, acc.subscriber) == [("", True)]


@check
async def check_current_subscription(s: Synced, sql: str) -> None:
    prices = {p["id"]: p for p in s.emu.objects("price")}
    products = {p["id"]: p for p in s.emu.objects("product")}
    for user in (s.acc.subscriber, s.acc.checkout_user, *s.acc.users):
        subs = user_subs(s, user, (*LIVE, "past_due"))
        subs.sort(key=lambda x: (-x["created"], x["id"]))
        expected = []
        for sub in subs:
            item = sub["items"]["data"][0]
            price = prices[item["price"]["id"]]
            expected.append(
                (
                    sub["id"],
                    sub["status"],
                    ts(item["current_period_end"]),
                    sub["cancel_at_period_end"],
                    products[price["product"]]["name"],
                    price["unit_amount"],
                    price["currency"],
                    price["recurring"]["interval"],
                )
            )
        assert await run(s, sql, user) == expected, user
    assert await run(s, sql, s.acc.subscriber)


@check
async def check_entitlements(s: Synced, sql: str) -> None:
    for user in (s.acc.subscriber, s.acc.checkout_user):
        assert await run(s, sql, user) == [("api-access", "API access")]
    featured = s.acc.featured_product
    for user in s.acc.users:
        on_featured = any(
            it["price"]["product"] == featured
            for sub in user_subs(s, user, (*LIVE, "past_due"))
            for it in sub["items"]["data"]
        )
        assert bool(await run(s, sql, user)) == on_featured, user


@check
async def check_plan_features(s: Synced, sql: str) -> None:
    products = {p["id"]: p for p in s.emu.objects("product")}
    items = [i for i in s.emu.objects("subscription_item") if not i.get("deleted")]
    for user in (s.acc.subscriber, s.acc.checkout_user, *s.acc.users):
        subs = {x["id"] for x in user_subs(s, user, LIVE)}
        names = {
            f["name"]
            for i in items
            if i["subscription"] in subs
            for f in products[i["price"]["product"]]["marketing_features"]
        }
        assert await run(s, sql, user) == [(n,) for n in sorted(names)], user
    assert await run(s, sql, s.acc.subscriber) == [("Priority support",), ("Unlimited projects",)]


@check
async def check_pricing_page(s: Synced, sql: str) -> None:
    products = {p["id"]: p for p in s.emu.objects("product")}
    expected = sorted(
        (
            (p["unit_amount"], p["id"]),
            (
                p["id"],
                products[p["product"]]["name"],
                products[p["product"]]["description"],
                p["unit_amount"],
                p["currency"],
                p["recurring"]["interval"],
                [f["name"] for f in products[p["product"]]["marketing_features"]],
            ),
        )
        for p in s.emu.objects("price")
        if not p.get("deleted")
        and p["active"]
        and products[p["product"]]["active"]
        and p["recurring"]
    )
    got = await run(s, sql)
    assert got == [row for _, row in expected]
    assert s.acc.archived_price not in {r[0] for r in got}


@check
async def check_payment_history(s: Synced, sql: str) -> None:
    acc = s.acc
    sessions = {x["id"]: x for x in s.emu.objects("checkout.session")}
    buyer = await run(s, sql, acc.buyer)
    assert len(buyer) == 1
    session = sessions[buyer[0][0]]
    assert buyer == [(session["id"], 3000, "usd", "paid", "Credits pack", ts(session["created"]))]
    assert [r[1] for r in await run(s, sql, acc.guest)] == [1500]
    paid = [
        i
        for i in s.emu.objects("invoice")
        if i["customer"] == acc.subscriber_customer and i["status"] == "paid"
    ]
    expected = sorted(
        (
            (-i["status_transitions"]["paid_at"], i["id"]),
            (
                i["id"],
                i["amount_paid"],
                i["currency"],
                "paid",
                i["lines"]["data"][0]["description"],
                ts(i["status_transitions"]["paid_at"]),
            ),
        )
        for i in paid
    )
    assert paid and await run(s, sql, acc.subscriber) == [row for _, row in expected]


@check
async def check_invoices(s: Synced, sql: str) -> None:
    mine = [i for i in s.emu.objects("invoice") if i["customer"] == s.acc.subscriber_customer]
    expected = sorted(
        (
            (-i["created"], i["id"]),
            (
                i["id"],
                i["number"],
                i["status"],
                i["total"],
                i["currency"],
                i["hosted_invoice_url"],
                ts(i["created"]),
            ),
        )
        for i in mine
    )
    assert mine and await run(s, sql, s.acc.subscriber) == [row for _, row in expected]


@check
async def check_mrr_by_plan(s: Synced, sql: str) -> None:
    prices = {p["id"]: p for p in s.emu.objects("price")}
    products = {p["id"]: p for p in s.emu.objects("product")}
    per_month = {"day": Decimal(365) / 12, "week": Decimal(52) / 12, "month": Decimal(1)}
    per_month["year"] = Decimal(1) / 12
    mrr: dict[str, Decimal] = defaultdict(Decimal)
    subs: dict[str, set[str]] = defaultdict(set)
    for sub in s.emu.objects("subscription"):
        if sub["status"] not in ("active", "past_due"):
            continue
        for item in [
            i for i in s.emu.objects("subscription_item") if i.get("subscription") == sub["id"]
        ]:
            price = prices[item["price"]["id"]]
            rec = price["recurring"]
            mrr[price["product"]] += (
                item["quantity"]
                * price["unit_amount"]
                * per_month[rec["interval"]]
                / rec["interval_count"]
            )
            subs[price["product"]].add(sub["id"])
    expected = sorted(
        (
            (-int(v.quantize(Decimal(1), ROUND_HALF_UP)), pid),
            (
                pid,
                products[pid]["name"],
                "usd",
                len(subs[pid]),
                int(v.quantize(Decimal(1), ROUND_HALF_UP)),
            ),
        )
        for pid, v in mrr.items()
    )
    got = await run(s, sql)
    assert len(got) >= 2
    assert got == [row for _, row in expected]


@check
async def check_plan_changes(s: Synced, sql: str) -> None:
    """History on for subscriptions: each one as synced is its first version. Then a plan change
    of the subscriber's, written as the event stream would, and back (the mirror ends as Stripe
    holds it: the recipe is the last, the other checks read the mirror before)."""
    await history.apply(s.db, ["subscriptions"])
    prices = {p["id"]: p for p in s.emu.objects("price")}
    names = {p["id"]: p["name"] for p in s.emu.objects("product")}

    def plan(price: str) -> str:
        return names[prices[price]["product"]]  # type: ignore[no-any-return]

    subs = sorted(user_subs(s, s.acc.subscriber, ("active", "trialing", "past_due", "canceled")))
    first = [(x["id"], x["status"], x["items"]["data"][0]["price"]["id"]) for x in subs]
    assert first
    assert sorted(r[:1] + r[2:] for r in await run(s, sql, s.acc.subscriber)) == sorted(
        (sid, status, price, plan(price)) for sid, status, price in first
    )
    sub = next(x for x in s.emu.objects("subscription") if x["id"] == first[0][0])
    other = next(
        p
        for p in prices.values()
        if p.get("recurring")
        and p["active"]
        and p["id"].startswith("price_")  # a price, not a legacy plan (not in pricing_plans)
        and p["id"] != first[0][2]
    )
    changed = {**sub, "items": {**sub["items"], "data": [dict(sub["items"]["data"][0])]}}
    changed["items"]["data"][0]["price"] = other
    writer = Writer(s.db)
    for n, obj in enumerate((changed, sub)):
        await s.db.transact(
            lambda c, o=obj, n=n: writer.upsert(
                c,
                BY_TABLE["subscriptions"],
                [o],
                version=Version.at(s.emu.clock.now() + 3600 * (n + 1)),
                api_version=None,
                source=f"evt_plan_change_{n}",
            )
        )
    got = [r[:1] + r[2:] for r in await run(s, sql, s.acc.subscriber)]
    assert got[-2:] == [
        (sub["id"], sub["status"], other["id"], plan(other["id"])),
        (sub["id"], sub["status"], first[0][2], plan(first[0][2])),
    ]
    assert await run(s, sql, s.acc.guest) == []


def test_every_recipe_has_a_check() -> None:
    assert set(recipes()) == set(CHECKS)


async def test_recipes_answer_what_stripe_holds(synced: Synced) -> None:
    for name, sql in recipes().items():
        await CHECKS[name](synced, sql)
