"""Renewals (`POST /_emulator/renew`): a period end as Stripe bills it, with its events."""

from __future__ import annotations

from typing import Any

import aiohttp
import stripe

from syncd.emulator import Emulator

# Per renewed subscription, in this order (Stripe: the cycle invoice is created, then the
# subscription's update names it as latest_invoice; then finalization and payment).
RENEWAL_EVENTS = [
    "invoice.created",
    "customer.subscription.updated",
    "invoice.finalized",
    "payment_intent.created",
    "charge.succeeded",
    "payment_intent.succeeded",
    "invoice.paid",
    "invoice.payment_succeeded",
]


async def _customer(aclient: stripe.StripeClient, card: str = "pm_card_visa") -> Any:
    cus = await aclient.v1.customers.create_async({"payment_method": card})
    pm = (await aclient.v1.payment_methods.list_async({"customer": cus.id})).data[0]
    await aclient.v1.customers.update_async(
        cus.id, {"invoice_settings": {"default_payment_method": pm.id}}
    )
    return cus


async def _renew(emu: Emulator, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(base_url=emu.url) as s,
        s.post("/_emulator/renew", json=body if body is not None else {}) as r,
    ):
        return r.status, await r.json()


async def _get(raw: Any, path: str) -> Any:
    async with raw.get(path) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def _all_events(raw: Any) -> list[Any]:
    """Every event over HTTP, oldest first."""
    out: list[Any] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = await _get(raw, "/v1/events?" + "&".join(f"{k}={v}" for k, v in params.items()))
        out += page["data"]
        if not page["has_more"]:
            return out[::-1]
        params["starting_after"] = page["data"][-1]["id"]


def _object_id(ev: Any) -> str:
    return str(ev["data"]["object"]["id"])


