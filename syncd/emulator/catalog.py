"""Customers, products, prices, plans, coupons, promotion codes, tax ids, payment methods,
setup intents and entitlement features."""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

from .errors import card_declined, invalid, missing
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
    template,
    to_bool,
    to_int,
    update_record,
)
from .lists import list_body, nested_list, page_sequence, parse_list_params
from .state import JSON, Record

# ---------------------------------------------------------------------------------------------
# Customers

CUSTOMER_FIELDS = frozenset(
    {
        "address",
        "balance",
        "description",
        "email",
        "invoice_prefix",
        "invoice_settings",
        "metadata",
        "name",
        "next_invoice_sequence",
        "phone",
        "preferred_locales",
        "shipping",
        "tax_exempt",
    }
)


def new_customer(ctx: Ctx, params: JSON) -> JSON:
    obj = new_object(ctx, "customer", "cus_", params.get("id") or None)
    obj.update(
        address=None,
        balance=0,
        currency=None,
        default_source=None,
        delinquent=False,
        description=None,
        discount=None,
        email=None,
        name=None,
        phone=None,
        shipping=None,
        preferred_locales=[],
        tax_exempt="none",
        test_clock=None,
        next_invoice_sequence=1,
        invoice_prefix="".join(ctx.state.rng.choices(string.ascii_uppercase + string.digits, k=8)),
        invoice_settings={
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
    )
    apply_params(obj, params, CUSTOMER_FIELDS)
    return obj


@route("POST", "/v1/customers")
def create_customer(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = ctx.state.insert(new_customer(ctx, params))
    ctx.emit("customer.created", rec)
    pm = params.get("payment_method")
    if pm:
        attach_pm(ctx, str(pm), rec.id)
    return ctx.ok(rec)


@route("GET", "/v1/customers/{id}")
def get_customer(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "customer", m["id"], allow_deleted=True)
    return Resp(rec.deleted_stub()) if rec.deleted else ctx.ok(rec)


@route("POST", "/v1/customers/{id}")
def update_customer(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "customer", m["id"])

    def mut(o: JSON) -> None:
        apply_params(o, params, CUSTOMER_FIELDS)
        if "invoice_settings" in params and isinstance(params["invoice_settings"], dict):
            cur = dict(rec.obj.get("invoice_settings") or {})
            cur.update(params["invoice_settings"])
            o["invoice_settings"] = cur

    return ctx.ok(update_record(ctx, rec, mut, "customer.updated"))


@route("DELETE", "/v1/customers/{id}")
def delete_customer(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "customer", m["id"])
    # Stripe cancels the customer's subscriptions when the customer is deleted.
    from .billing import cancel_subscription_now

    for sub in list(ctx.state.iter_type("subscription")):
        if sub.obj["customer"] == rec.id and sub.obj["status"] not in (
            "canceled",
            "incomplete_expired",
        ):
            cancel_subscription_now(ctx, sub)
    return delete_record(ctx, rec, "customer.deleted")


@route("GET", "/v1/customers")
def list_customers(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds = filters(params, {"email": "email"})
    if params.get("test_clock"):
        preds.append(field_eq("test_clock", params["test_clock"]))
    else:
        preds.append(lambda r: r.obj.get("test_clock") is None)
    return list_response(ctx, "customer", "/v1/customers", params, all_of(preds))


# ---------------------------------------------------------------------------------------------
# Products

PRODUCT_FIELDS = frozenset(
    {
        "active",
        "description",
        "images",
        "metadata",
        "name",
        "package_dimensions",
        "shippable",
        "statement_descriptor",
        "tax_code",
        "unit_label",
        "url",
        "type",
    }
)


def new_product(ctx: Ctx, params: JSON) -> JSON:
    obj = new_object(ctx, "product", "prod_", params.get("id") or None)
    obj.update(
        active=True,
        default_price=None,
        description=None,
        images=[],
        marketing_features=[],
        package_dimensions=None,
        shippable=None,
        statement_descriptor=None,
        tax_code=None,
        type="service",
        unit_label=None,
        url=None,
        updated=obj["created"],
    )
    obj["name"] = str(need(params, "name"))
    apply_params(obj, params, PRODUCT_FIELDS)
    _marketing(obj, params)
    return obj


def _marketing(obj: JSON, params: JSON) -> None:
    mf = params.get("marketing_features")
    if mf is not None:
        obj["marketing_features"] = [
            {"name": str(x.get("name"))} for x in (mf if isinstance(mf, list) else [])
        ]


@route("POST", "/v1/products")
def create_product(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    if params.get("id") and ctx.state.get("product", str(params["id"])):
        raise invalid("Product already exists.", param="id", code="resource_already_exists")
    rec = ctx.state.insert(new_product(ctx, params))
    ctx.emit("product.created", rec)
    dpd = params.get("default_price_data")
    if isinstance(dpd, dict):
        price = create_price_obj(ctx, {**dpd, "product": rec.id})
        rec.obj["default_price"] = price.id
        rec.invalidate()
    return ctx.ok(rec)


@route("GET", "/v1/products/{id}")
def get_product(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "product", m["id"], allow_deleted=True)
    return Resp(rec.deleted_stub()) if rec.deleted else ctx.ok(rec)


@route("POST", "/v1/products/{id}")
def update_product(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "product", m["id"])

    def mut(o: JSON) -> None:
        apply_params(o, params, PRODUCT_FIELDS)
        _marketing(o, params)
        if "default_price" in params:
            dp = params["default_price"] or None
            if dp is not None:
                get_or_404(ctx, "price", str(dp), "price", "default_price")
            o["default_price"] = dp

    return ctx.ok(update_record(ctx, rec, mut, "product.updated"))


@route("DELETE", "/v1/products/{id}")
def delete_product(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "product", m["id"])
    for p in ctx.state.iter_type("price"):
        if p.obj["product"] == rec.id and not p.deleted:
            raise invalid(
                "This product cannot be deleted because it has one or more user-created prices."
            )
    return delete_record(ctx, rec, "product.deleted")


@route("GET", "/v1/products")
def list_products(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds = filters(params, {"active": "active", "url": "url"})
    if "shippable" in params:
        b = to_bool(params["shippable"], "shippable")
        preds.append(lambda r: r.obj.get("shippable") is b)
    ids = params.get("ids")
    if isinstance(ids, list):
        idset = set(ids)
        preds.append(lambda r: r.id in idset)
    return list_response(ctx, "product", "/v1/products", params, all_of(preds))


# ---------------------------------------------------------------------------------------------
# Prices and plans. A recurring price is also visible as a plan with the same id (Stripe keeps
# them as one object behind two APIs), so both collections are written together.

PRICE_FIELDS = frozenset({"active", "metadata", "nickname", "lookup_key", "tax_behavior"})


def _recurring(params: JSON) -> JSON | None:
    r = params.get("recurring")
    if not isinstance(r, dict):
        return None
    interval = r.get("interval")
    if interval not in ("day", "week", "month", "year"):
        raise invalid("Invalid recurring[interval]", param="recurring[interval]")
    return {
        "interval": interval,
        "interval_count": to_int(r.get("interval_count", 1), "recurring[interval_count]"),
        "meter": r.get("meter") or None,
        "trial_period_days": opt_int(r, "trial_period_days"),
        "usage_type": r.get("usage_type") or "licensed",
    }


def create_price_obj(ctx: Ctx, params: JSON, id_: str | None = None) -> Record:
    obj = new_object(ctx, "price", "price_", id_ or params.get("id") or None)
    currency = str(need(params, "currency")).lower()
    product = params.get("product")
    if isinstance(params.get("product_data"), dict):
        prec = ctx.state.insert(new_product(ctx, params["product_data"]))
        ctx.emit("product.created", prec)
        product = prec.id
    if not product:
        raise invalid("Missing required param: product.", param="product")
    get_or_404(ctx, "product", str(product), "product", "product")
    ua = opt_int(params, "unit_amount")
    uad = params.get("unit_amount_decimal")
    if ua is None and uad:
        ua = int(float(str(uad)))
    rec = _recurring(params)
    obj.update(
        active=True,
        billing_scheme=params.get("billing_scheme") or "per_unit",
        currency=currency,
        custom_unit_amount=None,
        lookup_key=params.get("lookup_key") or None,
        nickname=params.get("nickname") or None,
        product=product,
        recurring=rec,
        tax_behavior=params.get("tax_behavior") or "unspecified",
        tiers_mode=None,
        transform_quantity=None,
        type="recurring" if rec else "one_time",
        unit_amount=ua,
        unit_amount_decimal=str(uad) if uad else (None if ua is None else str(ua)),
    )
    apply_params(obj, params, PRICE_FIELDS)
    prec2 = ctx.state.insert(obj)
    ctx.emit("price.created", prec2)
    if rec is not None:
        plan = ctx.state.insert(plan_from_price(obj))
        ctx.state.type_by_id[obj["id"]] = "price"
        ctx.emit("plan.created", plan)
    return prec2


def plan_from_price(p: JSON) -> JSON:
    obj = template("plan")
    r = p.get("recurring") or {}
    obj.update(
        id=p["id"],
        active=p["active"],
        amount=p["unit_amount"],
        amount_decimal=p["unit_amount_decimal"],
        billing_scheme=p["billing_scheme"],
        created=p["created"],
        currency=p["currency"],
        interval=r.get("interval"),
        interval_count=r.get("interval_count"),
        livemode=False,
        metadata=dict(p["metadata"]),
        meter=r.get("meter"),
        nickname=p["nickname"],
        product=p["product"],
        tiers_mode=None,
        transform_usage=None,
        trial_period_days=r.get("trial_period_days"),
        usage_type=r.get("usage_type", "licensed"),
    )
    return obj


@route("POST", "/v1/prices")
def create_price(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return ctx.ok(create_price_obj(ctx, params))


@route("GET", "/v1/prices/{id}")
def get_price(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "price", m["id"], allow_deleted=True)
    return Resp(rec.deleted_stub()) if rec.deleted else ctx.ok(rec)


def _sync_plan(ctx: Ctx, price: Record) -> None:
    plan = ctx.state.get("plan", price.id)
    if plan is not None and not plan.deleted:
        new = plan_from_price(price.obj)
        update_record(ctx, plan, lambda o: o.update(new), "plan.updated")


def _price_changed(ctx: Ctx, price_id: str) -> None:
    from .billing import price_changed  # billing imports catalog

    price_changed(ctx, price_id)


@route("POST", "/v1/prices/{id}")
def update_price(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "price", m["id"])
    update_record(ctx, rec, lambda o: apply_params(o, params, PRICE_FIELDS), "price.updated")
    _sync_plan(ctx, rec)
    _price_changed(ctx, rec.id)
    return ctx.ok(rec)


@route("GET", "/v1/prices")
def list_prices(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds = filters(
        params, {"active": "active", "product": "product", "currency": "currency", "type": "type"}
    )
    lks = params.get("lookup_keys")
    if isinstance(lks, list):
        lkset = set(lks)
        preds.append(lambda r: r.obj.get("lookup_key") in lkset)
    rec_f = params.get("recurring")
    if isinstance(rec_f, dict) and rec_f.get("interval"):
        iv = rec_f["interval"]
        preds.append(lambda r: (r.obj.get("recurring") or {}).get("interval") == iv)
    return list_response(ctx, "price", "/v1/prices", params, all_of(preds))


@route("POST", "/v1/plans")
def create_plan(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    prod = params.get("product")
    pp: JSON = {
        "currency": params.get("currency"),
        "unit_amount": params.get("amount"),
        "unit_amount_decimal": params.get("amount_decimal"),
        "nickname": params.get("nickname"),
        "metadata": params.get("metadata") or {},
        "active": params.get("active", "true"),
        "recurring": {
            "interval": params.get("interval"),
            "interval_count": params.get("interval_count", 1),
            "usage_type": params.get("usage_type") or "licensed",
            "meter": params.get("meter"),
            "trial_period_days": params.get("trial_period_days"),
        },
    }
    if isinstance(prod, dict):
        pp["product_data"] = prod
    else:
        pp["product"] = prod
    price = create_price_obj(ctx, pp, params.get("id") or ctx.state.new_id("plan_"))
    plan = get_or_404(ctx, "plan", price.id)
    return ctx.ok(plan)


@route("GET", "/v1/plans/{id}")
def get_plan(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "plan", m["id"], allow_deleted=True)
    return Resp(rec.deleted_stub()) if rec.deleted else ctx.ok(rec)


@route("POST", "/v1/plans/{id}")
def update_plan(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    get_or_404(ctx, "plan", m["id"])
    price = get_or_404(ctx, "price", m["id"])
    update_record(ctx, price, lambda o: apply_params(o, params, PRICE_FIELDS), "price.updated")
    _sync_plan(ctx, price)
    _price_changed(ctx, price.id)
    return ctx.ok(get_or_404(ctx, "plan", m["id"]))


@route("DELETE", "/v1/plans/{id}")
def delete_plan(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    plan = get_or_404(ctx, "plan", m["id"])
    price = ctx.state.get("price", m["id"])
    if price is not None and not price.deleted:
        delete_record(ctx, price, "price.deleted")
    return delete_record(ctx, plan, "plan.deleted")


@route("GET", "/v1/plans")
def list_plans(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds = filters(params, {"active": "active", "product": "product"})
    return list_response(ctx, "plan", "/v1/plans", params, all_of(preds))


# ---------------------------------------------------------------------------------------------
# Coupons and promotion codes

COUPON_FIELDS = frozenset({"metadata", "name"})


@route("POST", "/v1/coupons")
def create_coupon(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    cid = params.get("id") or "".join(
        ctx.state.rng.choices(string.ascii_uppercase + string.digits, k=8)
    )
    obj = new_object(ctx, "coupon", "", str(cid))
    pct = params.get("percent_off")
    obj.update(
        amount_off=opt_int(params, "amount_off"),
        currency=(params.get("currency") or None),
        duration=params.get("duration") or "once",
        duration_in_months=opt_int(params, "duration_in_months"),
        max_redemptions=opt_int(params, "max_redemptions"),
        name=params.get("name") or None,
        percent_off=float(pct) if pct else None,
        redeem_by=opt_int(params, "redeem_by"),
        times_redeemed=0,
        valid=True,
    )
    if obj["amount_off"] is None and obj["percent_off"] is None:
        raise invalid("You must pass either `amount_off` or `percent_off`.")
    merge_metadata(obj, params.get("metadata") or {})
    rec = ctx.state.insert(obj)
    ctx.emit("coupon.created", rec)
    return ctx.ok(rec)


@route("GET", "/v1/coupons/{id}")
def get_coupon(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "coupon", m["id"], allow_deleted=True)
    return Resp(rec.deleted_stub()) if rec.deleted else ctx.ok(rec)


@route("POST", "/v1/coupons/{id}")
def update_coupon(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "coupon", m["id"])
    return ctx.ok(
        update_record(ctx, rec, lambda o: apply_params(o, params, COUPON_FIELDS), "coupon.updated")
    )


@route("DELETE", "/v1/coupons/{id}")
def delete_coupon(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return delete_record(ctx, get_or_404(ctx, "coupon", m["id"]), "coupon.deleted")


@route("GET", "/v1/coupons")
def list_coupons(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return list_response(ctx, "coupon", "/v1/coupons", params, all_of([]))


@route("POST", "/v1/promotion_codes")
def create_promotion_code(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    promo = params.get("promotion")
    coupon = params.get("coupon") or (promo.get("coupon") if isinstance(promo, dict) else None)
    if not coupon:
        raise invalid("Missing required param: promotion[coupon].", param="promotion[coupon]")
    get_or_404(ctx, "coupon", str(coupon), "coupon", "promotion[coupon]")
    obj = new_object(ctx, "promotion_code", "promo_")
    obj.update(
        active=to_bool(params.get("active", True), "active"),
        code=params.get("code")
        or "".join(ctx.state.rng.choices(string.ascii_uppercase + string.digits, k=10)),
        customer=params.get("customer") or None,
        customer_account=None,
        expires_at=opt_int(params, "expires_at"),
        max_redemptions=opt_int(params, "max_redemptions"),
        promotion={"coupon": coupon, "type": "coupon"},
        times_redeemed=0,
        restrictions={
            "currency_options": {},
            "first_time_transaction": False,
            "minimum_amount": None,
            "minimum_amount_currency": None,
        },
    )
    merge_metadata(obj, params.get("metadata") or {})
    rec = ctx.state.insert(obj)
    ctx.emit("promotion_code.created", rec)
    return ctx.ok(rec)


@route("GET", "/v1/promotion_codes/{id}")
def get_promotion_code(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return ctx.ok(get_or_404(ctx, "promotion_code", m["id"]))


@route("POST", "/v1/promotion_codes/{id}")
def update_promotion_code(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "promotion_code", m["id"])
    return ctx.ok(
        update_record(
            ctx,
            rec,
            lambda o: apply_params(o, params, {"active", "metadata"}),
            "promotion_code.updated",
        )
    )


@route("GET", "/v1/promotion_codes")
def list_promotion_codes(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds = filters(params, {"active": "active", "code": "code", "customer": "customer"})
    if params.get("coupon"):
        coupon = params["coupon"]
        preds.append(lambda r: r.obj["promotion"]["coupon"] == coupon)
    return list_response(ctx, "promotion_code", "/v1/promotion_codes", params, all_of(preds))


# ---------------------------------------------------------------------------------------------
# Tax ids: under a customer and at /v1/tax_ids with an ``owner``.


def _create_tax_id(ctx: Ctx, customer: str | None, params: JSON) -> Record:
    type_ = str(need(params, "type"))
    value = str(need(params, "value"))
    obj = new_object(ctx, "tax_id", "txi_")
    country = value[:2].upper() if type_ == "eu_vat" else type_.split("_")[0].upper()
    obj.update(
        country=country,
        customer=customer,
        customer_account=None,
        type=type_,
        value=value,
        owner={"type": "customer", "customer": customer}
        if customer
        else {"type": "self", "account": None, "application": None, "customer": None},
        verification={"status": "pending", "verified_address": None, "verified_name": None},
    )
    rec = ctx.state.insert(obj)
    if customer:
        ctx.emit("customer.tax_id.created", rec)
    return rec


@route("POST", "/v1/customers/{cid}/tax_ids")
def create_customer_tax_id(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    get_or_404(ctx, "customer", m["cid"], "customer")
    return ctx.ok(_create_tax_id(ctx, m["cid"], params))


@route("POST", "/v1/tax_ids")
def create_tax_id(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    owner = params.get("owner") or {}
    cus = owner.get("customer") if isinstance(owner, dict) else None
    if cus:
        get_or_404(ctx, "customer", str(cus), "customer", "owner[customer]")
    return ctx.ok(_create_tax_id(ctx, str(cus) if cus else None, params))


def _tax_id_for(ctx: Ctx, tid: str, cid: str | None) -> Record:
    rec = ctx.state.get("tax_id", tid)
    if rec is None or (cid is not None and rec.obj["customer"] != cid):
        raise missing("tax_id", tid)
    return rec


@route("GET", "/v1/customers/{cid}/tax_ids/{id}")
def get_customer_tax_id(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = _tax_id_for(ctx, m["id"], m["cid"])
    return Resp(rec.deleted_stub()) if rec.deleted else ctx.ok(rec)


@route("GET", "/v1/tax_ids/{id}")
def get_tax_id(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = _tax_id_for(ctx, m["id"], None)
    return Resp(rec.deleted_stub()) if rec.deleted else ctx.ok(rec)


def _delete_tax_id(ctx: Ctx, rec: Record) -> Resp:
    if rec.deleted:
        raise missing("tax_id", rec.id)
    return delete_record(ctx, rec, "customer.tax_id.deleted" if rec.obj["customer"] else None)


@route("DELETE", "/v1/customers/{cid}/tax_ids/{id}")
def delete_customer_tax_id(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return _delete_tax_id(ctx, _tax_id_for(ctx, m["id"], m["cid"]))


@route("DELETE", "/v1/tax_ids/{id}")
def delete_tax_id(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return _delete_tax_id(ctx, _tax_id_for(ctx, m["id"], None))


def _customer_tax_ids(state: Any, rec: Record) -> JSON:
    """`customer.tax_ids`, included only when expanded (also `data.tax_ids` on lists), as
    Stripe does: the newest 10 and `has_more`."""
    mine = [
        r.obj for r in state.iter_type("tax_id") if not r.deleted and r.obj["customer"] == rec.id
    ]
    return nested_list(mine[::-1], f"/v1/customers/{rec.id}/tax_ids")


VIRTUAL_EXPAND.setdefault("customer", {})["tax_ids"] = _customer_tax_ids


@route("GET", "/v1/customers/{cid}/tax_ids")
def list_customer_tax_ids(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    get_or_404(ctx, "customer", m["cid"], "customer")
    cid = m["cid"]
    return list_response(
        ctx,
        "tax_id",
        f"/v1/customers/{cid}/tax_ids",
        params,
        all_of([lambda r: r.obj["customer"] == cid]),
        "tax_id",
    )


@route("GET", "/v1/tax_ids")
def list_tax_ids(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    owner = params.get("owner")
    preds: list[Callable[[Record], bool]] = []
    if isinstance(owner, dict) and owner.get("customer"):
        preds.append(field_eq("customer", owner["customer"]))
    return list_response(ctx, "tax_id", "/v1/tax_ids", params, all_of(preds))


# ---------------------------------------------------------------------------------------------
# Payment methods. ``pm_card_visa``-style test tokens are accepted wherever a payment method id
# is, as in Stripe test mode; ``pm_card_chargeDeclined`` makes confirmations fail with a 402.

TEST_CARDS = {
    "pm_card_visa": ("visa", "4242"),
    "pm_card_mastercard": ("mastercard", "4444"),
    "pm_card_amex": ("amex", "8431"),
    "pm_card_chargeDeclined": ("visa", "0002"),
    "pm_card_visa_chargeDeclined": ("visa", "0341"),
}


def new_payment_method(ctx: Ctx, brand: str, last4: str, declines: bool = False) -> Record:
    obj = new_object(ctx, "payment_method", "pm_")
    card = obj.get("card") or {}
    card = dict(card)
    card.update(
        brand=brand,
        last4=last4,
        exp_month=12,
        exp_year=2034,
        country="US",
        funding="credit",
        display_brand=brand,
    )
    obj.update(
        customer=None,
        customer_account=None,
        type="card",
        card=card,
        allow_redisplay="unspecified",
        billing_details={
            "address": {
                "city": None,
                "country": None,
                "line1": None,
                "line2": None,
                "postal_code": None,
                "state": None,
            },
            "email": None,
            "name": None,
            "phone": None,
            "tax_id": None,
        },
    )
    rec = ctx.state.insert(obj)
    rec.extra["declines"] = declines or last4 in ("0002", "0341")
    return rec


def resolve_pm(ctx: Ctx, pm: str, param: str = "payment_method") -> Record:
    """A payment method id, or a test token which mints a fresh payment method as Stripe does."""
    if pm in TEST_CARDS:
        brand, last4 = TEST_CARDS[pm]
        return new_payment_method(ctx, brand, last4)
    return get_or_404(ctx, "payment_method", pm, "PaymentMethod", param)


def attach_pm(ctx: Ctx, pm: str, customer: str) -> Record:
    rec = resolve_pm(ctx, pm)
    if rec.obj["customer"] == customer:
        return rec
    rec.obj["customer"] = customer
    rec.invalidate()
    ctx.emit("payment_method.attached", rec)
    return rec


@route("POST", "/v1/payment_methods")
def create_payment_method(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    card = params.get("card")
    token = card.get("token") if isinstance(card, dict) else None
    if token and str(token).startswith("tok_"):
        last4 = "0002" if "Declined" in str(token) else "4242"
        rec = new_payment_method(ctx, "visa", last4)
    else:
        num = str(card.get("number", "4242424242424242")) if isinstance(card, dict) else "4242"
        rec = new_payment_method(ctx, "visa", num[-4:])
    merge_metadata(rec.obj, params.get("metadata") or {})
    return ctx.ok(rec)


@route("GET", "/v1/payment_methods/{id}")
def get_payment_method(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return ctx.ok(get_or_404(ctx, "payment_method", m["id"], "PaymentMethod"))


@route("POST", "/v1/payment_methods/{id}")
def update_payment_method(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "payment_method", m["id"], "PaymentMethod")
    return ctx.ok(
        update_record(
            ctx, rec, lambda o: apply_params(o, params, {"metadata"}), "payment_method.updated"
        )
    )


@route("POST", "/v1/payment_methods/{id}/attach")
def attach_payment_method(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    cus = str(need(params, "customer"))
    get_or_404(ctx, "customer", cus, "customer", "customer")
    return ctx.ok(attach_pm(ctx, m["id"], cus))


@route("POST", "/v1/payment_methods/{id}/detach")
def detach_payment_method(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "payment_method", m["id"], "PaymentMethod")
    if rec.obj["customer"] is None:
        raise invalid(
            "The payment method you provided is not attached to a customer so "
            "detachment is impossible."
        )
    prev = {"customer": rec.obj["customer"]}
    rec.obj["customer"] = None
    rec.invalidate()
    ctx.emit("payment_method.detached", rec, prev)
    return ctx.ok(rec)


@route("GET", "/v1/payment_methods")
def list_payment_methods(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds = filters(params, {"customer": "customer", "type": "type"})
    return list_response(
        ctx, "payment_method", "/v1/payment_methods", params, all_of(preds), "PaymentMethod"
    )


@route("GET", "/v1/customers/{cid}/payment_methods")
def list_customer_payment_methods(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    get_or_404(ctx, "customer", m["cid"], "customer")
    preds = filters({**params, "customer": m["cid"]}, {"customer": "customer", "type": "type"})
    return list_response(
        ctx,
        "payment_method",
        f"/v1/customers/{m['cid']}/payment_methods",
        params,
        all_of(preds),
        "PaymentMethod",
    )


# ---------------------------------------------------------------------------------------------
# Setup intents


@route("POST", "/v1/setup_intents")
def create_setup_intent(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    obj = new_object(ctx, "setup_intent", "seti_")
    cus = params.get("customer") or None
    if cus:
        get_or_404(ctx, "customer", str(cus), "customer", "customer")
    obj.update(
        application=None,
        automatic_payment_methods=None,
        cancellation_reason=None,
        client_secret=None,
        customer=cus,
        description=params.get("description") or None,
        last_setup_error=None,
        latest_attempt=None,
        mandate=None,
        next_action=None,
        on_behalf_of=None,
        payment_method=None,
        single_use_mandate=None,
        status="requires_payment_method",
        usage=params.get("usage") or "off_session",
        payment_method_types=params.get("payment_method_types") or ["card"],
    )
    obj["client_secret"] = f"{obj['id']}_secret_{ctx.state.new_id('', 16)}"
    merge_metadata(obj, params.get("metadata") or {})
    rec = ctx.state.insert(obj)
    ctx.emit("setup_intent.created", rec)
    if params.get("payment_method"):
        pm = resolve_pm(ctx, str(params["payment_method"]))
        rec.obj.update(payment_method=pm.id, status="requires_confirmation")
        rec.invalidate()
        if to_bool(params.get("confirm", False), "confirm"):
            _confirm_setup(ctx, rec)
    return ctx.ok(rec)


def _confirm_setup(ctx: Ctx, rec: Record) -> None:
    pmid = rec.obj["payment_method"]
    if not pmid:
        raise invalid("You cannot confirm this SetupIntent because it's missing a payment method.")
    pm = get_or_404(ctx, "payment_method", pmid, "PaymentMethod")
    if pm.extra.get("declines"):
        raise card_declined()
    if rec.obj["customer"]:
        attach_pm(ctx, pm.id, rec.obj["customer"])
    update_record(ctx, rec, lambda o: o.update(status="succeeded"), None)
    ctx.emit("setup_intent.succeeded", rec)


@route("POST", "/v1/setup_intents/{id}/confirm")
def confirm_setup_intent(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "setup_intent", m["id"], "setup_intent")
    if params.get("payment_method"):
        pm = resolve_pm(ctx, str(params["payment_method"]))
        rec.obj["payment_method"] = pm.id
        rec.invalidate()
    _confirm_setup(ctx, rec)
    return ctx.ok(rec)


@route("POST", "/v1/setup_intents/{id}/cancel")
def cancel_setup_intent(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "setup_intent", m["id"], "setup_intent")
    if rec.obj["status"] == "succeeded":
        raise invalid("You cannot cancel this SetupIntent because it has a status of succeeded.")
    update_record(
        ctx,
        rec,
        lambda o: o.update(
            status="canceled", cancellation_reason=params.get("cancellation_reason") or None
        ),
        None,
    )
    ctx.emit("setup_intent.canceled", rec)
    return ctx.ok(rec)


@route("GET", "/v1/setup_intents/{id}")
def get_setup_intent(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return ctx.ok(get_or_404(ctx, "setup_intent", m["id"], "setup_intent"))


@route("POST", "/v1/setup_intents/{id}")
def update_setup_intent(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "setup_intent", m["id"], "setup_intent")
    return ctx.ok(
        update_record(
            ctx, rec, lambda o: apply_params(o, params, {"metadata", "description"}), None
        )
    )


@route("GET", "/v1/setup_intents")
def list_setup_intents(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds = filters(params, {"customer": "customer", "payment_method": "payment_method"})
    return list_response(ctx, "setup_intent", "/v1/setup_intents", params, all_of(preds))


# ---------------------------------------------------------------------------------------------
# Entitlements: features, product features, active entitlements (computed).


@route("POST", "/v1/entitlements/features")
def create_feature(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    obj = new_object(ctx, "entitlements.feature", "feat_")
    obj.update(
        active=True, name=str(need(params, "name")), lookup_key=str(need(params, "lookup_key"))
    )
    merge_metadata(obj, params.get("metadata") or {})
    for r in ctx.state.iter_type("entitlements.feature"):
        if r.obj["lookup_key"] == obj["lookup_key"]:
            raise invalid("A feature with this lookup_key already exists.", param="lookup_key")
    rec = ctx.state.insert(obj, ctx.now)
    return ctx.ok(rec)


@route("GET", "/v1/entitlements/features/{id}")
def get_feature(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return ctx.ok(get_or_404(ctx, "entitlements.feature", m["id"], "feature"))


@route("POST", "/v1/entitlements/features/{id}")
def update_feature(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "entitlements.feature", m["id"], "feature")
    return ctx.ok(
        update_record(
            ctx, rec, lambda o: apply_params(o, params, {"active", "metadata", "name"}), None
        )
    )


@route("GET", "/v1/entitlements/features")
def list_features(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds = filters(params, {"lookup_key": "lookup_key"})
    if "archived" in params:
        arch = to_bool(params["archived"], "archived")
        preds.append(lambda r: r.obj["active"] is (not arch))
    return list_response(
        ctx, "entitlements.feature", "/v1/entitlements/features", params, all_of(preds), "feature"
    )


@route("POST", "/v1/products/{pid}/features")
def attach_product_feature(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    prod = get_or_404(ctx, "product", m["pid"], "product")
    feat = get_or_404(
        ctx,
        "entitlements.feature",
        str(need(params, "entitlement_feature")),
        "feature",
        "entitlement_feature",
    )
    obj = new_object(ctx, "product_feature", "prodft_")
    obj["entitlement_feature"] = feat.obj
    rec = ctx.state.insert(obj, ctx.now)
    rec.extra["product"] = prod.id
    return ctx.ok(rec)


@route("GET", "/v1/products/{pid}/features")
def list_product_features(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    get_or_404(ctx, "product", m["pid"], "product")
    pid = m["pid"]
    return list_response(
        ctx,
        "product_feature",
        f"/v1/products/{pid}/features",
        params,
        all_of([lambda r: r.extra.get("product") == pid]),
        "product_feature",
    )


@route("GET", "/v1/products/{pid}/features/{id}")
def get_product_feature(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "product_feature", m["id"], "product_feature")
    if rec.extra.get("product") != m["pid"]:
        raise missing("product_feature", m["id"])
    return ctx.ok(rec)


@route("DELETE", "/v1/products/{pid}/features/{id}")
def delete_product_feature(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "product_feature", m["id"], "product_feature")
    return delete_record(ctx, rec, None)


def active_entitlements(ctx: Ctx, customer: str) -> list[Record]:
    """Features of products on the customer's active/trialing subscriptions (computed)."""
    products: set[str] = set()
    for sub in ctx.state.iter_type("subscription"):
        if sub.obj["customer"] == customer and sub.obj["status"] in (
            "active",
            "trialing",
            "past_due",
        ):
            for it in sub.extra.get("items", []):
                products.add(it.obj["price"]["product"])
    out: list[Record] = []
    seen: set[str] = set()
    for pf in ctx.state.iter_type("product_feature"):
        if pf.deleted or pf.extra.get("product") not in products:
            continue
        feat: dict[str, Any] = pf.obj["entitlement_feature"]
        if feat["id"] in seen:
            continue
        seen.add(feat["id"])
        key = ("ent", customer, feat["id"])
        cache = ctx.state.coll("entitlements.active_entitlement").extra_cache
        rec = cache.get(key)
        if rec is None:
            obj = template("entitlements.active_entitlement")
            obj.update(
                id=ctx.state.new_id("ent_"),
                feature=feat["id"],
                livemode=False,
                lookup_key=feat["lookup_key"],
            )
            rec = Record("entitlements.active_entitlement", obj, 0, 0)
            cache[key] = rec
        out.append(rec)
    return out


@route("GET", "/v1/entitlements/active_entitlements")
def list_active_entitlements(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    cus = str(need(params, "customer"))
    items = active_entitlements(ctx, cus)
    lp = parse_list_params(params)
    page, more = page_sequence(items, lp, "active_entitlement")
    return Resp(
        list_body([r.to_bytes() for r in page], more, "/v1/entitlements/active_entitlements")
    )


# ---------------------------------------------------------------------------------------------
# Tax rates, and Radar's early fraud warnings (read-only: Stripe creates them; the emulator's
# list is empty unless a test imports some). Both are mirrored types: a default resync lists them.

TAX_RATE_FIELDS = frozenset(
    {"active", "country", "description", "display_name", "jurisdiction", "metadata", "state"}
)


@route("POST", "/v1/tax_rates")
def create_tax_rate(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    name = need(params, "display_name")
    pct = need(params, "percentage")
    # Built here rather than from templates.json: Stripe's shape at the pinned version.
    obj: JSON = {
        "id": ctx.state.new_id("txr_"),
        "object": "tax_rate",
        "created": ctx.now,
        "livemode": False,
        "metadata": {},
    }
    obj.update(
        active=to_bool(params.get("active", True), "active"),
        country=params.get("country") or None,
        description=params.get("description") or None,
        display_name=str(name),
        effective_percentage=float(pct),
        flat_amount=None,
        inclusive=to_bool(need(params, "inclusive"), "inclusive"),
        jurisdiction=params.get("jurisdiction") or None,
        jurisdiction_level=None,
        percentage=float(pct),
        rate_type="percentage",
        state=params.get("state") or None,
        tax_type=params.get("tax_type") or None,
    )
    merge_metadata(obj, params.get("metadata") or {})
    rec = ctx.state.insert(obj)
    ctx.emit("tax_rate.created", rec)
    return ctx.ok(rec)


@route("GET", "/v1/tax_rates/{id}")
def get_tax_rate(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return ctx.ok(get_or_404(ctx, "tax_rate", m["id"]))


@route("POST", "/v1/tax_rates/{id}")
def update_tax_rate(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "tax_rate", m["id"])
    return ctx.ok(
        update_record(
            ctx, rec, lambda o: apply_params(o, params, TAX_RATE_FIELDS), "tax_rate.updated"
        )
    )


@route("GET", "/v1/tax_rates")
def list_tax_rates(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds = filters(params, {"active": "active", "inclusive": "inclusive"})
    return list_response(ctx, "tax_rate", "/v1/tax_rates", params, all_of(preds))


@route("GET", "/v1/radar/early_fraud_warnings/{id}")
def get_early_fraud_warning(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return ctx.ok(get_or_404(ctx, "radar.early_fraud_warning", m["id"]))


@route("GET", "/v1/radar/early_fraud_warnings")
def list_early_fraud_warnings(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return list_response(
        ctx,
        "radar.early_fraud_warning",
        "/v1/radar/early_fraud_warnings",
        params,
        all_of(filters(params, {"charge": "charge", "payment_intent": "payment_intent"})),
    )
