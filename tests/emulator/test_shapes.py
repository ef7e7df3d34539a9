"""Every emulated type has Stripe's top-level key set; every emitted event type exists."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import stripe
import stripe._event

from syncd.emulator import Emulator

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "stripe" / "openapi" / "fixtures3.json"


def _sdk_event_types() -> set[str]:
    hints = typing.get_type_hints(stripe._event.Event)
    return set(typing.get_args(hints["type"]))


async def _exercise(emu: Emulator, c: stripe.StripeClient) -> None:
    """Touch every resource type the emulator implements."""
    cus = await c.v1.customers.create_async({"email": "x@y.z", "payment_method": "pm_card_visa"})
    pm = (await c.v1.payment_methods.list_async({"customer": cus.id})).data[0]
    await c.v1.customers.update_async(
        cus.id, {"invoice_settings": {"default_payment_method": pm.id}}
    )
    prod = await c.v1.products.create_async({"name": "P"})
    price = await c.v1.prices.create_async(
        {
            "product": prod.id,
            "currency": "usd",
            "unit_amount": 1000,
            "recurring": {"interval": "month"},
        }
    )
    one = await c.v1.prices.create_async(
        {"product": prod.id, "currency": "usd", "unit_amount": 300}
    )
    sub = await c.v1.subscriptions.create_async(
        {"customer": cus.id, "items": [{"price": price.id}]}
    )
    await c.v1.subscription_schedules.create_async({"from_subscription": sub.id})
    inv = await c.v1.invoices.retrieve_async(sub.latest_invoice)
    await c.v1.credit_notes.create_async(
        {
            "invoice": inv.id,
            "lines": [
                {
                    "type": "invoice_line_item",
                    "invoice_line_item": inv.lines.data[0].id,
                    "quantity": 1,
                }
            ],
        }
    )
    await c.v1.invoice_items.create_async({"customer": cus.id, "price": one.id})
    ch = (await c.v1.charges.list_async()).data[0]
    await c.v1.refunds.create_async({"charge": ch.id, "amount": 100})
    emu.create_dispute(ch.id)
    await c.v1.payouts.create_async({"amount": 100, "currency": "usd"})
    cs = await c.v1.checkout.sessions.create_async(
        {"mode": "payment", "line_items": [{"price": one.id, "quantity": 1}]}
    )
    emu.complete_checkout_session(cs.id)
    await c.v1.setup_intents.create_async({"customer": cus.id})
    co = await c.v1.coupons.create_async({"amount_off": 100, "currency": "usd"})
    await c.v1.promotion_codes.create_async({"promotion": {"type": "coupon", "coupon": co.id}})
    await c.v1.customers.tax_ids.create_async(cus.id, {"type": "us_ein", "value": "12-3456789"})
    await c.v1.plans.create_async(
        {"amount": 5, "currency": "usd", "interval": "month", "product": prod.id}
    )
    feat = await c.v1.entitlements.features.create_async({"name": "F", "lookup_key": "f"})
    await c.v1.products.features.create_async(prod.id, {"entitlement_feature": feat.id})
    await c.v1.entitlements.active_entitlements.list_async({"customer": cus.id})
    m = await c.v1.billing.meters.create_async(
        {"display_name": "M", "event_name": "m", "default_aggregation": {"formula": "sum"}}
    )
    await c.v1.billing.meter_events.create_async(
        {"event_name": "m", "payload": {"stripe_customer_id": cus.id, "value": "1"}}
    )
    await c.v1.billing.meters.deactivate_async(m.id)


async def test_top_level_keys_match_fixtures(emu: Emulator, aclient: stripe.StripeClient) -> None:
    await _exercise(emu, aclient)
    fixtures = json.loads(FIXTURES.read_bytes())["resources"]
    checked = []
    for type_, coll in emu.state.collections.items():
        if not coll.records:
            continue
        expected = set(fixtures[type_])
        for obj in emu.objects(type_):
            if obj.get("deleted"):
                continue
            assert set(obj) == expected, (type_, set(obj) ^ expected)
        checked.append(type_)
    for ev in emu.objects("event"):
        obj = ev["data"]["object"]
        assert set(obj) == set(fixtures[obj["object"]]) or obj["object"] == "billing.meter"
    assert len(checked) >= 25, checked
    # nested objects rendered by list endpoints: checkout line items and meter summaries
    cs = emu.objects("checkout.session")[0]
    lis = await aclient.v1.checkout.sessions.line_items.list_async(cs["id"])
    assert set(lis.data[0].to_dict()) == set(fixtures["item"])
    meter = emu.objects("billing.meter")[0]
    cus = emu.objects("customer")[-1]
    summ = await aclient.v1.billing.meters.event_summaries.list_async(
        meter["id"], {"customer": cus["id"], "start_time": 0, "end_time": 2_000_000_000}
    )
    assert set(summ.data[0].to_dict()) == set(fixtures["billing.meter_event_summary"])


async def test_every_emitted_event_type_exists_in_sdk(
    emu: Emulator, aclient: stripe.StripeClient
) -> None:
    await _exercise(emu, aclient)
    await aclient.v1.customers.delete_async(emu.objects("customer")[-1]["id"])
    emitted = {e["type"] for e in emu.events()}
    known = _sdk_event_types()
    assert len(known) > 200
    assert emitted <= known, emitted - known
    assert len(emitted) >= 30
