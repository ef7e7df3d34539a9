"""Subscriptions, subscription items, invoices with lines, invoice items, credit notes,
subscription schedules and the legacy usage records endpoint."""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Callable
from typing import Any

from .errors import StripeError, card_declined, invalid, missing
from .framework import (
    VIRTUAL_EXPAND,
    Ctx,
    Resp,
    all_of,
    apply_params,
    delete_record,
    field_eq,
    filters,
    get_or_404,
    list_response,
    merge_metadata,
    need,
    new_object,
    opt_int,
    route,
    to_bool,
    to_int,
    update_record,
)
from .lists import list_body, nested_list, page_sequence, parse_list_params, plain_list_body
from .state import JSON, Record

# ---------------------------------------------------------------------------------------------
# helpers


def add_interval(ts: int, interval: str, count: int) -> int:
    """Calendar arithmetic like Stripe's billing periods (month end clamps: Jan 31 → Feb 28)."""
    d = dt.datetime.fromtimestamp(ts, dt.UTC)
    if interval == "day":
        return ts + 86400 * count
    if interval == "week":
        return ts + 7 * 86400 * count
    months = count * (12 if interval == "year" else 1)
    y, mo = divmod(d.month - 1 + months, 12)
    y += d.year
    mo += 1
    day = min(d.day, calendar.monthrange(y, mo)[1])
    return int(d.replace(year=y, month=mo, day=day).timestamp())


def _price_for(ctx: Ctx, item: JSON, param: str) -> Record:
    pid = item.get("price") or item.get("plan")
    if not pid and isinstance(item.get("price_data"), dict):
        from .catalog import create_price_obj

        return create_price_obj(ctx, item["price_data"])
    if not pid:
        raise invalid(f"Missing required param: {param}[price].", param=f"{param}[price]")
    rec = ctx.state.get("price", str(pid))
    if rec is None or rec.deleted:
        raise missing("price", str(pid), f"{param}[price]")
    if rec.obj["type"] != "recurring":
        raise invalid(
            "The price specified is set to `type=one_time` but this field only "
            "accepts prices with `type=recurring`.",
            param=f"{param}[price]",
        )
    if not rec.obj["active"]:
        raise invalid(
            "The price specified is inactive. This field only accepts active prices.",
            param=f"{param}[price]",
        )
    return rec


def _plan_obj(ctx: Ctx, price: Record) -> JSON:
    plan = ctx.state.get("plan", price.id)
    if plan is not None:
        return plan.obj
    from .catalog import plan_from_price

    return plan_from_price(price.obj)


def refresh_items(sub: Record) -> None:
    """Re-embed the first 10 live items in ``subscription.items`` and drop the cached bytes."""
    items: list[Record] = sub.extra["items"]
    sub.obj["items"] = nested_list(
        [r.obj for r in items], f"/v1/subscription_items?subscription={sub.id}"
    )
    sub.invalidate()


def price_changed(ctx: Ctx, price_id: str) -> None:
    """Items embed their price (and plan) as Stripe renders them when read: after the price
    changes, every item and subscription embedding it answers with the new one (no event)."""
    for sub in ctx.state.iter_type("subscription"):
        items: list[Record] = sub.extra.get("items") or []
        hit = [r for r in items if (r.obj.get("price") or {}).get("id") == price_id]
        if hit:
            for r in hit:
                price = ctx.state.get("price", price_id)
                if price is not None:
                    r.obj["price"] = price.obj
                    r.obj["plan"] = _plan_obj(ctx, price)
                r.invalidate()
            refresh_items(sub)


def new_item(ctx: Ctx, sub: Record, item: JSON, param: str) -> Record:
    price = _price_for(ctx, item, param)
    obj = new_object(ctx, "subscription_item", "si_")
    start = sub.extra["period_start"]
    obj.update(
        billing_thresholds=None,
        current_period_start=start,
        current_period_end=sub.extra["period_end"],
        discounts=[],
        price=price.obj,
        plan=_plan_obj(ctx, price),
        subscription=sub.id,
        tax_rates=[],
        quantity=to_int(item.get("quantity", 1), f"{param}[quantity]"),
    )
    if price.obj["recurring"] and price.obj["recurring"].get("usage_type") == "metered":
        obj.pop("quantity", None)
        obj["quantity"] = None
    merge_metadata(obj, item.get("metadata") or {})
    rec = ctx.state.insert(obj)
    sub.extra["items"].append(rec)
    return rec


def _first_interval(ctx: Ctx, items: list[Any], param: str) -> tuple[str, int]:
    if not items:
        raise invalid("Missing required param: items.", param=param)
    p = _price_for(ctx, items[0], f"{param}[0]")
    r = p.obj["recurring"]
    return str(r["interval"]), int(r["interval_count"])


def _sub_amount(sub: Record) -> int:
    total = 0
    for it in sub.extra["items"]:
        price = it.obj["price"]
        if (price.get("recurring") or {}).get("usage_type") == "metered":
            continue
        total += int(price.get("unit_amount") or 0) * int(it.obj.get("quantity") or 0)
    return total


def default_pm(ctx: Ctx, customer: str, sub: JSON | None = None) -> str | None:
    if sub is not None and sub.get("default_payment_method"):
        return str(sub["default_payment_method"])
    cus = ctx.state.get("customer", customer)
    if cus is None:
        return None
    pm = (cus.obj.get("invoice_settings") or {}).get("default_payment_method")
    return str(pm) if pm else None


# ---------------------------------------------------------------------------------------------
# Subscriptions

SUB_FIELDS = frozenset(
    {
        "metadata",
        "description",
        "collection_method",
        "days_until_due",
        "default_payment_method",
        "cancel_at_period_end",
    }
)
LIVE = ("active", "trialing", "past_due", "unpaid", "incomplete", "paused")


