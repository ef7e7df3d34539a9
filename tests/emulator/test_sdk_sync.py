"""The real stripe-python SDK (sync, default HTTP client) against an emulator in a thread."""

from __future__ import annotations

import pytest
import stripe

from syncd.emulator import Emulator

from .conftest import make_catalog


def test_customer_crud(sclient: stripe.StripeClient) -> None:
    c = sclient.v1.customers.create({"email": "a@example.com", "metadata": {"k": "v"}})
    assert c.id.startswith("cus_") and c.object == "customer" and c.livemode is False
    c2 = sclient.v1.customers.update(c.id, {"name": "Ann", "metadata": {"k": "", "x": "1"}})
    assert c2.name == "Ann" and c2.metadata.to_dict() == {"x": "1"}
    assert sclient.v1.customers.retrieve(c.id).email == "a@example.com"
    d = sclient.v1.customers.delete(c.id)
    assert d.deleted is True
    again = sclient.v1.customers.retrieve(c.id)
    assert again.to_dict() == {"id": c.id, "object": "customer", "deleted": True}
    assert c.id not in [x.id for x in sclient.v1.customers.list().data]


def test_errors(temu: Emulator, sclient: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as ei:
        sclient.v1.customers.retrieve("cus_missing")
    assert ei.value.http_status == 404 and ei.value.code == "resource_missing"
    bad = stripe.StripeClient("sk_live_nope", base_addresses={"api": temu.url})
    with pytest.raises(stripe.AuthenticationError):
        bad.v1.customers.list()
    with pytest.raises(stripe.InvalidRequestError) as ei2:
        sclient.v1.customers.list({"limit": 101})
    assert ei2.value.http_status == 400 and ei2.value.param == "limit"


def test_exact_key_configurable() -> None:
    with Emulator.in_thread(api_key="sk_test_exact") as e:
        ok = stripe.StripeClient("sk_test_exact", base_addresses={"api": e.url})
        assert ok.v1.customers.list().data == []
        other = stripe.StripeClient("sk_test_other", base_addresses={"api": e.url})
        with pytest.raises(stripe.AuthenticationError):
            other.v1.customers.list()


def test_auto_paging_both_directions(temu: Emulator, sclient: stripe.StripeClient) -> None:
    temu.clock.freeze()  # all in one second: tie-break must still give a total order
    ids = [sclient.v1.customers.create({"name": f"c{i}"}).id for i in range(25)]
    newest_first = list(reversed(ids))
    got = [c.id for c in sclient.v1.customers.list({"limit": 4}).auto_paging_iter()]
    assert got == newest_first
    # starting_after walks to older objects
    got = [
        c.id
        for c in sclient.v1.customers.list(
            {"limit": 3, "starting_after": ids[20]}
        ).auto_paging_iter()
    ]
    assert got == list(reversed(ids[:20]))
    # ending_before walks to newer objects; the SDK yields them oldest → newest
    got = [
        c.id
        for c in sclient.v1.customers.list({"limit": 3, "ending_before": ids[4]}).auto_paging_iter()
    ]
    assert got == ids[5:]


def test_subscription_lifecycle(temu: Emulator, sclient: stripe.StripeClient) -> None:
    (price,) = make_catalog(sclient)
    cus = sclient.v1.customers.create({"payment_method": "pm_card_visa"})
    pms = sclient.v1.payment_methods.list({"customer": cus.id})
    sclient.v1.customers.update(
        cus.id, {"invoice_settings": {"default_payment_method": pms.data[0].id}}
    )
    sub = sclient.v1.subscriptions.create(
        {"customer": cus.id, "items": [{"price": price.id, "quantity": 2}]}
    )
    assert sub.status == "active"
    item = sub["items"].data[0]
    assert item.id.startswith("si_") and item.current_period_end > item.current_period_start
    assert "current_period_end" not in sub
    inv = sclient.v1.invoices.retrieve(sub.latest_invoice)
    assert inv.status == "paid" and inv.amount_paid == 2000
    sub = sclient.v1.subscriptions.update(sub.id, {"items": [{"id": item.id, "quantity": 3}]})
    assert sub["items"].data[0].quantity == 3
    sub = sclient.v1.subscriptions.update(sub.id, {"cancel_at_period_end": True})
    assert sub.cancel_at == item.current_period_end
    canceled = sclient.v1.subscriptions.cancel(sub.id)
    assert canceled.status == "canceled"
    assert sclient.v1.subscriptions.retrieve(sub.id).status == "canceled"
    assert temu.events()[0]["type"] == "customer.subscription.deleted"


def test_meter_events_sync(temu: Emulator, sclient: stripe.StripeClient) -> None:
    m = sclient.v1.billing.meters.create(
        {
            "display_name": "API",
            "event_name": "api_calls",
            "default_aggregation": {"formula": "sum"},
        }
    )
    cus = sclient.v1.customers.create()
    for i in range(3):
        sclient.v1.billing.meter_events.create(
            {
                "event_name": "api_calls",
                "identifier": f"id-{i}",
                "payload": {"stripe_customer_id": cus.id, "value": "2.5"},
            }
        )
    assert temu.meter_totals()[(m.id, cus.id)] == 7.5
