"""The real stripe-python SDK, async (AIOHTTPClient), against an emulator in the test loop."""

from __future__ import annotations

import pytest
import stripe

from syncd.emulator import Emulator


async def test_async_crud_and_paging(emu: Emulator, aclient: stripe.StripeClient) -> None:
    emu.clock.freeze()
    ids = []
    for i in range(12):
        c = await aclient.v1.customers.create_async({"name": f"c{i}"})
        ids.append(c.id)
    page = await aclient.v1.customers.list_async({"limit": 5})
    assert [c.id for c in page.data] == ids[::-1][:5] and page.has_more
    got = [c.id async for c in page.auto_paging_iter()]
    assert got == ids[::-1]
    page2 = await aclient.v1.customers.list_async({"limit": 5, "ending_before": ids[3]})
    assert [c.id for c in page2.data] == ids[4:9][::-1] and page2.has_more
    got = [c.id async for c in page2.auto_paging_iter()]
    assert got == ids[4:]
    await aclient.v1.customers.delete_async(ids[0])
    with pytest.raises(stripe.InvalidRequestError):
        await aclient.v1.customers.update_async(ids[0], {"name": "x"})


async def test_async_products_prices_plans(emu: Emulator, aclient: stripe.StripeClient) -> None:
    prod = await aclient.v1.products.create_async(
        {
            "name": "Gold",
            "marketing_features": [{"name": "Fast"}],
            "default_price_data": {
                "currency": "usd",
                "unit_amount": 900,
                "recurring": {"interval": "month"},
            },
        }
    )
    assert prod.marketing_features[0].name == "Fast"
    assert prod.default_price.startswith("price_")
    lst = await aclient.v1.products.list_async({"expand": ["data.default_price"]})
    assert lst.data[0].default_price.unit_amount == 900
    plan = await aclient.v1.plans.retrieve_async(prod.default_price)
    assert plan.object == "plan" and plan.amount == 900 and plan.interval == "month"
    with pytest.raises(stripe.InvalidRequestError):
        await aclient.v1.products.delete_async(prod.id)  # has prices
    await aclient.v1.prices.update_async(prod.default_price, {"active": False})
    active = await aclient.v1.prices.list_async({"active": True})
    assert active.data == []
    inactive = await aclient.v1.prices.list_async({"active": False})
    assert len(inactive.data) == 1
    p2 = await aclient.v1.plans.create_async(
        {"amount": 500, "currency": "usd", "interval": "year", "product": {"name": "Old"}}
    )
    assert p2.id.startswith("plan_")
    d = await aclient.v1.plans.delete_async(p2.id)
    assert d.deleted
    prod2 = await aclient.v1.products.create_async({"name": "Lonely"})
    await aclient.v1.products.delete_async(prod2.id)
    r = await aclient.v1.products.retrieve_async(prod2.id)
    assert r.to_dict().get("deleted") is True
    assert prod2.id not in [p.id for p in (await aclient.v1.products.list_async()).data]


