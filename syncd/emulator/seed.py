"""Fast realistic seeding: customers (with ``metadata[supabase_user_id]``), products, prices,
subscriptions (some with more than 10 items, some canceled), invoices (some with more than 10
lines) and payments, with ``created`` spread over a past range.

Customers are built directly (100,000 in a couple of seconds); subscriptions reuse the real
handlers with the clock frozen at each object's creation time so they behave like API-made ones.
Objects are created in ascending time order so every insert is an append.
"""

from __future__ import annotations

import uuid

from .billing import cancel_subscription_now, create_subscription
from .catalog import create_price_obj, new_customer, new_payment_method, new_product
from .framework import Ctx
from .state import Record, State

DAY = 86400


def seed(
    state: State,
    *,
    customers: int = 0,
    products: int | None = None,
    subscriptions: int | None = None,
    events: bool = False,
    days: int = 365,
    canceled_fraction: float = 0.1,
    big_every: int = 25,
) -> dict[str, int]:
    """Create data; returns counts per type. ``subscriptions`` defaults to ``customers // 5``;
    every ``big_every``-th subscription has 12 items (and a 12-line first invoice)."""
    clock = state.clock
    saved_clock = clock.save()
    saved = clock.time()
    rng = state.rng
    ctx = Ctx(state, None, None)
    state.suppress_events = not events
    before = {t: len(c) for t, c in state.collections.items()}
    try:
        end = int(saved) - DAY
        start = end - days * DAY
        n_prod = (
            products
            if products is not None
            else (min(20, max(1, customers // 50)) if customers else 0)
        )
        n_sub = subscriptions if subscriptions is not None else customers // 5
        # catalog first, at the very start of the range
        prices: list[Record] = []
        clock.freeze(start - DAY)
        for i in range(n_prod):
            prod = state.insert(
                new_product(ctx, {"name": f"Plan {i + 1}", "metadata": {"tier": str(i % 3)}})
            )
            if events:
                ctx.emit("product.created", prod)
            for interval, mult in (("month", 1), ("year", 10)):
                prices.append(
                    create_price_obj(
                        ctx,
                        {
                            "product": prod.id,
                            "currency": "usd",
                            "unit_amount": str((i + 1) * 500 * mult),
                            "recurring": {"interval": interval},
                        },
                    )
                )
            prod.obj["default_price"] = prices[-2].id
            prod.invalidate()
        # customers: built directly, created times ascending
        times = sorted(rng.randrange(start, end) for _ in range(customers))
        recs: list[Record] = []
        emails = ("gmail.com", "example.com", "acme.io", "proton.me")
        for i, t in enumerate(times):
            clock.freeze(t)
            uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            obj = new_customer(
                ctx,
                {
                    "email": f"user{i}@{emails[i % len(emails)]}",
                    "name": f"Customer {i}",
                    "metadata": {"supabase_user_id": uid},
                },
            )
            rec = state.insert(obj, t)
            recs.append(rec)
            if events:
                ctx.emit("customer.created", rec)
        # subscriptions on evenly spaced customers, in ascending customer time
        monthly = [p for p in prices if p.obj["recurring"]["interval"] == "month"]
        if n_sub and monthly and recs:
            step = max(1, len(recs) // n_sub)
            for k in range(min(n_sub, len(recs))):
                cus = recs[k * step]
                t = cus.created + rng.randrange(60, 3600)
                clock.freeze(t)
                pm = new_payment_method(ctx, "visa", "4242")
                pm.obj["customer"] = cus.id
                pm.invalidate()
                cus.obj["invoice_settings"] = {
                    **cus.obj["invoice_settings"],
                    "default_payment_method": pm.id,
                }
                cus.invalidate()
                if k % big_every == big_every - 1:
                    pool = prices if len(prices) >= 12 else prices * 12
                    chosen = [p for p in pool if p.obj["recurring"]["interval"] == "month"] * 12
                    items = [
                        {"price": chosen[j % len(chosen)].id, "quantity": str(1 + j % 3)}
                        for j in range(12)
                    ]
                    # distinct prices are not required by the emulator, as Stripe requires;
                    # seeded data may reuse a price across items
                else:
                    items = [{"price": monthly[k % len(monthly)].id, "quantity": str(1 + k % 4)}]
                create_subscription(ctx, {"customer": cus.id, "items": items}, {})
                if rng.random() < canceled_fraction:
                    sub = state.coll("subscription").records[-1]
                    clock.freeze(t + rng.randrange(DAY, 20 * DAY))
                    cancel_subscription_now(ctx, sub)
    finally:
        state.suppress_events = False
        clock.restore(saved_clock)
    # Canceling later than creation may have appended out of order: nothing to fix, since
    # ``created`` never changes after insert.
    # Render every object once now, as Stripe serves stored objects: otherwise the first listing
    # of a large seed pays for the JSON encoding, which would be counted against the client
    # that shares this machine (a quarter of the emulator's time in a 200k-customer resync).
    for c in state.collections.values():
        for rec in c.records:
            rec.to_bytes()
    return {
        t: len(c) - before.get(t, 0)
        for t, c in state.collections.items()
        if len(c) - before.get(t, 0)
    }
