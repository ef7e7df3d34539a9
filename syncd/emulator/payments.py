"""Payment intents, charges, refunds, balance transactions, disputes, payouts and checkout
sessions."""

from __future__ import annotations

from typing import Any

import orjson

from .catalog import attach_pm, resolve_pm
from .errors import StripeError, card_declined, invalid
from .framework import (
    VIRTUAL_EXPAND,
    Ctx,
    Resp,
    all_of,
    apply_params,
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
from .state import JSON, Record, State

FEE_PERCENT = 2.9
FEE_FIXED = 30


def balance_txn(
    ctx: Ctx, amount: int, currency: str, type_: str, source: str, fee: bool = True
) -> Record:
    obj = new_object(ctx, "balance_transaction", "txn_")
    f = round(abs(amount) * FEE_PERCENT / 100) + FEE_FIXED if fee and amount > 0 else 0
    obj.update(
        amount=amount,
        available_on=ctx.now + 2 * 86400,
        balance_type="payments",
        currency=currency,
        description=None,
        exchange_rate=None,
        fee=f,
        fee_details=[
            {
                "amount": f,
                "application": None,
                "currency": currency,
                "description": "Stripe processing fees",
                "type": "stripe_fee",
            }
        ]
        if f
        else [],
        net=amount - f,
        reporting_category={
            "charge": "charge",
            "refund": "refund",
            "payout": "payout",
            "adjustment": "dispute",
        }.get(type_, type_),
        source=source,
        status="pending",
        type=type_,
    )
    return ctx.state.insert(obj)


# ---------------------------------------------------------------------------------------------
# Charges


def refresh_refunds(ch: Record) -> None:
    refunds: list[Record] = ch.extra.setdefault("refunds", [])
    ch.obj["refunds"] = nested_list(
        [r.obj for r in reversed(refunds)], f"/v1/charges/{ch.id}/refunds"
    )
    ch.invalidate()


def new_charge(
    ctx: Ctx,
    amount: int,
    currency: str,
    customer: str | None,
    pm: Record,
    pi: str | None,
    description: str | None,
    capture: bool = True,
) -> Record:
    obj = new_object(ctx, "charge", "ch_")
    declined = bool(pm.extra.get("declines"))
    card = pm.obj.get("card") or {}
    obj.update(
        amount=amount,
        amount_captured=amount if capture and not declined else 0,
        amount_refunded=0,
        application=None,
        application_fee=None,
        application_fee_amount=None,
        balance_transaction=None,
        billing_details=pm.obj["billing_details"],
        calculated_statement_descriptor="EMULATOR",
        captured=capture and not declined,
        currency=currency,
        customer=customer,
        description=description,
        disputed=False,
        failure_balance_transaction=None,
        failure_code="card_declined" if declined else None,
        failure_message="Your card was declined." if declined else None,
        fraud_details={},
        on_behalf_of=None,
        paid=not declined,
        payment_intent=pi,
        payment_method=pm.id,
        payment_method_details={
            "type": "card",
            "card": {
                "brand": card.get("brand"),
                "last4": card.get("last4"),
                "exp_month": 12,
                "exp_year": 2034,
                "country": "US",
                "funding": "credit",
                "network": card.get("brand"),
            },
        },
        outcome={
            "network_status": "declined_by_network" if declined else "approved_by_network",
            "reason": "generic_decline" if declined else None,
            "risk_level": "normal",
            "risk_score": 20,
            "seller_message": "The bank did not return any further details with this decline."
            if declined
            else "Payment complete.",
            "type": "issuer_declined" if declined else "authorized",
        },
        receipt_email=None,
        receipt_number=None,
        receipt_url=f"https://pay.stripe.com/receipts/emulated/{obj['id']}",
        refunded=False,
        review=None,
        shipping=None,
        source=None,
        source_transfer=None,
        statement_descriptor=None,
        statement_descriptor_suffix=None,
        status="failed" if declined else "succeeded",
        transfer_data=None,
        transfer_group=None,
    )
    rec = ctx.state.insert(obj)
    rec.extra["refunds"] = []
    refresh_refunds(rec)
    if not declined and capture:
        bt = balance_txn(ctx, amount, currency, "charge", rec.id)
        rec.obj["balance_transaction"] = bt.id
        rec.invalidate()
    return rec


@route("GET", "/v1/charges/{id}")
def get_charge(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return ctx.ok(get_or_404(ctx, "charge", m["id"], "charge"))


@route("POST", "/v1/charges/{id}")
def update_charge(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "charge", m["id"], "charge")
    return ctx.ok(
        update_record(
            ctx,
            rec,
            lambda o: apply_params(o, params, {"metadata", "description", "receipt_email"}),
            "charge.updated",
        )
    )


@route("GET", "/v1/charges")
def list_charges(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds = filters(params, {"customer": "customer", "payment_intent": "payment_intent"})
    return list_response(ctx, "charge", "/v1/charges", params, all_of(preds))


@route("GET", "/v1/charges/{id}/refunds")
def list_charge_refunds(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    ch = get_or_404(ctx, "charge", m["id"], "charge")
    items = list(reversed(ch.extra["refunds"]))
    page, more = page_sequence(items, parse_list_params(params), "refund")
    return Resp(list_body([r.to_bytes() for r in page], more, f"/v1/charges/{ch.id}/refunds"))


# ---------------------------------------------------------------------------------------------
# Payment intents


def new_payment_intent(ctx: Ctx, params: JSON) -> Record:
    amount = to_int(need(params, "amount"), "amount")
    if amount < 50:
        raise invalid("Amount must be at least $0.50 usd", param="amount", code="amount_too_small")
    currency = str(need(params, "currency")).lower()
    cus = params.get("customer") or None
    if cus:
        get_or_404(ctx, "customer", str(cus), "customer", "customer")
    obj = new_object(ctx, "payment_intent", "pi_")
    obj.update(
        amount=amount,
        amount_capturable=0,
        amount_details={"tip": {}},
        amount_received=0,
        application=None,
        application_fee_amount=None,
        automatic_payment_methods=None,
        canceled_at=None,
        cancellation_reason=None,
        capture_method=params.get("capture_method") or "automatic",
        confirmation_method=params.get("confirmation_method") or "automatic",
        currency=currency,
        customer=cus,
        customer_account=None,
        description=params.get("description") or None,
        excluded_payment_method_types=None,
        last_payment_error=None,
        latest_charge=None,
        next_action=None,
        on_behalf_of=None,
        payment_method=None,
        payment_method_configuration_details=None,
        payment_method_options={},
        payment_method_types=params.get("payment_method_types") or ["card"],
        processing=None,
        receipt_email=params.get("receipt_email") or None,
        review=None,
        setup_future_usage=params.get("setup_future_usage") or None,
        shipping=None,
        source=None,
        statement_descriptor=None,
        statement_descriptor_suffix=None,
        status="requires_payment_method",
        transfer_data=None,
        transfer_group=None,
    )
    obj["client_secret"] = f"{obj['id']}_secret_{ctx.state.new_id('', 16)}"
    merge_metadata(obj, params.get("metadata") or {})
    rec = ctx.state.insert(obj)
    ctx.emit("payment_intent.created", rec)
    if params.get("payment_method"):
        pm = resolve_pm(ctx, str(params["payment_method"]))
        rec.obj.update(payment_method=pm.id, status="requires_confirmation")
        rec.invalidate()
    return rec


def confirm_pi(ctx: Ctx, pi: Record, params: JSON) -> None:
    o = pi.obj
    if params.get("payment_method"):
        pm0 = resolve_pm(ctx, str(params["payment_method"]))
        o["payment_method"] = pm0.id
    if o["status"] not in ("requires_payment_method", "requires_confirmation"):
        raise invalid(
            f"You cannot confirm this PaymentIntent because it has a status of {o['status']}.",
            code="payment_intent_unexpected_state",
        )
    if not o["payment_method"]:
        raise invalid(
            "You cannot confirm this PaymentIntent because it's missing a payment "
            "method. To confirm the PaymentIntent with cus_, specify a payment method "
            "attached to this customer along with the customer ID.",
            code="payment_intent_unexpected_state",
        )
    pm = get_or_404(ctx, "payment_method", o["payment_method"], "PaymentMethod")
    capture = o["capture_method"] == "automatic" or o["capture_method"] == "automatic_async"
    ch = new_charge(
        ctx, int(o["amount"]), o["currency"], o["customer"], pm, pi.id, o["description"], capture
    )
    o["latest_charge"] = ch.id
    pi.invalidate()
    if ch.obj["status"] == "failed":
        ctx.emit("charge.failed", ch)
        err = {
            "charge": ch.id,
            "code": "card_declined",
            "decline_code": "generic_decline",
            "message": "Your card was declined.",
            "type": "card_error",
            "payment_method": pm.obj,
        }
        o.update(status="requires_payment_method", last_payment_error=err, payment_method=None)
        pi.invalidate()
        ctx.emit("payment_intent.payment_failed", pi)
        raise card_declined()
    if o.get("setup_future_usage") and o["customer"]:
        attach_pm(ctx, pm.id, o["customer"])
    if capture:
        o.update(status="succeeded", amount_received=o["amount"], last_payment_error=None)
        pi.invalidate()
        ctx.emit("charge.succeeded", ch)
        ctx.emit("payment_intent.succeeded", pi)
    else:
        o.update(status="requires_capture", amount_capturable=o["amount"])
        pi.invalidate()
        ctx.emit("charge.succeeded", ch)
        ctx.emit("payment_intent.amount_capturable_updated", pi)


@route("POST", "/v1/payment_intents")
def create_payment_intent(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    pi = new_payment_intent(ctx, params)
    if to_bool(params.get("confirm", False), "confirm"):
        confirm_pi(ctx, pi, {})
    return ctx.ok(pi)


@route("GET", "/v1/payment_intents/{id}")
def get_payment_intent(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return ctx.ok(get_or_404(ctx, "payment_intent", m["id"], "payment_intent"))


@route("POST", "/v1/payment_intents/{id}")
def update_payment_intent(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "payment_intent", m["id"], "payment_intent")
    # No payment_intent.updated event type exists in Stripe.
    return ctx.ok(
        update_record(
            ctx,
            rec,
            lambda o: apply_params(o, params, {"metadata", "description", "receipt_email"}),
            None,
        )
    )


@route("POST", "/v1/payment_intents/{id}/confirm")
def confirm_payment_intent(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    pi = get_or_404(ctx, "payment_intent", m["id"], "payment_intent")
    confirm_pi(ctx, pi, params)
    return ctx.ok(pi)


@route("POST", "/v1/payment_intents/{id}/capture")
def capture_payment_intent(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    pi = get_or_404(ctx, "payment_intent", m["id"], "payment_intent")
    o = pi.obj
    if o["status"] != "requires_capture":
        raise invalid(
            f"This PaymentIntent could not be captured because it has a status of "
            f"{o['status']}. Only a PaymentIntent with one of the following statuses "
            f"may be captured: requires_capture.",
            code="payment_intent_unexpected_state",
        )
    amt = opt_int(params, "amount_to_capture", int(o["amount_capturable"])) or 0
    ch = get_or_404(ctx, "charge", o["latest_charge"])
    bt = balance_txn(ctx, amt, o["currency"], "charge", ch.id)
    update_record(
        ctx,
        ch,
        lambda c: c.update(captured=True, amount_captured=amt, balance_transaction=bt.id),
        None,
    )
    ctx.emit("charge.captured", ch)
    o.update(status="succeeded", amount_received=amt, amount_capturable=0)
    pi.invalidate()
    ctx.emit("payment_intent.succeeded", pi)
    return ctx.ok(pi)


@route("POST", "/v1/payment_intents/{id}/cancel")
def cancel_payment_intent(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    pi = get_or_404(ctx, "payment_intent", m["id"], "payment_intent")
    o = pi.obj
    if o["status"] in ("succeeded", "canceled"):
        raise invalid(
            f"You cannot cancel this PaymentIntent because it has a status of "
            f"{o['status']}. Only a PaymentIntent with one of the following statuses "
            f"may be canceled: requires_payment_method, requires_capture, "
            f"requires_confirmation, requires_action, processing.",
            code="payment_intent_unexpected_state",
        )
    o.update(
        status="canceled",
        canceled_at=ctx.now,
        amount_capturable=0,
        cancellation_reason=params.get("cancellation_reason") or "requested_by_customer",
    )
    pi.invalidate()
    ctx.emit("payment_intent.canceled", pi)
    return ctx.ok(pi)


@route("GET", "/v1/payment_intents")
def list_payment_intents(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds = filters(params, {"customer": "customer"})
    return list_response(ctx, "payment_intent", "/v1/payment_intents", params, all_of(preds))


def charge_for_invoice(ctx: Ctx, inv: Record, pm: str, amount: int) -> Record:
    pi = new_payment_intent(
        ctx,
        {
            "amount": str(max(amount, 50)),
            "currency": inv.obj["currency"],
            "customer": inv.obj["customer"],
            "payment_method": pm,
            # Stripe's wording: a renewal's payment reads "Subscription update".
            "description": {
                "subscription_create": "Subscription creation",
                "subscription_cycle": "Subscription update",
                "subscription_update": "Subscription update",
            }.get(str(inv.obj["billing_reason"]), "Invoice payment"),
        },
    )
    pi.obj["amount"] = amount
    pi.invalidate()
    confirm_pi(ctx, pi, {})
    inv.extra["payment_intent"] = pi.id
    return pi


# ---------------------------------------------------------------------------------------------
# Refunds: update the charge (amount_refunded, refunded), emit refund.created, charge.refunded
# and charge.refund.updated as Stripe does since 2024-10-28.acacia.


@route("POST", "/v1/refunds")
def create_refund(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    chid = params.get("charge")
    if not chid and params.get("payment_intent"):
        pi = get_or_404(
            ctx, "payment_intent", str(params["payment_intent"]), "payment_intent", "payment_intent"
        )
        chid = pi.obj["latest_charge"]
    if not chid:
        raise invalid(
            "One of the following params should be provided for this request: "
            "payment_intent or charge."
        )
    ch = get_or_404(ctx, "charge", str(chid), "charge", "charge")
    remaining = int(ch.obj["amount_captured"]) - int(ch.obj["amount_refunded"])
    amount = opt_int(params, "amount", remaining) or 0
    if remaining <= 0:
        raise invalid(f"Charge {ch.id} has already been refunded.", code="charge_already_refunded")
    if amount > remaining:
        raise invalid(
            f"Refund amount (${amount / 100:.2f}) is greater than unrefunded amount on "
            f"charge (${remaining / 100:.2f})",
            param="amount",
        )
    obj = new_object(ctx, "refund", "re_")
    obj.update(
        amount=amount,
        balance_transaction=None,
        charge=ch.id,
        currency=ch.obj["currency"],
        customer=ch.obj["customer"],
        customer_account=None,
        destination_details={
            "card": {
                "reference_status": "pending",
                "reference_type": "acquirer_reference_number",
                "type": "refund",
            },
            "type": "card",
        },
        payment_intent=ch.obj["payment_intent"],
        payment_method=ch.obj["payment_method"],
        reason=params.get("reason") or None,
        receipt_number=None,
        source_transfer_reversal=None,
        status="succeeded",
        transfer_reversal=None,
    )
    merge_metadata(obj, params.get("metadata") or {})
    rec = ctx.state.insert(obj)
    bt = balance_txn(ctx, -amount, ch.obj["currency"], "refund", rec.id, fee=False)
    rec.obj["balance_transaction"] = bt.id
    rec.invalidate()
    ch.extra["refunds"].append(rec)

    def mut(o: JSON) -> None:
        o["amount_refunded"] = int(o["amount_refunded"]) + amount
        o["refunded"] = o["amount_refunded"] >= o["amount_captured"]
        refresh_refunds(ch)

    ctx.emit("refund.created", rec)
    update_record(ctx, ch, mut, "charge.refunded")
    ctx.emit("charge.refund.updated", rec)
    return ctx.ok(rec)


@route("GET", "/v1/refunds/{id}")
def get_refund(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return ctx.ok(get_or_404(ctx, "refund", m["id"], "refund"))


@route("POST", "/v1/refunds/{id}")
def update_refund(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "refund", m["id"], "refund")
    update_record(ctx, rec, lambda o: apply_params(o, params, {"metadata"}), "refund.updated")
    return ctx.ok(rec)


@route("GET", "/v1/refunds")
def list_refunds(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds = filters(params, {"charge": "charge", "payment_intent": "payment_intent"})
    return list_response(ctx, "refund", "/v1/refunds", params, all_of(preds))


# ---------------------------------------------------------------------------------------------
# Balance transactions, payouts, disputes


@route("GET", "/v1/balance_transactions/{id}")
def get_balance_txn(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return ctx.ok(get_or_404(ctx, "balance_transaction", m["id"], "balance_transaction"))


@route("GET", "/v1/balance_transactions")
def list_balance_txns(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds = filters(params, {"type": "type", "source": "source", "currency": "currency"})
    if params.get("payout"):
        pid = params["payout"]
        preds.append(lambda r: r.extra.get("payout") == pid)
    return list_response(
        ctx, "balance_transaction", "/v1/balance_transactions", params, all_of(preds)
    )


@route("POST", "/v1/payouts")
def create_payout(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    amount = to_int(need(params, "amount"), "amount")
    currency = str(need(params, "currency")).lower()
    obj = new_object(ctx, "payout", "po_")
    obj.update(
        amount=amount,
        application_fee=None,
        application_fee_amount=None,
        arrival_date=ctx.now + 2 * 86400,
        automatic=False,
        balance_transaction=None,
        currency=currency,
        description=params.get("description") or None,
        destination="ba_emulated",
        failure_balance_transaction=None,
        failure_code=None,
        failure_message=None,
        method=params.get("method") or "standard",
        original_payout=None,
        payout_method=None,
        reconciliation_status="not_applicable",
        reversed_by=None,
        source_type="card",
        statement_descriptor=params.get("statement_descriptor") or None,
        status="pending",
        trace_id={"status": "pending", "value": None},
        type="bank_account",
    )
    merge_metadata(obj, params.get("metadata") or {})
    rec = ctx.state.insert(obj)
    bt = balance_txn(ctx, -amount, currency, "payout", rec.id, fee=False)
    rec.obj["balance_transaction"] = bt.id
    rec.invalidate()
    ctx.emit("payout.created", rec)
    return ctx.ok(rec)


@route("GET", "/v1/payouts/{id}")
def get_payout(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return ctx.ok(get_or_404(ctx, "payout", m["id"], "payout"))


@route("POST", "/v1/payouts/{id}")
def update_payout(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "payout", m["id"], "payout")
    return ctx.ok(
        update_record(ctx, rec, lambda o: apply_params(o, params, {"metadata"}), "payout.updated")
    )


@route("POST", "/v1/payouts/{id}/cancel")
def cancel_payout(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "payout", m["id"], "payout")
    if rec.obj["status"] != "pending":
        raise invalid("Only pending payouts can be canceled.")
    update_record(ctx, rec, lambda o: o.update(status="canceled"), None)
    ctx.emit("payout.canceled", rec)
    return ctx.ok(rec)


@route("GET", "/v1/payouts")
def list_payouts(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds = filters(params, {"status": "status"})
    return list_response(ctx, "payout", "/v1/payouts", params, all_of(preds))


def create_dispute(ctx: Ctx, charge_id: str, reason: str = "fraudulent") -> Record:
    ch = get_or_404(ctx, "charge", charge_id, "charge", "charge")
    obj = new_object(ctx, "dispute", "dp_")
    amount = int(ch.obj["amount_captured"]) - int(ch.obj["amount_refunded"])
    bt = balance_txn(ctx, -amount, ch.obj["currency"], "adjustment", obj["id"], fee=False)
    ev = dict(obj.get("evidence") or {})
    for k in ev:
        ev[k] = None
    obj.update(
        amount=amount,
        balance_transactions=[orjson.loads(bt.to_bytes())],
        charge=ch.id,
        currency=ch.obj["currency"],
        enhanced_eligibility_types=[],
        evidence=ev,
        evidence_details={
            "due_by": ctx.now + 7 * 86400,
            "enhanced_eligibility": {},
            "has_evidence": False,
            "past_due": False,
            "submission_count": 0,
        },
        is_charge_refundable=False,
        payment_intent=ch.obj["payment_intent"],
        payment_method_details={
            "card": {"brand": "visa", "case_type": "chargeback", "network_reason_code": "10.4"},
            "type": "card",
        },
        reason=reason,
        status="needs_response",
    )
    rec = ctx.state.insert(obj)
    update_record(ctx, ch, lambda o: o.update(disputed=True), None)
    ctx.emit("charge.dispute.created", rec)
    ctx.emit("charge.dispute.funds_withdrawn", rec)
    return rec


@route("GET", "/v1/disputes/{id}")
def get_dispute(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return ctx.ok(get_or_404(ctx, "dispute", m["id"], "dispute"))


@route("POST", "/v1/disputes/{id}")
def update_dispute(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "dispute", m["id"], "dispute")

    def mut(o: JSON) -> None:
        apply_params(o, params, {"metadata"})
        if isinstance(params.get("evidence"), dict):
            o["evidence"] = {**o["evidence"], **params["evidence"]}
        if to_bool(params.get("submit", False), "submit"):
            o["status"] = "under_review"

    return ctx.ok(update_record(ctx, rec, mut, "charge.dispute.updated"))


@route("POST", "/v1/disputes/{id}/close")
def close_dispute(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "dispute", m["id"], "dispute")
    update_record(ctx, rec, lambda o: o.update(status="lost"), None)
    ctx.emit("charge.dispute.closed", rec)
    return ctx.ok(rec)


@route("GET", "/v1/disputes")
def list_disputes(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds = filters(params, {"charge": "charge", "payment_intent": "payment_intent"})
    return list_response(ctx, "dispute", "/v1/disputes", params, all_of(preds))


# ---------------------------------------------------------------------------------------------
# Checkout sessions. Line items are not on the object unless expanded (Stripe does the same);
# completion is a test helper because a real session is completed by a customer in a browser.


def _line_items(state: State, rec: Record) -> JSON:
    items: list[JSON] = rec.extra.get("line_items", [])
    return nested_list(items, f"/v1/checkout/sessions/{rec.id}/line_items", total=False)


VIRTUAL_EXPAND.setdefault("checkout.session", {})["line_items"] = _line_items


@route("POST", "/v1/checkout/sessions")
def create_checkout_session(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    mode = params.get("mode") or "payment"
    if mode not in ("payment", "subscription", "setup"):
        raise invalid("Invalid mode", param="mode")
    cus = params.get("customer") or None
    if cus:
        get_or_404(ctx, "customer", str(cus), "customer", "customer")
    obj = new_object(ctx, "checkout.session", "cs_test_", None)
    items: list[JSON] = []
    total = 0
    currency = params.get("currency")
    lis = params.get("line_items") or []
    for i, li in enumerate(lis if isinstance(lis, list) else []):
        pid = li.get("price")
        if not pid:
            raise invalid(
                f"Missing required param: line_items[{i}][price].", param=f"line_items[{i}][price]"
            )
        price = get_or_404(ctx, "price", str(pid), "price", f"line_items[{i}][price]")
        qty = to_int(li.get("quantity", 1), "quantity")
        amt = int(price.obj["unit_amount"] or 0) * qty
        total += amt
        currency = currency or price.obj["currency"]
        it = {
            "adjustable_quantity": None,
            "amount_discount": 0,
            "amount_subtotal": amt,
            "amount_tax": 0,
            "amount_total": amt,
            "currency": price.obj["currency"],
            "description": None,
            "id": ctx.state.new_id("li_"),
            "metadata": {},
            "object": "item",
            "price": price.obj,
            "quantity": qty,
        }
        prod = ctx.state.get("product", price.obj["product"])
        it["description"] = prod.obj["name"] if prod else None
        items.append(it)
    obj.update(
        adaptive_pricing=None,
        after_expiration=None,
        allow_promotion_codes=None,
        amount_subtotal=total,
        amount_total=total,
        automatic_tax={"enabled": False, "liability": None, "provider": None, "status": None},
        billing_address_collection=None,
        cancel_url=params.get("cancel_url") or None,
        client_reference_id=params.get("client_reference_id") or None,
        client_secret=None,
        collected_information=None,
        consent=None,
        consent_collection=None,
        currency=currency or "usd",
        currency_conversion=None,
        custom_fields=[],
        custom_text={
            "after_submit": None,
            "shipping_address": None,
            "submit": None,
            "terms_of_service_acceptance": None,
        },
        customer=cus,
        customer_account=None,
        customer_creation="if_required" if mode == "payment" and not cus else None,
        customer_details=None,
        customer_email=params.get("customer_email") or None,
        discounts=[],
        expires_at=ctx.now + 86400,
        integration_identifier=None,
        invoice=None,
        invoice_creation=None,
        locale=None,
        mode=mode,
        origin_context=None,
        payment_intent=None,
        payment_link=None,
        payment_method_collection="always",
        payment_method_configuration_details=None,
        payment_method_options={},
        payment_method_types=["card"],
        payment_status="unpaid",
        permissions=None,
        phone_number_collection={"enabled": False},
        recovered_from=None,
        saved_payment_method_options=None,
        setup_intent=None,
        shipping_address_collection=None,
        shipping_cost=None,
        shipping_options=[],
        status="open",
        submit_type=None,
        subscription=None,
        success_url=params.get("success_url") or None,
        total_details={"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        ui_mode="hosted",
        url=f"https://checkout.stripe.com/c/pay/{obj['id']}",
        wallet_options=None,
    )
    merge_metadata(obj, params.get("metadata") or {})
    rec = ctx.state.insert(obj)
    rec.extra["line_items"] = items
    return ctx.ok(rec)


@route("GET", "/v1/checkout/sessions/{id}")
def get_checkout_session(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return ctx.ok(get_or_404(ctx, "checkout.session", m["id"], "checkout.session"))


@route("POST", "/v1/checkout/sessions/{id}/expire")
def expire_checkout_session(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "checkout.session", m["id"], "checkout.session")
    if rec.obj["status"] != "open":
        raise invalid('Only Checkout Sessions with a status in ["open"] can be expired.')
    update_record(ctx, rec, lambda o: o.update(status="expired"), None)
    ctx.emit("checkout.session.expired", rec)
    return ctx.ok(rec)


@route("GET", "/v1/checkout/sessions/{id}/line_items")
def list_checkout_line_items(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "checkout.session", m["id"], "checkout.session")
    url = f"/v1/checkout/sessions/{rec.id}/line_items"
    return Resp(plain_list_body(rec.extra["line_items"], parse_list_params(params), "item", url))


@route("GET", "/v1/checkout/sessions")
def list_checkout_sessions(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds = filters(
        params,
        {
            "customer": "customer",
            "payment_intent": "payment_intent",
            "subscription": "subscription",
            "status": "status",
        },
    )
    return list_response(ctx, "checkout.session", "/v1/checkout/sessions", params, all_of(preds))


def complete_checkout_session(
    ctx: Ctx,
    sid: str,
    payment_method: str = "pm_card_visa",
    email: str | None = None,
    name: str | None = None,
) -> Record:
    """What happens when a buyer pays: a customer if needed, then a subscription (mode
    subscription) or a succeeded payment intent (mode payment), then
    ``checkout.session.completed``."""
    from .billing import create_subscription
    from .catalog import create_customer

    rec = get_or_404(ctx, "checkout.session", sid, "checkout.session")
    o = rec.obj
    if o["status"] != "open":
        raise invalid("This Checkout Session is no longer open.")
    email = email or o["customer_email"] or f"buyer+{rec.id[-6:].lower()}@example.com"
    cus = o["customer"]
    if cus is None and (o["mode"] != "payment" or o["customer_creation"] == "always"):
        resp = create_customer(ctx, {"email": email, "name": name or ""}, {})
        cus = orjson.loads(resp.body)["id"]
    pm = attach_pm(ctx, payment_method, cus) if cus else resolve_pm(ctx, payment_method)
    details: JSON = {
        "address": None,
        "email": email,
        "name": name,
        "phone": None,
        "tax_exempt": "none",
        "tax_ids": [],
        "business_name": None,
        "individual_name": None,
    }
    if o["mode"] == "subscription":
        items = [
            {"price": it["price"]["id"], "quantity": it["quantity"]}
            for it in rec.extra["line_items"]
        ]
        resp = create_subscription(
            ctx, {"customer": cus, "items": items, "default_payment_method": pm.id}, {}
        )
        sub = orjson.loads(resp.body)
        o.update(subscription=sub["id"], invoice=sub["latest_invoice"])
    elif o["mode"] == "payment":
        pi = new_payment_intent(
            ctx,
            {
                "amount": max(int(o["amount_total"]), 50),
                "currency": o["currency"],
                "customer": cus or "",
                "payment_method": pm.id,
            },
        )
        confirm_pi(ctx, pi, {})
        o["payment_intent"] = pi.id
    else:
        o["setup_intent"] = ctx.state.new_id("seti_")
    o.update(
        customer=cus,
        customer_details=details,
        status="complete",
        payment_status="no_payment_required" if o["mode"] == "setup" else "paid",
    )
    rec.invalidate()
    ctx.emit("checkout.session.completed", rec)
    return rec


_ = (StripeError, Any)