async def test_async_payments_refunds(emu: Emulator, aclient: stripe.StripeClient) -> None:
    cus = await aclient.v1.customers.create_async({"email": "p@example.com"})
    pi = await aclient.v1.payment_intents.create_async(
        {"amount": 2000, "currency": "usd", "customer": cus.id, "payment_method": "pm_card_visa"}
    )
    assert pi.status == "requires_confirmation"
    pi = await aclient.v1.payment_intents.confirm_async(pi.id)
    assert pi.status == "succeeded" and pi.latest_charge.startswith("ch_")
    ch = await aclient.v1.charges.retrieve_async(pi.latest_charge)
    assert ch.balance_transaction.startswith("txn_")
    re = await aclient.v1.refunds.create_async({"charge": ch.id, "amount": 500})
    assert re.id.startswith("re_")
    ch = await aclient.v1.charges.retrieve_async(ch.id)
    assert ch.amount_refunded == 500 and ch.refunded is False
    assert ch.refunds.data[0].id == re.id
    await aclient.v1.refunds.create_async({"payment_intent": pi.id})
    ch = await aclient.v1.charges.retrieve_async(ch.id)
    assert ch.refunded is True
    types = [e["type"] for e in emu.events()]
    assert {"charge.refunded", "charge.refund.updated", "refund.created"} <= set(types)
    # manual capture and cancel
    pi2 = await aclient.v1.payment_intents.create_async(
        {
            "amount": 1000,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
            "capture_method": "manual",
        }
    )
    assert pi2.status == "requires_capture"
    pi2 = await aclient.v1.payment_intents.capture_async(pi2.id)
    assert pi2.status == "succeeded"
    pi3 = await aclient.v1.payment_intents.create_async({"amount": 1000, "currency": "usd"})
    pi3 = await aclient.v1.payment_intents.cancel_async(pi3.id)
    assert pi3.status == "canceled"
    with pytest.raises(stripe.CardError) as ei:
        await aclient.v1.payment_intents.create_async(
            {
                "amount": 1000,
                "currency": "usd",
                "payment_method": "pm_card_chargeDeclined",
                "confirm": True,
            }
        )
    assert ei.value.http_status == 402
    # dispute via test helper
    dp = emu.create_dispute(ch.id)
    assert dp["id"].startswith("dp_")
    assert (await aclient.v1.disputes.retrieve_async(dp["id"])).charge == ch.id
    txns = await aclient.v1.balance_transactions.list_async({"limit": 100})
    assert {t.type for t in txns.data} >= {"charge", "refund", "adjustment"}


async def test_async_checkout_completion(emu: Emulator, aclient: stripe.StripeClient) -> None:
    prod = await aclient.v1.products.create_async({"name": "Seat"})
    price = await aclient.v1.prices.create_async(
        {
            "product": prod.id,
            "currency": "usd",
            "unit_amount": 700,
            "recurring": {"interval": "month"},
        }
    )
    cs = await aclient.v1.checkout.sessions.create_async(
        {
            "mode": "subscription",
            "success_url": "https://x/ok",
            "line_items": [{"price": price.id, "quantity": 3}],
        }
    )
    assert cs.id.startswith("cs_test_") and cs.status == "open" and "line_items" not in cs
    full = await aclient.v1.checkout.sessions.retrieve_async(cs.id, {"expand": ["line_items"]})
    assert full.line_items.data[0].quantity == 3
    lis = await aclient.v1.checkout.sessions.line_items.list_async(cs.id)
    assert lis.data[0].amount_total == 2100
    done = emu.complete_checkout_session(cs.id)
    assert done["status"] == "complete" and done["subscription"].startswith("sub_")
    sub = await aclient.v1.subscriptions.retrieve_async(done["subscription"])
    assert sub.status == "active" and sub.customer == done["customer"]
    assert emu.events()[0]["type"] == "checkout.session.completed"
    cs2 = await aclient.v1.checkout.sessions.create_async(
        {"mode": "payment", "line_items": [{"price": price.id, "quantity": 1}]}
    )
    done2 = emu.complete_checkout_session(cs2.id)
    pi = await aclient.v1.payment_intents.retrieve_async(done2["payment_intent"])
    assert pi.status == "succeeded"