async def test_renew_bills_the_next_period(
    emu: Emulator, aclient: stripe.StripeClient, raw: Any
) -> None:
    p1, p2 = await _catalog(aclient)
    subs = []
    for items in ([{"price": p1.id, "quantity": 2}], [{"price": p1.id}, {"price": p2.id}]):
        cus = await _customer(aclient)
        subs.append(
            await aclient.v1.subscriptions.create_async({"customer": cus.id, "items": items})
        )
    trial_cus = await _customer(aclient)
    trial = await aclient.v1.subscriptions.create_async(
        {"customer": trial_cus.id, "items": [{"price": p2.id}], "trial_period_days": 14}
    )
    assert trial.status == "trialing"
    subs.append(trial)
    before = {s.id: await _get(raw, f"/v1/subscriptions/{s.id}") for s in subs}
    customers_before = {
        s.customer: (await _get(raw, f"/v1/customers/{s.customer}"))["next_invoice_sequence"]
        for s in subs
    }
    seen = {e["id"] for e in await _all_events(raw)}

    status, summary = await _renew(emu)
    assert status == 200
    assert summary == {
        "subscriptions": 3,
        "renewed": 3,
        "past_due": 0,
        "canceled": 0,
        "events": 24,
        "event_types": {t: 3 for t in sorted(RENEWAL_EVENTS)},
    }

    new = [e for e in await _all_events(raw) if e["id"] not in seen]
    assert len(new) == 24
    # One subscription after the other, each in Stripe's order, each event naming its objects.
    for k, sub in enumerate(subs):
        chunk = new[8 * k : 8 * (k + 1)]
        assert [e["type"] for e in chunk] == RENEWAL_EVENTS
        sub_now = await _get(raw, f"/v1/subscriptions/{sub.id}")
        old = before[sub.id]
        inv_id = sub_now["latest_invoice"]
        assert inv_id != old["latest_invoice"]
        assert sub_now["status"] == "active"
        upd = chunk[1]
        assert _object_id(upd) == sub.id
        prev = upd["data"]["previous_attributes"]
        assert prev["latest_invoice"] == old["latest_invoice"]
        assert prev["items"] == old["items"]
        assert ("status" in prev) == (sub.id == trial.id)
        # The period moved by one interval on every item; the new period starts at the old end.
        for it_old, it_new in zip(old["items"]["data"], sub_now["items"]["data"], strict=True):
            assert it_new["current_period_start"] == it_old["current_period_end"]
            assert it_new["current_period_end"] > it_new["current_period_start"]
            item = await _get(raw, f"/v1/subscription_items/{it_new['id']}")
            assert item == it_new
        # A new paid invoice with billing_reason subscription_cycle, one line per item.
        inv = await _get(raw, f"/v1/invoices/{inv_id}")
        assert inv["billing_reason"] == "subscription_cycle"
        assert inv["status"] == "paid" and inv["amount_remaining"] == 0
        assert inv["parent"]["subscription_details"]["subscription"] == sub.id
        assert inv["period_end"] == old["items"]["data"][0]["current_period_end"]
        lines = inv["lines"]["data"]
        assert [ln["parent"]["subscription_item_details"]["subscription_item"] for ln in lines] == [
            it["id"] for it in sub_now["items"]["data"]
        ]
        for ln, it in zip(lines, sub_now["items"]["data"], strict=True):
            assert ln["period"] == {
                "start": it["current_period_start"],
                "end": it["current_period_end"],
            }
            assert ln["amount"] == it["price"]["unit_amount"] * it["quantity"]
        assert inv["amount_paid"] == sum(ln["amount"] for ln in lines) > 0
        assert [ln["id"] for ln in (await _get(raw, f"/v1/invoices/{inv_id}/lines"))["data"]] == [
            ln["id"] for ln in lines
        ]
        assert {_object_id(e) for e in chunk if e["type"].startswith("invoice.")} == {inv_id}
        # invoice.created already shows the lines the invoice was created with.
        assert len(chunk[0]["data"]["object"]["lines"]["data"]) == len(lines)
        # The payment: a payment intent and its charge, as pay_invoice makes them.
        pi_id = _object_id(chunk[3])
        pi = await _get(raw, f"/v1/payment_intents/{pi_id}")
        charge = await _get(raw, f"/v1/charges/{pi['latest_charge']}")
        assert pi["status"] == "succeeded" and pi["amount"] == inv["amount_paid"]
        assert pi["description"] == "Subscription update"
        assert charge["payment_intent"] == pi_id and charge["status"] == "succeeded"
        assert pi["customer"] == charge["customer"] == sub.customer
        # The objects served now are the last snapshots their events carried.
        assert chunk[-1]["data"]["object"] == inv
        assert chunk[5]["data"]["object"] == pi
        assert chunk[4]["data"]["object"] == charge
        assert upd["data"]["object"] == sub_now
        assert emu.objects("subscription")[len(subs) - 1 - k] == sub_now
        # Finalizing moved the customer's invoice sequence (Stripe sends no customer.updated).
        cus = await _get(raw, f"/v1/customers/{sub.customer}")
        assert cus["next_invoice_sequence"] == customers_before[sub.customer] + 1
        assert inv["number"].endswith(f"{customers_before[sub.customer]:04d}")
    assert not [e for e in new if e["type"] == "customer.updated"]

    # A second renewal moves on by one more period.
    status, summary = await _renew(emu, {"ids": [subs[0].id]})
    assert status == 200 and summary["renewed"] == 1 and summary["events"] == 8
    again = await _get(raw, f"/v1/subscriptions/{subs[0].id}")
    invoices = (await _get(raw, f"/v1/invoices?subscription={subs[0].id}"))["data"]
    assert [i["billing_reason"] for i in invoices] == [
        "subscription_cycle",
        "subscription_cycle",
        "subscription_create",
    ]
    first_cycle = invoices[1]["lines"]["data"][0]["period"]
    assert again["items"]["data"][0]["current_period_start"] == first_cycle["end"]


async def _catalog(aclient: stripe.StripeClient) -> list[Any]:
    prod = await aclient.v1.products.create_async({"name": "Pro"})
    return [
        await aclient.v1.prices.create_async(
            {
                "product": prod.id,
                "currency": "usd",
                "unit_amount": 1000 * (i + 1),
                "recurring": {"interval": "month"},
            }
        )
        for i in range(2)
    ]