@route("POST", "/v1/subscriptions")
def create_subscription(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    cus = str(need(params, "customer"))
    get_or_404(ctx, "customer", cus, "customer", "customer")
    items = params.get("items") or []
    if not isinstance(items, list):
        raise invalid("Invalid array", param="items")
    interval, count = _first_interval(ctx, items, "items")
    obj = new_object(ctx, "subscription", "sub_")
    now = ctx.now
    trial_days = opt_int(params, "trial_period_days")
    trial_end: int | None = None
    if params.get("trial_end") and params["trial_end"] != "now":
        trial_end = to_int(params["trial_end"], "trial_end")
    elif trial_days:
        trial_end = now + trial_days * 86400
    obj.update(
        application=None,
        application_fee_percent=None,
        billing_cycle_anchor=now,
        billing_cycle_anchor_config=None,
        billing_thresholds=None,
        cancel_at=None,
        cancel_at_period_end=False,
        canceled_at=None,
        cancellation_details={"comment": None, "feedback": None, "reason": None},
        collection_method=params.get("collection_method") or "charge_automatically",
        currency=None,
        customer=cus,
        customer_account=None,
        days_until_due=opt_int(params, "days_until_due"),
        default_payment_method=None,
        default_source=None,
        default_tax_rates=[],
        description=params.get("description") or None,
        discounts=[],
        ended_at=None,
        latest_invoice=None,
        next_pending_invoice_item_invoice=None,
        on_behalf_of=None,
        pause_collection=None,
        pending_invoice_item_interval=None,
        pending_setup_intent=None,
        pending_update=None,
        schedule=None,
        start_date=now,
        status="incomplete",
        test_clock=None,
        transfer_data=None,
        trial_end=trial_end,
        trial_start=now if trial_end else None,
    )
    if params.get("default_payment_method"):
        obj["default_payment_method"] = params["default_payment_method"]
    merge_metadata(obj, params.get("metadata") or {})
    sub = ctx.state.insert(obj)
    sub.extra["items"] = []
    sub.extra["period_start"] = now
    sub.extra["period_end"] = trial_end or add_interval(now, interval, count)
    for i, it in enumerate(items):
        new_item(ctx, sub, it, f"items[{i}]")
    sub.obj["currency"] = sub.extra["items"][0].obj["price"]["currency"]
    refresh_items(sub)
    if to_bool(params.get("cancel_at_period_end", False), "cancel_at_period_end"):
        sub.obj["cancel_at_period_end"] = True
        sub.obj["cancel_at"] = sub.extra["period_end"]
    if trial_end:
        sub.obj["status"] = "trialing"
    # First invoice: zero for trials, else the licensed amount, paid if a payment method exists.
    # Stripe's customer.subscription.created already names it as latest_invoice.

    def bill_items(inv: Record) -> None:
        for it in sub.extra["items"]:
            qty = it.obj.get("quantity") or 0
            amount = 0 if trial_end else int(it.obj["price"].get("unit_amount") or 0) * int(qty)
            add_line(ctx, inv, amount, it.obj["price"], int(qty), sub_item=it, sub=sub)

    inv = create_invoice_obj(ctx, cus, sub, "subscription_create", fill=bill_items)
    sub.obj["latest_invoice"] = inv.id
    sub.invalidate()
    ctx.emit("customer.subscription.created", sub)
    finalize_invoice(ctx, inv)
    behavior = params.get("payment_behavior") or "allow_incomplete"
    paid = False
    if inv.obj["amount_due"] == 0:
        pay_invoice(ctx, inv, None)
        paid = True
    elif obj["collection_method"] == "send_invoice":
        paid = True  # send_invoice subscriptions are active while the invoice is open
    else:
        pm = default_pm(ctx, cus, obj)
        if pm is not None:
            try:
                pay_invoice(ctx, inv, pm)
                paid = True
            except StripeError:
                if behavior == "error_if_incomplete":
                    raise
        elif behavior == "error_if_incomplete":
            raise StripeError(
                402,
                "This customer has no attached payment source or default payment method.",
                type_="card_error",
                code="card_declined",
            )
    if paid and sub.obj["status"] == "incomplete":
        update_record(
            ctx, sub, lambda o: o.update(status="active"), "customer.subscription.updated"
        )
    return ctx.ok(sub)


@route("GET", "/v1/subscriptions/{id}")
def get_subscription(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return ctx.ok(get_or_404(ctx, "subscription", m["id"]))


def _update_items(ctx: Ctx, sub: Record, items: list[Any]) -> None:
    by_id = {r.id: r for r in sub.extra["items"]}
    for i, it in enumerate(items):
        if not isinstance(it, dict):
            raise invalid("Invalid hash", param=f"items[{i}]")
        iid = it.get("id")
        if not iid:
            new_item(ctx, sub, it, f"items[{i}]")
            continue
        rec = by_id.get(str(iid))
        if rec is None:
            raise invalid(f"Invalid subscription_item id: {iid}", param=f"items[{i}][id]")
        if to_bool(it.get("deleted", False), "deleted"):
            remove_item(sub, rec)
            continue
        _apply_item_params(ctx, rec, it, f"items[{i}]")


def _apply_item_params(ctx: Ctx, rec: Record, it: JSON, param: str) -> None:
    if it.get("price") or it.get("plan") or it.get("price_data"):
        price = _price_for(ctx, it, param)
        rec.obj["price"] = price.obj
        rec.obj["plan"] = _plan_obj(ctx, price)
    if "quantity" in it:
        rec.obj["quantity"] = to_int(it["quantity"], f"{param}[quantity]")
    if "metadata" in it:
        merge_metadata(rec.obj, it["metadata"])
    rec.invalidate()


def remove_item(sub: Record, rec: Record) -> None:
    # Stripe emits no event of its own for a removed item (SYNC_PITFALLS 7); the item retrieves
    # as deleted afterwards.
    sub.extra["items"].remove(rec)
    rec.deleted = True


@route("POST", "/v1/subscriptions/{id}")
def update_subscription(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    sub = get_or_404(ctx, "subscription", m["id"])
    if sub.obj["status"] in ("canceled", "incomplete_expired"):
        raise invalid(
            "A canceled subscription can only update its cancellation_details and metadata."
        )

    def mut(o: JSON) -> None:
        apply_params(o, params, SUB_FIELDS)
        if "cancel_at_period_end" in params:
            o["cancel_at"] = sub.extra["period_end"] if o["cancel_at_period_end"] else None
        if "cancel_at" in params:
            o["cancel_at"] = (
                None if params["cancel_at"] == "" else to_int(params["cancel_at"], "cancel_at")
            )
        if params.get("trial_end") == "now" and o["status"] == "trialing":
            o.update(status="active", trial_end=ctx.now)
        if isinstance(params.get("items"), list):
            _update_items(ctx, sub, params["items"])
            refresh_items(sub)
        if "pause_collection" in params:
            pc = params["pause_collection"]
            o["pause_collection"] = (
                None
                if pc == ""
                else {"behavior": pc.get("behavior"), "resumes_at": opt_int(pc, "resumes_at")}
            )

    update_record(ctx, sub, mut, "customer.subscription.updated")
    return ctx.ok(sub)


def cancel_subscription_now(ctx: Ctx, sub: Record, params: JSON | None = None) -> None:
    params = params or {}
    cd = params.get("cancellation_details")

    def mut(o: JSON) -> None:
        now = ctx.now
        o.update(status="canceled", canceled_at=now, ended_at=now)
        details = dict(o.get("cancellation_details") or {})
        details["reason"] = "cancellation_requested"
        if isinstance(cd, dict):
            details.update({k: v or None for k, v in cd.items()})
        o["cancellation_details"] = details

    # customer.subscription.deleted means "canceled": the object stays retrievable.
    old_status = sub.obj["status"]
    mut(sub.obj)
    sub.invalidate()
    ctx.emit("customer.subscription.deleted", sub, {"status": old_status})


@route("DELETE", "/v1/subscriptions/{id}")
def cancel_subscription(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    sub = get_or_404(ctx, "subscription", m["id"])
    if sub.obj["status"] in ("canceled", "incomplete_expired"):
        raise StripeError(
            404, f"No such subscription: '{sub.id}'", code="resource_missing", param="id"
        )
    cancel_subscription_now(ctx, sub, params)
    return ctx.ok(sub)


@route("POST", "/v1/subscriptions/{id}/cancel")
def cancel_subscription_post(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return cancel_subscription(ctx, params, m)


@route("GET", "/v1/subscriptions")
def list_subscriptions(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds = filters(params, {"customer": "customer", "collection_method": "collection_method"})
    status = params.get("status")
    if status == "all":
        pass
    elif status == "ended":
        preds.append(lambda r: r.obj["status"] in ("canceled", "incomplete_expired"))
    elif status:
        preds.append(field_eq("status", status))
    else:
        # Default: canceled and incomplete_expired subscriptions are hidden (SYNC_PITFALLS 10).
        preds.append(lambda r: r.obj["status"] not in ("canceled", "incomplete_expired"))
    price = params.get("price") or params.get("plan")
    if price:
        preds.append(lambda r: any(i.obj["price"]["id"] == price for i in r.extra["items"]))
    if params.get("test_clock"):
        preds.append(field_eq("test_clock", params["test_clock"]))
    else:
        preds.append(field_eq("test_clock", None))  # test-clock objects are hidden by default
    return list_response(ctx, "subscription", "/v1/subscriptions", params, all_of(preds))


# ---------------------------------------------------------------------------------------------
# Renewals: a period end, as Stripe bills it (the control route `POST /_emulator/renew`)

RENEWABLE = ("active", "trialing")


def renew_subscription(ctx: Ctx, sub: Record) -> str:
    """End ``sub``'s current period now, as Stripe does at a period end; returns the outcome:
    ``renewed`` (paid, or open for ``send_invoice``), ``past_due`` (the payment failed) or
    ``canceled`` (``cancel_at_period_end``, or ``cancel_at`` reached: no new period).

    Stripe's order (https://support.stripe.com/questions/how-to-determine-when-a-subscription-cycles-using-webhooks):
    the cycle invoice is created (``invoice.created``, billing_reason ``subscription_cycle``,
    one line per item for the new period, ``period_start/end`` the period that ended), then
    ``customer.subscription.updated`` whose ``previous_attributes`` hold ``latest_invoice`` and
    ``items`` (each item's ``current_period_start/end`` moved; ``status`` too when a trial ends);
    then ``invoice.finalized`` (the customer's ``next_invoice_sequence`` moves, no event) and the
    payment as ``pay_invoice`` makes it with the default payment method. Stripe waits about an
    hour between creation and finalization; the emulator does it all at once."""
    o = sub.obj
    if o["status"] not in RENEWABLE:
        raise invalid(
            f"Only active or trialing subscriptions renew; {sub.id} is {o['status']}.",
            param="ids",
        )
    items: list[Record] = sub.extra["items"]
    old_start, old_end = int(sub.extra["period_start"]), int(sub.extra["period_end"])
    if o["cancel_at_period_end"] or (o["cancel_at"] is not None and o["cancel_at"] <= old_end):
        cancel_subscription_now(ctx, sub)
        return "canceled"
    recurring = items[0].obj["price"]["recurring"] if items else {}
    new_end = add_interval(
        old_end,
        str(recurring.get("interval") or "month"),
        int(recurring.get("interval_count") or 1),
    )

    def bill_items(inv: Record) -> None:
        inv.obj.update(period_start=old_start, period_end=old_end)
        for it in items:
            price = it.obj["price"]
            qty = int(it.obj.get("quantity") or 0)
            # Licensed items are billed in advance; metered usage (not modelled here) is 0.
            metered = (price.get("recurring") or {}).get("usage_type") == "metered"
            amount = 0 if metered else int(price.get("unit_amount") or 0) * qty
            add_line(ctx, inv, amount, price, qty, sub_item=it, sub=sub)

    invoices: list[Record] = []

    def cycle(obj: JSON) -> None:
        sub.extra["period_start"], sub.extra["period_end"] = old_end, new_end
        for it in items:
            it.obj.update(current_period_start=old_end, current_period_end=new_end)
            it.invalidate()
        refresh_items(sub)
        if obj["status"] == "trialing":
            obj["status"] = "active"
        inv = create_invoice_obj(ctx, obj["customer"], sub, "subscription_cycle", fill=bill_items)
        obj["latest_invoice"] = inv.id
        invoices.append(inv)

    update_record(ctx, sub, cycle, "customer.subscription.updated")
    inv = invoices[0]
    finalize_invoice(ctx, inv)
    if inv.obj["amount_due"] == 0:
        pay_invoice(ctx, inv, None)
        return "renewed"
    if inv.obj["collection_method"] == "send_invoice":
        return "renewed"  # open until the customer pays it, as at creation
    try:
        pay_invoice(ctx, inv, default_pm(ctx, o["customer"], o))
    except StripeError:
        # The failed attempt emitted invoice.payment_failed; Stripe's default retry settings
        # leave the subscription past_due until a retry succeeds.
        update_record(
            ctx, sub, lambda s: s.update(status="past_due"), "customer.subscription.updated"
        )
        return "past_due"
    return "renewed"


def renew_subscriptions(ctx: Ctx, ids: list[str] | None = None) -> JSON:
    """Renew the subscriptions ``ids`` (default: every active or trialing one, oldest first).
    Every id is checked before any renews: an unknown one answers 404, one that is not active
    or trialing 400. Returns counts by outcome and the events emitted, by type."""
    if ids is None:
        subs = [r for r in ctx.state.iter_type("subscription") if r.obj["status"] in RENEWABLE]
    else:
        subs = [get_or_404(ctx, "subscription", str(i), "subscription", "ids") for i in ids]
        for rec in subs:
            if rec.obj["status"] not in RENEWABLE:
                raise invalid(
                    f"Only active or trialing subscriptions renew; {rec.id} is "
                    f"{rec.obj['status']}.",
                    param="ids",
                )
    emitted: dict[str, int] = {}

    def count(ev: Record) -> None:
        t = str(ev.obj["type"])
        emitted[t] = emitted.get(t, 0) + 1

    outcomes = {"renewed": 0, "past_due": 0, "canceled": 0}
    ctx.state.event_hooks.append(count)
    try:
        for rec in subs:
            outcomes[renew_subscription(ctx, rec)] += 1
    finally:
        ctx.state.event_hooks.remove(count)
    return {
        "subscriptions": len(subs),
        **outcomes,
        "events": sum(emitted.values()),
        "event_types": dict(sorted(emitted.items())),
    }


# ---------------------------------------------------------------------------------------------
# Subscription items (own endpoints)


def _item(ctx: Ctx, id_: str, allow_deleted: bool = False) -> Record:
    return get_or_404(
        ctx, "subscription_item", id_, "subscription_item", allow_deleted=allow_deleted
    )


@route("GET", "/v1/subscription_items")
def list_subscription_items(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    sid = str(need(params, "subscription"))
    sub = get_or_404(ctx, "subscription", sid, "subscription", "subscription")
    lp = parse_list_params(params)
    page, more = page_sequence(sub.extra["items"], lp, "subscription_item")
    return Resp(
        list_body(
            [ctx.render(r, [p[5:] for p in ctx.expand if p.startswith("data.")]) for r in page],
            more,
            f"/v1/subscription_items?subscription={sid}",
        )
    )


@route("POST", "/v1/subscription_items")
def create_subscription_item(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    sid = str(need(params, "subscription"))
    sub = get_or_404(ctx, "subscription", sid, "subscription", "subscription")
    holder: list[Record] = []

    def mut(o: JSON) -> None:
        holder.append(new_item(ctx, sub, params, "subscription_item"))
        refresh_items(sub)

    update_record(ctx, sub, mut, "customer.subscription.updated")
    return ctx.ok(holder[0])


@route("GET", "/v1/subscription_items/{id}")
def get_subscription_item(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = _item(ctx, m["id"], allow_deleted=True)
    return Resp(rec.deleted_stub()) if rec.deleted else ctx.ok(rec)


@route("POST", "/v1/subscription_items/{id}")
def update_subscription_item(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = _item(ctx, m["id"])
    sub = get_or_404(ctx, "subscription", rec.obj["subscription"])

    def mut(o: JSON) -> None:
        _apply_item_params(ctx, rec, params, "subscription_item")
        refresh_items(sub)

    update_record(ctx, sub, mut, "customer.subscription.updated")
    return ctx.ok(rec)


@route("DELETE", "/v1/subscription_items/{id}")
def delete_subscription_item(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = _item(ctx, m["id"])
    sub = get_or_404(ctx, "subscription", rec.obj["subscription"])
    if len(sub.extra["items"]) <= 1:
        raise invalid(
            "A subscription must have at least one active plan. To cancel a "
            "subscription, please use the cancel API endpoint on /v1/subscriptions."
        )
    remove_item(sub, rec)
    refresh_items(sub)
    return Resp(rec.deleted_stub())


@route("POST", "/v1/subscription_items/{id}/usage_records")
def create_usage_record(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    """Legacy endpoint (removed in 2025-03-31.basil): kept because older daemons report here."""
    rec = _item(ctx, m["id"])
    qty = to_int(need(params, "quantity"), "quantity")
    ts_raw = params.get("timestamp", "now")
    ts = ctx.now if ts_raw in ("now", "") else to_int(ts_raw, "timestamp")
    action = params.get("action") or "increment"
    if action not in ("increment", "set"):
        raise invalid("Invalid action: must be one of increment or set", param="action")
    usage: dict[str, int] = ctx.state.usage_totals
    if action == "set":
        usage[rec.id] = qty
    else:
        usage[rec.id] = usage.get(rec.id, 0) + qty
    obj: JSON = {
        "id": ctx.state.new_id("mbur_"),
        "object": "usage_record",
        "livemode": False,
        "quantity": qty,
        "subscription_item": rec.id,
        "timestamp": ts,
    }
    import orjson

    return Resp(orjson.dumps(obj))


# ---------------------------------------------------------------------------------------------
# Invoices and lines


def create_invoice_obj(
    ctx: Ctx,
    customer: str,
    sub: Record | None,
    reason: str,
    params: JSON | None = None,
    fill: Callable[[Record], None] | None = None,
) -> Record:
    """A new invoice; `fill` adds its lines before `invoice.created`, whose snapshot shows the
    lines the invoice was created with, as Stripe's does."""
    params = params or {}
    cus = get_or_404(ctx, "customer", customer, "customer", "customer")
    obj = new_object(ctx, "invoice", "in_")
    now = ctx.now
    c = cus.obj
    obj.update(
        account_country="US",
        account_name="Emulated Account",
        account_tax_ids=None,
        amount_due=0,
        amount_overpaid=0,
        amount_paid=0,
        amount_remaining=0,
        amount_shipping=0,
        application=None,
        attempt_count=0,
        attempted=False,
        auto_advance=sub is not None
        if "auto_advance" not in params
        else to_bool(params["auto_advance"], "auto_advance"),
        automatic_tax={
            "disabled_reason": None,
            "enabled": False,
            "liability": None,
            "provider": None,
            "status": None,
        },
        automatically_finalizes_at=None,
        billing_reason=reason,
        collection_method=params.get("collection_method")
        or (sub.obj["collection_method"] if sub else "charge_automatically"),
        currency=str(params.get("currency") or (sub.obj["currency"] if sub else "usd")),
        custom_fields=None,
        customer=customer,
        customer_account=None,
        customer_address=c.get("address"),
        customer_email=c.get("email"),
        customer_name=c.get("name"),
        customer_phone=c.get("phone"),
        customer_shipping=c.get("shipping"),
        customer_tax_exempt=c.get("tax_exempt"),
        customer_tax_ids=[],
        default_payment_method=None,
        default_source=None,
        default_tax_rates=[],
        description=params.get("description") or None,
        discounts=[],
        due_date=None,
        effective_at=None,
        ending_balance=None,
        footer=None,
        from_invoice=None,
        hosted_invoice_url=None,
        invoice_pdf=None,
        issuer={"type": "self"},
        last_finalization_error=None,
        latest_revision=None,
        next_payment_attempt=None,
        number=None,
        on_behalf_of=None,
        parent=None
        if sub is None
        else {
            "quote_details": None,
            "type": "subscription_details",
            "subscription_details": {"metadata": dict(sub.obj["metadata"]), "subscription": sub.id},
        },
        period_end=now,
        period_start=now,
        post_payment_credit_notes_amount=0,
        pre_payment_credit_notes_amount=0,
        receipt_number=None,
        rendering=None,
        shipping_cost=None,
        shipping_details=None,
        starting_balance=int(c.get("balance") or 0),
        statement_descriptor=None,
        status="draft",
        status_transitions={
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        subtotal=0,
        subtotal_excluding_tax=0,
        test_clock=None,
        total=0,
        total_discount_amounts=[],
        total_excluding_tax=0,
        total_pretax_credit_amounts=[],
        total_taxes=[],
        webhooks_delivered_at=now,
    )
    obj["subscription"] = sub.id if sub else None  # not in basil's key set unless fixture has it
    if "subscription" not in template_keys("invoice"):
        obj.pop("subscription")
    if obj["collection_method"] == "send_invoice":
        obj["days_until_due"] = opt_int(params, "days_until_due", 30)
    if "days_until_due" not in template_keys("invoice"):
        obj.pop("days_until_due", None)
    merge_metadata(obj, params.get("metadata") or {})
    rec = ctx.state.insert(obj)
    rec.extra["lines"] = []
    if fill is not None:
        fill(rec)
    refresh_lines(rec)
    ctx.emit("invoice.created", rec)
    return rec


_TEMPLATE_KEYS: dict[str, set[str]] = {}


def template_keys(type_: str) -> set[str]:
    ks = _TEMPLATE_KEYS.get(type_)
    if ks is None:
        from .framework import template

        ks = _TEMPLATE_KEYS[type_] = set(template(type_))
    return ks


def refresh_lines(inv: Record) -> None:
    lines: list[Record] = inv.extra["lines"]
    total = sum(int(r.obj["amount"]) for r in lines)
    inv.obj["lines"] = nested_list([r.obj for r in lines], f"/v1/invoices/{inv.id}/lines")
    o = inv.obj
    credit = int(o["pre_payment_credit_notes_amount"])
    o.update(subtotal=total, subtotal_excluding_tax=total, total=total, total_excluding_tax=total)
    if o["status"] in ("draft", "open"):
        o["amount_due"] = max(total - credit, 0)
        o["amount_remaining"] = max(o["amount_due"] - int(o["amount_paid"]), 0)
    inv.invalidate()


def add_line(
    ctx: Ctx,
    inv: Record,
    amount: int,
    price: JSON | None,
    qty: int,
    sub_item: Record | None = None,
    sub: Record | None = None,
    invoice_item: Record | None = None,
    description: str | None = None,
) -> Record:
    obj = new_object(ctx, "line_item", "il_")
    period = {"start": ctx.now, "end": ctx.now}
    if sub_item is not None:
        period = {
            "start": sub_item.obj["current_period_start"],
            "end": sub_item.obj["current_period_end"],
        }
    if sub_item is not None and sub is not None:
        parent: JSON = {
            "type": "subscription_item_details",
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": None,
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": sub.id,
                "subscription_item": sub_item.id,
            },
        }
    else:
        parent = {
            "type": "invoice_item_details",
            "subscription_item_details": None,
            "invoice_item_details": {
                "invoice_item": invoice_item.id if invoice_item else None,
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": None,
            },
        }
    obj.update(
        amount=amount,
        currency=inv.obj["currency"],
        description=description
        or (f"{qty} x {price.get('nickname') or price['product']}" if price else None),
        discount_amounts=[],
        discountable=True,
        discounts=[],
        invoice=inv.id,
        parent=parent,
        period=period,
        pretax_credit_amounts=[],
        pricing={
            "price_details": {"price": price["id"], "product": price["product"]},
            "type": "price_details",
            "unit_amount_decimal": price.get("unit_amount_decimal"),
        }
        if price
        else None,
        quantity=qty,
        quantity_decimal=str(qty),
        subscription=sub.id if sub else None,
        subtotal=amount,
        taxes=[],
    )
    rec = ctx.state.insert(obj)
    rec.extra["invoice"] = inv.id
    inv.extra["lines"].append(rec)
    refresh_lines(inv)
    return rec


def _invoice(ctx: Ctx, id_: str) -> Record:
    return get_or_404(ctx, "invoice", id_, "invoice")


def finalize_invoice(ctx: Ctx, inv: Record) -> None:
    if inv.obj["status"] != "draft":
        raise invalid(
            "This invoice is already finalized, you can't re-finalize a non-draft invoice."
        )
    cus = ctx.state.get("customer", inv.obj["customer"])

    def mut(o: JSON) -> None:
        seq = 1
        prefix = "EMU"
        if cus is not None:
            seq = int(cus.obj.get("next_invoice_sequence") or 1)
            prefix = str(cus.obj.get("invoice_prefix") or "EMU")
            cus.obj["next_invoice_sequence"] = seq + 1
            cus.invalidate()
        o.update(
            status="open",
            number=f"{prefix}-{seq:04d}",
            effective_at=ctx.now,
            hosted_invoice_url=f"https://invoice.stripe.com/i/emulated/{inv.id}",
            invoice_pdf=f"https://pay.stripe.com/invoice/emulated/{inv.id}/pdf",
        )
        o["status_transitions"] = {**o["status_transitions"], "finalized_at": ctx.now}
        if o["collection_method"] == "send_invoice":
            o["due_date"] = ctx.now + 30 * 86400

    update_record(ctx, inv, mut, None)
    ctx.emit("invoice.finalized", inv)


def pay_invoice(ctx: Ctx, inv: Record, pm: str | None, out_of_band: bool = False) -> None:
    if inv.obj["status"] == "paid":
        raise invalid("Invoice is already paid.")
    if inv.obj["status"] != "open":
        raise invalid(
            f"You cannot pay this invoice because it has a status of {inv.obj['status']}."
        )
    amount = int(inv.obj["amount_remaining"])
    if amount > 0 and not out_of_band:
        from .payments import charge_for_invoice

        if pm is None:
            inv.obj.update(attempted=True, attempt_count=inv.obj["attempt_count"] + 1)
            inv.invalidate()
            ctx.emit("invoice.payment_failed", inv)
            raise StripeError(
                402,
                "This customer has no attached payment source or default "
                "payment method. Please consider adding a default payment method.",
                type_="card_error",
                code="card_declined",
            )
        try:
            charge_for_invoice(ctx, inv, pm, amount)
        except StripeError:
            inv.obj.update(attempted=True, attempt_count=inv.obj["attempt_count"] + 1)
            inv.invalidate()
            ctx.emit("invoice.payment_failed", inv)
            raise

    def mut(o: JSON) -> None:
        o.update(
            status="paid",
            amount_paid=int(o["amount_paid"]) + amount,
            amount_remaining=0,
            attempted=True,
            attempt_count=o["attempt_count"] + (0 if out_of_band else 1),
            ending_balance=o["starting_balance"],
        )
        o["status_transitions"] = {**o["status_transitions"], "paid_at": ctx.now}

    update_record(ctx, inv, mut, None)
    ctx.emit("invoice.paid", inv)
    if not out_of_band:
        ctx.emit("invoice.payment_succeeded", inv)


@route("POST", "/v1/invoices")
def create_invoice(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    cus = str(need(params, "customer"))
    sub = None
    if params.get("subscription"):
        sub = get_or_404(
            ctx, "subscription", str(params["subscription"]), "subscription", "subscription"
        )

    def take_up_pending(inv: Record) -> None:
        if params.get("pending_invoice_items_behavior") == "include":
            for ii in ctx.state.iter_type("invoiceitem"):
                if ii.obj["customer"] == cus and ii.obj["invoice"] is None and not ii.deleted:
                    _attach_invoice_item(ctx, ii, inv)

    return ctx.ok(create_invoice_obj(ctx, cus, sub, "manual", params, take_up_pending))


@route("GET", "/v1/invoices/{id}")
def get_invoice(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "invoice", m["id"], "invoice", allow_deleted=True)
    return Resp(rec.deleted_stub()) if rec.deleted else ctx.ok(rec)


@route("POST", "/v1/invoices/{id}")
def update_invoice(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    inv = _invoice(ctx, m["id"])
    fields = (
        {"metadata"}
        if inv.obj["status"] != "draft"
        else {"metadata", "description", "auto_advance", "collection_method", "footer"}
    )
    update_record(ctx, inv, lambda o: apply_params(o, params, fields), "invoice.updated")
    return ctx.ok(inv)


@route("DELETE", "/v1/invoices/{id}")
def delete_invoice(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    inv = _invoice(ctx, m["id"])
    if inv.obj["status"] != "draft":
        raise invalid("You can only delete draft invoices.")
    for line in inv.extra["lines"]:
        line.deleted = True
    return delete_record(ctx, inv, "invoice.deleted")


@route("POST", "/v1/invoices/{id}/finalize")
def finalize_invoice_ep(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    inv = _invoice(ctx, m["id"])
    finalize_invoice(ctx, inv)
    return ctx.ok(inv)


@route("POST", "/v1/invoices/{id}/pay")
def pay_invoice_ep(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    inv = _invoice(ctx, m["id"])
    if inv.obj["status"] == "draft":
        finalize_invoice(ctx, inv)
    oob = to_bool(params.get("paid_out_of_band", False), "paid_out_of_band")
    pm = params.get("payment_method") or default_pm(ctx, inv.obj["customer"])
    pay_invoice(ctx, inv, str(pm) if pm else None, oob)
    return ctx.ok(inv)


@route("POST", "/v1/invoices/{id}/void")
def void_invoice(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    inv = _invoice(ctx, m["id"])
    if inv.obj["status"] not in ("open", "uncollectible"):
        raise invalid(f"You can only pass in open invoices. This invoice is {inv.obj['status']}.")

    def mut(o: JSON) -> None:
        o["status"] = "void"
        o["status_transitions"] = {**o["status_transitions"], "voided_at": ctx.now}

    update_record(ctx, inv, mut, None)
    ctx.emit("invoice.voided", inv)
    return ctx.ok(inv)


@route("POST", "/v1/invoices/{id}/mark_uncollectible")
def mark_uncollectible(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    inv = _invoice(ctx, m["id"])
    if inv.obj["status"] != "open":
        raise invalid("You can only mark open invoices as uncollectible.")

    def mut(o: JSON) -> None:
        o["status"] = "uncollectible"
        o["status_transitions"] = {**o["status_transitions"], "marked_uncollectible_at": ctx.now}

    update_record(ctx, inv, mut, None)
    ctx.emit("invoice.marked_uncollectible", inv)
    return ctx.ok(inv)


@route("POST", "/v1/invoices/{id}/send")
def send_invoice(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    inv = _invoice(ctx, m["id"])
    ctx.emit("invoice.sent", inv)
    return ctx.ok(inv)


@route("GET", "/v1/invoices/{id}/lines")
def list_invoice_lines(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    inv = _invoice(ctx, m["id"])
    lp = parse_list_params(params)
    page, more = page_sequence(inv.extra["lines"], lp, "line_item")
    return Resp(list_body([r.to_bytes() for r in page], more, f"/v1/invoices/{inv.id}/lines"))


@route("GET", "/v1/invoices")
def list_invoices(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds = filters(
        params,
        {"customer": "customer", "status": "status", "collection_method": "collection_method"},
    )
    if params.get("subscription"):
        sid = params["subscription"]
        preds.append(
            lambda r: (
                ((r.obj.get("parent") or {}).get("subscription_details") or {}).get("subscription")
                == sid
            )
        )
    return list_response(ctx, "invoice", "/v1/invoices", params, all_of(preds))


# ---------------------------------------------------------------------------------------------
# Invoice items


def _attach_invoice_item(ctx: Ctx, ii: Record, inv: Record) -> None:
    if inv.obj["status"] != "draft":
        raise invalid("You can only add invoice items to draft invoices.", param="invoice")
    ii.obj["invoice"] = inv.id
    ii.invalidate()
    price = None
    pricing = ii.obj.get("pricing") or {}
    pid = (pricing.get("price_details") or {}).get("price")
    if pid:
        p = ctx.state.get("price", pid)
        price = p.obj if p else None
    line = add_line(
        ctx,
        inv,
        int(ii.obj["amount"]),
        price,
        int(ii.obj["quantity"]),
        invoice_item=ii,
        description=ii.obj.get("description"),
    )
    ii.extra["line"] = line.id


@route("POST", "/v1/invoiceitems")
def create_invoice_item(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    cus = str(need(params, "customer"))
    get_or_404(ctx, "customer", cus, "customer", "customer")
    obj = new_object(ctx, "invoiceitem", "ii_")
    qty = to_int(params.get("quantity", 1), "quantity")
    price_id = params.get("price") or (params.get("pricing") or {}).get("price")
    price = None
    if price_id:
        price = get_or_404(ctx, "price", str(price_id), "price", "price")
        amount = int(price.obj["unit_amount"] or 0) * qty
        currency = price.obj["currency"]
    else:
        amount = to_int(params.get("amount", params.get("unit_amount", 0)), "amount")
        currency = str(need(params, "currency")).lower()
    obj.update(
        amount=amount,
        currency=currency,
        customer=cus,
        customer_account=None,
        date=ctx.now,
        description=params.get("description") or None,
        discountable=True,
        discounts=[],
        invoice=None,
        net_amount=amount,
        parent=None,
        period={"start": ctx.now, "end": ctx.now},
        pricing={
            "price_details": {"price": price.id, "product": price.obj["product"]},
            "type": "price_details",
            "unit_amount_decimal": price.obj["unit_amount_decimal"],
        }
        if price
        else {"price_details": None, "type": "price_details", "unit_amount_decimal": str(amount)},
        proration=False,
        quantity=qty,
        quantity_decimal=str(qty),
        tax_rates=[],
        test_clock=None,
    )
    merge_metadata(obj, params.get("metadata") or {})
    rec = ctx.state.insert(obj)
    ctx.emit("invoiceitem.created", rec)
    if params.get("invoice"):
        _attach_invoice_item(ctx, rec, _invoice(ctx, str(params["invoice"])))
    return ctx.ok(rec)


@route("GET", "/v1/invoiceitems/{id}")
def get_invoice_item(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "invoiceitem", m["id"], "invoiceitem", allow_deleted=True)
    return Resp(rec.deleted_stub()) if rec.deleted else ctx.ok(rec)


@route("POST", "/v1/invoiceitems/{id}")
def update_invoice_item(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "invoiceitem", m["id"], "invoiceitem")
    # Stripe has no invoiceitem.updated event type.
    return ctx.ok(
        update_record(
            ctx, rec, lambda o: apply_params(o, params, {"metadata", "description"}), None
        )
    )


@route("DELETE", "/v1/invoiceitems/{id}")
def delete_invoice_item(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "invoiceitem", m["id"], "invoiceitem")
    if rec.obj["invoice"]:
        inv = _invoice(ctx, rec.obj["invoice"])
        if inv.obj["status"] != "draft":
            raise invalid("You can only delete invoice items attached to draft invoices.")
        inv.extra["lines"] = [ln for ln in inv.extra["lines"] if ln.id != rec.extra.get("line")]
        refresh_lines(inv)
    return delete_record(ctx, rec, "invoiceitem.deleted")


@route("GET", "/v1/invoiceitems")
def list_invoice_items(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds = filters(params, {"customer": "customer", "invoice": "invoice"})
    if "pending" in params:
        pend = to_bool(params["pending"], "pending")
        preds.append(lambda r: (r.obj["invoice"] is None) is pend)
    return list_response(ctx, "invoiceitem", "/v1/invoiceitems", params, all_of(preds))


# ---------------------------------------------------------------------------------------------
# Credit notes


@route("POST", "/v1/credit_notes")
def create_credit_note(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    inv = _invoice(ctx, str(need(params, "invoice")))
    if inv.obj["status"] not in ("open", "paid"):
        raise invalid(
            "You can only create credit notes for open or paid invoices.", param="invoice"
        )
    lines_p = params.get("lines") or []
    amount = opt_int(params, "amount")
    cn = new_object(ctx, "credit_note", "cn_")
    cn_lines: list[JSON] = []
    if isinstance(lines_p, list) and lines_p:
        amount = 0
        for i, lp in enumerate(lines_p):
            li = new_object(ctx, "credit_note_line_item", "cnli_")
            if lp.get("invoice_line_item"):
                src = get_or_404(
                    ctx,
                    "line_item",
                    str(lp["invoice_line_item"]),
                    "line_item",
                    f"lines[{i}][invoice_line_item]",
                )
                q = to_int(lp.get("quantity", src.obj["quantity"] or 1), "quantity")
                unit = int(src.obj["amount"]) // max(int(src.obj["quantity"] or 1), 1)
                a = opt_int(lp, "amount", unit * q) or 0
                li.update(invoice_line_item=src.id, type="invoice_line_item", quantity=q)
            else:
                a = to_int(lp.get("amount", lp.get("unit_amount", 0)), "amount")
                li.update(
                    invoice_line_item=None,
                    type="custom_line_item",
                    quantity=to_int(lp.get("quantity", 1), "quantity"),
                )
            li.update(
                amount=a,
                description=lp.get("description"),
                discount_amount=0,
                discount_amounts=[],
                pretax_credit_amounts=[],
                tax_rates=[],
                taxes=[],
                unit_amount=a,
                unit_amount_decimal=str(a),
            )
            amount += a
            cn_lines.append(li)
    if amount is None:
        raise invalid("Missing required param: amount or lines.", param="amount")
    paid = inv.obj["status"] == "paid"
    cus = ctx.state.get("customer", inv.obj["customer"])
    seq = len(inv.extra.setdefault("credit_notes", [])) + 1
    cn.update(
        amount=amount,
        amount_shipping=0,
        currency=inv.obj["currency"],
        customer=inv.obj["customer"],
        customer_account=None,
        customer_balance_transaction=None,
        discount_amount=0,
        discount_amounts=[],
        effective_at=ctx.now,
        invoice=inv.id,
        memo=params.get("memo") or None,
        number=f"{inv.obj['number']}-CN-{seq:02d}",
        out_of_band_amount=None,
        pdf=f"https://pay.stripe.com/credit_notes/emulated/{cn['id']}",
        post_payment_amount=amount if paid else 0,
        pre_payment_amount=0 if paid else amount,
        pretax_credit_amounts=[],
        reason=params.get("reason") or None,
        refunds=[],
        shipping_cost=None,
        status="issued",
        subtotal=amount,
        subtotal_excluding_tax=amount,
        total=amount,
        total_excluding_tax=amount,
        total_taxes=[],
        type="post_payment" if paid else "pre_payment",
        voided_at=None,
    )
    for li in cn_lines:
        li["livemode"] = False
    cn["lines"] = nested_list(cn_lines, f"/v1/credit_notes/{cn['id']}/lines")
    merge_metadata(cn, params.get("metadata") or {})
    rec = ctx.state.insert(cn)
    rec.extra["lines"] = cn_lines
    inv.extra["credit_notes"].append(rec.id)
    ctx.emit("credit_note.created", rec)

    def mut(o: JSON) -> None:
        if paid:
            o["post_payment_credit_notes_amount"] = (
                int(o["post_payment_credit_notes_amount"]) + amount
            )
        else:
            o["pre_payment_credit_notes_amount"] = (
                int(o["pre_payment_credit_notes_amount"]) + amount
            )
            refresh_lines(inv)

    update_record(ctx, inv, mut, "invoice.updated")
    _ = cus
    return ctx.ok(rec)


@route("GET", "/v1/credit_notes/{id}")
def get_credit_note(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return ctx.ok(get_or_404(ctx, "credit_note", m["id"], "credit_note"))


@route("POST", "/v1/credit_notes/{id}")
def update_credit_note(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "credit_note", m["id"], "credit_note")
    return ctx.ok(
        update_record(
            ctx, rec, lambda o: apply_params(o, params, {"metadata", "memo"}), "credit_note.updated"
        )
    )


@route("POST", "/v1/credit_notes/{id}/void")
def void_credit_note(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "credit_note", m["id"], "credit_note")
    if rec.obj["status"] == "void":
        raise invalid("This credit note has already been voided.")
    update_record(ctx, rec, lambda o: o.update(status="void", voided_at=ctx.now), None)
    ctx.emit("credit_note.voided", rec)
    return ctx.ok(rec)


@route("GET", "/v1/credit_notes/{id}/lines")
def list_credit_note_lines(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "credit_note", m["id"], "credit_note")
    url = f"/v1/credit_notes/{rec.id}/lines"
    lp = parse_list_params(params)
    return Resp(plain_list_body(rec.extra["lines"], lp, "credit_note_line_item", url))


@route("GET", "/v1/credit_notes")
def list_credit_notes(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds = filters(params, {"customer": "customer", "invoice": "invoice"})
    return list_response(ctx, "credit_note", "/v1/credit_notes", params, all_of(preds))


# ---------------------------------------------------------------------------------------------
# Subscription schedules (a thin model: phases are stored; phase 0 starts immediately)


@route("POST", "/v1/subscription_schedules")
def create_schedule(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    obj = new_object(ctx, "subscription_schedule", "sub_sched_")
    from_sub = params.get("from_subscription")
    sub: Record | None = None
    if from_sub:
        sub = get_or_404(ctx, "subscription", str(from_sub), "subscription", "from_subscription")
        customer = sub.obj["customer"]
        phases_in: list[Any] = [
            {
                "items": [
                    {"price": i.obj["price"]["id"], "quantity": i.obj["quantity"]}
                    for i in sub.extra["items"]
                ]
            }
        ]
    else:
        customer = str(need(params, "customer"))
        get_or_404(ctx, "customer", customer, "customer", "customer")
        phases_in = params.get("phases") or []
        if not isinstance(phases_in, list) or not phases_in:
            raise invalid("Missing required param: phases.", param="phases")
    now = ctx.now
    phases: list[JSON] = []
    start = now
    for i, ph in enumerate(phases_in):
        its = ph.get("items") or []
        interval, count = _first_interval(ctx, its, f"phases[{i}][items]")
        iterations = to_int(ph.get("iterations", 1), "iterations")
        end = opt_int(ph, "end_date") or add_interval(start, interval, count * iterations)
        phases.append(
            {
                "add_invoice_items": [],
                "application_fee_percent": None,
                "automatic_tax": None,
                "billing_cycle_anchor": None,
                "billing_thresholds": None,
                "collection_method": None,
                "currency": "usd",
                "default_payment_method": None,
                "default_tax_rates": [],
                "description": None,
                "discounts": [],
                "end_date": end,
                "invoice_settings": None,
                "items": [
                    {
                        "billing_thresholds": None,
                        "discounts": [],
                        "metadata": {},
                        "plan": str(it.get("price") or it.get("plan")),
                        "price": str(it.get("price") or it.get("plan")),
                        "quantity": to_int(it.get("quantity", 1), "quantity"),
                        "tax_rates": [],
                    }
                    for it in its
                ],
                "metadata": {},
                "on_behalf_of": None,
                "proration_behavior": "create_prorations",
                "start_date": start,
                "transfer_data": None,
                "trial_end": None,
            }
        )
        start = end
    obj.update(
        application=None,
        canceled_at=None,
        completed_at=None,
        current_phase={"start_date": phases[0]["start_date"], "end_date": phases[0]["end_date"]},
        customer=customer,
        customer_account=None,
        default_settings={
            "application_fee_percent": None,
            "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
            "billing_cycle_anchor": "automatic",
            "billing_thresholds": None,
            "collection_method": "charge_automatically",
            "default_payment_method": None,
            "description": None,
            "invoice_settings": {
                "account_tax_ids": None,
                "days_until_due": None,
                "issuer": {"type": "self"},
            },
            "on_behalf_of": None,
            "transfer_data": None,
        },
        end_behavior=params.get("end_behavior") or "release",
        phases=phases,
        released_at=None,
        released_subscription=None,
        status="active",
        subscription=None,
        test_clock=None,
    )
    merge_metadata(obj, params.get("metadata") or {})
    rec = ctx.state.insert(obj)
    ctx.emit("subscription_schedule.created", rec)
    if sub is None:
        resp = create_subscription(
            ctx, {"customer": customer, "items": phases_in[0].get("items")}, {}
        )
        import orjson

        sub = get_or_404(ctx, "subscription", orjson.loads(resp.body)["id"])
    rec.obj["subscription"] = sub.id
    rec.invalidate()
    update_record(ctx, sub, lambda o: o.update(schedule=rec.id), "customer.subscription.updated")
    return ctx.ok(rec)


@route("GET", "/v1/subscription_schedules/{id}")
def get_schedule(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return ctx.ok(get_or_404(ctx, "subscription_schedule", m["id"], "subscription_schedule"))


@route("POST", "/v1/subscription_schedules/{id}")
def update_schedule(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "subscription_schedule", m["id"], "subscription_schedule")
    return ctx.ok(
        update_record(
            ctx,
            rec,
            lambda o: apply_params(o, params, {"metadata", "end_behavior"}),
            "subscription_schedule.updated",
        )
    )


@route("POST", "/v1/subscription_schedules/{id}/cancel")
def cancel_schedule(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "subscription_schedule", m["id"], "subscription_schedule")
    if rec.obj["status"] not in ("not_started", "active"):
        raise invalid(f"You cannot cancel a subscription schedule in status {rec.obj['status']}.")
    update_record(ctx, rec, lambda o: o.update(status="canceled", canceled_at=ctx.now), None)
    ctx.emit("subscription_schedule.canceled", rec)
    sub = ctx.state.get("subscription", rec.obj["subscription"] or "")
    if sub is not None and sub.obj["status"] in LIVE:
        cancel_subscription_now(ctx, sub)
    return ctx.ok(rec)


@route("POST", "/v1/subscription_schedules/{id}/release")
def release_schedule(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "subscription_schedule", m["id"], "subscription_schedule")
    sid = rec.obj["subscription"]
    update_record(
        ctx,
        rec,
        lambda o: o.update(
            status="released", released_at=ctx.now, released_subscription=sid, subscription=None
        ),
        None,
    )
    ctx.emit("subscription_schedule.released", rec)
    sub = ctx.state.get("subscription", sid or "")
    if sub is not None:
        update_record(ctx, sub, lambda o: o.update(schedule=None), "customer.subscription.updated")
    return ctx.ok(rec)


@route("GET", "/v1/subscription_schedules")
def list_schedules(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds = filters(params, {"customer": "customer"})
    return list_response(
        ctx, "subscription_schedule", "/v1/subscription_schedules", params, all_of(preds)
    )


def _unused_card_declined() -> StripeError:
    return card_declined()


VIRTUAL_EXPAND.setdefault("subscription", {})