async def test_async_invoices_and_items(emu: Emulator, aclient: stripe.StripeClient) -> None:
    cus = await aclient.v1.customers.create_async({"payment_method": "pm_card_visa"})
    pm = (await aclient.v1.payment_methods.list_async({"customer": cus.id})).data[0]
    for i in range(12):
        await aclient.v1.invoice_items.create_async(
            {"customer": cus.id, "amount": 100 + i, "currency": "usd"}
        )
    inv = await aclient.v1.invoices.create_async(
        {"customer": cus.id, "pending_invoice_items_behavior": "include"}
    )
    assert inv.status == "draft" and len(inv.lines.data) == 10 and inv.lines.has_more
    assert inv.lines.total_count == 12 and inv.total == sum(100 + i for i in range(12))
    lines = [
        x.id
        async for x in (
            await aclient.v1.invoices.line_items.list_async(inv.id, {"limit": 5})
        ).auto_paging_iter()
    ]
    assert len(lines) == 12 and len(set(lines)) == 12
    inv = await aclient.v1.invoices.finalize_invoice_async(inv.id)
    assert inv.status == "open" and inv.number
    inv = await aclient.v1.invoices.pay_async(inv.id, {"payment_method": pm.id})
    assert inv.status == "paid" and inv.amount_remaining == 0
    cn = await aclient.v1.credit_notes.create_async({"invoice": inv.id, "amount": 50})
    assert cn.id.startswith("cn_")
    inv2 = await aclient.v1.invoices.create_async({"customer": cus.id})
    await aclient.v1.invoices.finalize_invoice_async(inv2.id)
    inv2 = await aclient.v1.invoices.void_invoice_async(inv2.id)
    assert inv2.status == "void"
    inv3 = await aclient.v1.invoices.create_async({"customer": cus.id})
    await aclient.v1.invoices.delete_async(inv3.id)
    assert (await aclient.v1.invoices.retrieve_async(inv3.id)).to_dict().get("deleted") is True
    types = {e["type"] for e in emu.events()}
    assert {
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
        "invoice.voided",
        "invoice.deleted",
        "credit_note.created",
        "invoiceitem.created",
    } <= types


async def test_async_misc_resources(emu: Emulator, aclient: stripe.StripeClient) -> None:
    cus = await aclient.v1.customers.create_async()
    t = await aclient.v1.customers.tax_ids.create_async(
        cus.id, {"type": "eu_vat", "value": "DE123456789"}
    )
    assert t.id.startswith("txi_") and t.country == "DE"
    assert (
        await aclient.v1.tax_ids.list_async({"owner": {"type": "customer", "customer": cus.id}})
    ).data[0].id == t.id
    await aclient.v1.customers.tax_ids.delete_async(cus.id, t.id)
    assert (await aclient.v1.customers.tax_ids.retrieve_async(cus.id, t.id)).to_dict()["deleted"]
    co = await aclient.v1.coupons.create_async({"percent_off": 20, "duration": "once"})
    promo = await aclient.v1.promotion_codes.create_async(
        {"promotion": {"type": "coupon", "coupon": co.id}, "code": "SAVE20"}
    )
    assert promo.id.startswith("promo_") and promo.code == "SAVE20"
    await aclient.v1.coupons.delete_async(co.id)
    si = await aclient.v1.setup_intents.create_async(
        {"customer": cus.id, "payment_method": "pm_card_visa", "confirm": True}
    )
    assert si.id.startswith("seti_") and si.status == "succeeded"
    pm = await aclient.v1.payment_methods.retrieve_async(si.payment_method)
    assert pm.customer == cus.id
    pm = await aclient.v1.payment_methods.detach_async(pm.id)
    assert pm.customer is None
    po = await aclient.v1.payouts.create_async({"amount": 1000, "currency": "usd"})
    assert po.id.startswith("po_") and po.balance_transaction.startswith("txn_")
    feat = await aclient.v1.entitlements.features.create_async({"name": "SSO", "lookup_key": "sso"})
    prod = await aclient.v1.products.create_async({"name": "Ent"})
    await aclient.v1.products.features.create_async(prod.id, {"entitlement_feature": feat.id})
    price = await aclient.v1.prices.create_async(
        {
            "product": prod.id,
            "currency": "usd",
            "unit_amount": 0,
            "recurring": {"interval": "month"},
        }
    )
    await aclient.v1.subscriptions.create_async(
        {"customer": cus.id, "items": [{"price": price.id}]}
    )
    ents = await aclient.v1.entitlements.active_entitlements.list_async({"customer": cus.id})
    assert [e.lookup_key for e in ents.data] == ["sso"]
    sched = await aclient.v1.subscription_schedules.create_async(
        {"customer": cus.id, "phases": [{"items": [{"price": price.id}], "iterations": 2}]}
    )
    assert sched.id.startswith("sub_sched_") and sched.subscription.startswith("sub_")
    sched = await aclient.v1.subscription_schedules.release_async(sched.id)
    assert sched.status == "released"