async def test_renew_outcomes_and_selection(
    emu: Emulator, aclient: stripe.StripeClient, raw: Any
) -> None:
    (price, _) = await _catalog(aclient)
    good = await _customer(aclient)
    paid = await aclient.v1.subscriptions.create_async(
        {"customer": good.id, "items": [{"price": price.id}]}
    )
    ending = await aclient.v1.subscriptions.create_async(
        {"customer": good.id, "items": [{"price": price.id}], "cancel_at_period_end": True}
    )
    # The card on file is declined by the time the period ends.
    declined = await _customer(aclient)
    failing = await aclient.v1.subscriptions.create_async(
        {"customer": declined.id, "items": [{"price": price.id}]}
    )
    bad = await aclient.v1.customers.create_async({"payment_method": "pm_card_chargeDeclined"})
    bad_pm = (await aclient.v1.payment_methods.list_async({"customer": bad.id})).data[0]
    await aclient.v1.payment_methods.detach_async(bad_pm.id)
    await aclient.v1.payment_methods.attach_async(bad_pm.id, {"customer": declined.id})
    await aclient.v1.customers.update_async(
        declined.id, {"invoice_settings": {"default_payment_method": bad_pm.id}}
    )
    canceled = await aclient.v1.subscriptions.create_async(
        {"customer": good.id, "items": [{"price": price.id}]}
    )
    await aclient.v1.subscriptions.cancel_async(canceled.id)

    # Every id is checked before anything renews.
    n_events = len(emu.events())
    status, body = await _renew(emu, {"ids": [paid.id, "sub_nope"]})
    assert status == 404 and body["error"]["code"] == "resource_missing"
    status, body = await _renew(emu, {"ids": [paid.id, canceled.id]})
    assert status == 400 and canceled.id in body["error"]["message"]
    status, body = await _renew(emu, {"ids": "sub_x"})
    assert status == 400
    assert len(emu.events()) == n_events

    status, summary = await _renew(emu, {"ids": [paid.id, ending.id, failing.id]})
    assert status == 200
    assert (summary["renewed"], summary["past_due"], summary["canceled"]) == (1, 1, 1)
    assert (await _get(raw, f"/v1/subscriptions/{paid.id}"))["status"] == "active"
    assert (await _get(raw, f"/v1/subscriptions/{ending.id}"))["status"] == "canceled"
    f = await _get(raw, f"/v1/subscriptions/{failing.id}")
    assert f["status"] == "past_due"
    inv = await _get(raw, f"/v1/invoices/{f['latest_invoice']}")
    assert inv["status"] == "open" and inv["attempt_count"] == 1
    assert inv["billing_reason"] == "subscription_cycle"
    types = [e["type"] for e in emu.events()[: len(emu.events()) - n_events]][::-1]
    assert types.count("customer.subscription.deleted") == 1
    assert "invoice.payment_failed" in types and "charge.failed" in types
    assert types[-1] == "customer.subscription.updated"  # to past_due, last
    # The default is every active or trialing subscription: the past_due one is left alone.
    status, summary = await _renew(emu)
    assert summary["subscriptions"] == 1 and summary["renewed"] == 1


async def test_renew_a_seeded_account(emu: Emulator, raw: Any) -> None:
    emu.seed(customers=60, subscriptions=60, canceled_fraction=0.2, big_every=7)
    live = [s for s in emu.objects("subscription") if s["status"] in ("active", "trialing")]
    invoices = len(emu.objects("invoice"))
    summary = emu.renew_subscriptions()
    assert summary["subscriptions"] == summary["renewed"] == len(live) > 0
    assert summary["event_types"]["invoice.paid"] == len(live)
    assert len(emu.objects("invoice")) == invoices + len(live)
    for s in live:
        now = await _get(raw, f"/v1/subscriptions/{s['id']}")
        inv = await _get(raw, f"/v1/invoices/{now['latest_invoice']}")
        assert inv["status"] == "paid" and inv["billing_reason"] == "subscription_cycle"
        assert inv["lines"]["total_count"] == s["items"]["total_count"]
        lines = await _get(raw, f"/v1/invoices/{inv['id']}/lines?limit=100")
        assert len(lines["data"]) == s["items"]["total_count"]
        assert (
            now["items"]["data"][0]["current_period_start"]
            == (s["items"]["data"][0]["current_period_end"])
        )
