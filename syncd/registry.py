"""The mirrored Stripe types, declared once. Adding a type is an entry here plus a migration.

Each `Resource` says where Stripe lists it, which list parameters make the list complete, which
`data.object.object` names route events to it, how to retrieve one object again, and, for child
collections (subscription items, invoice lines, ...), which parent it hangs under and how to page
the rest of the children once the parent's inline list (at most 10) says `has_more`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

from syncd.errors import ConfigError


@dataclass(frozen=True)
class Child:
    """A collection listed under each object of a parent type."""

    table: str
    # The parent's field holding the inline list ({"object": "list", "data": [...], "has_more"}),
    # or None when the parent carries no inline list and every parent must be listed separately.
    inline_field: str | None
    # Path of the child list for one parent; `{id}` is the parent's id.
    path: str
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # Expand needed on the parent for the inline list to appear (checkout line items, a
    # customer's tax ids).
    parent_expand: str | None = None

    def for_parent(self, parent_id: str) -> tuple[str, dict[str, Any]]:
        """The child list's path and parameters for one parent (`{id}` filled in)."""
        path = self.path.replace("{id}", quote(parent_id, safe=""))
        params = {
            k: (v.replace("{id}", parent_id) if isinstance(v, str) else v)
            for k, v in self.params.items()
        }
        return path, params


@dataclass(frozen=True)
class Embed:
    """An object of another type that a list can expand in place (`expand[]=data.<path>`): a
    resync's pages bring it along, at no request of its own, and the parent keeps its id."""

    table: str
    path: tuple[str, ...]  # the field holding the id, through nested objects
    # Taken only when this field of the embedded object is set: the mirror holds customers'
    # payment methods, and one used once and never attached to a customer is not one.
    only_with: str | None = None

    @property
    def expand(self) -> str:
        return "data." + ".".join(self.path)


@dataclass(frozen=True)
class Resource:
    table: str
    object: str  # Stripe's `object` value (also `data.object.object` in events)
    list_path: str | None  # None: only reached through a parent (see `children`)
    retrieve_path: str | None  # `{id}` is the object's id; None: cannot be retrieved alone
    # Each mapping is one list call; together they cover every object the list can show
    # (e.g. subscriptions need status=all, or canceled ones are hidden).
    list_variants: tuple[Mapping[str, Any], ...] = (MappingProxyType({}),)
    # Whether list calls accept created[gte]/created[lt] (time slices for a parallel resync).
    created_filter: bool = True
    # Whether an object absent from a complete list was deleted in Stripe (tombstone it).
    complete_list: bool = True
    children: tuple[Child, ...] = ()
    parent: str | None = None  # table of the parent for child types
    # Owned children (items, lines) belong to one parent: rows carry parent_id and the parent's
    # complete child list replaces them. Unowned ones (payment methods, tax ids) are only listed
    # per parent and otherwise stand alone.
    owned: bool = False
    # Extra event object names that route here (older names of the same object).
    event_objects: tuple[str, ...] = ()
    embeds: tuple[Embed, ...] = ()


def _p(**params: Any) -> Mapping[str, Any]:
    return MappingProxyType(params)


RESOURCES: tuple[Resource, ...] = (
    Resource(
        "customers",
        "customer",
        "/v1/customers",
        "/v1/customers/{id}",
        # Stripe lists payment methods and entitlements only per customer (one request per
        # customer, after the main lists: resync/parents.py). Tax ids come embedded in the
        # customers list (`expand[]=data.tax_ids`, up to 10 per customer; more are paged).
        children=(
            Child("payment_methods", None, "/v1/customers/{id}/payment_methods"),
            Child("tax_ids", "tax_ids", "/v1/customers/{id}/tax_ids", parent_expand="tax_ids"),
            Child(
                "active_entitlements",
                None,
                "/v1/entitlements/active_entitlements",
                _p(customer="{id}"),
            ),
        ),
        # Payment methods that customers pay with come embedded in the main lists (their
        # default here, the ones used in payment intents and subscriptions there), so they
        # are mirrored long before the per-customer walk reaches them.
        embeds=(
            Embed("payment_methods", ("invoice_settings", "default_payment_method"), "customer"),
        ),
    ),
    Resource(
        "products",
        "product",
        "/v1/products",
        "/v1/products/{id}",
        # Stripe lists inactive products only when asked.
        list_variants=(_p(active="true"), _p(active="false")),
        children=(Child("product_features", None, "/v1/products/{id}/features"),),
    ),
    Resource(
        "prices",
        "price",
        "/v1/prices",
        "/v1/prices/{id}",
        list_variants=(_p(active="true"), _p(active="false")),
    ),
    Resource(
        "plans",
        "plan",
        "/v1/plans",
        "/v1/plans/{id}",
        list_variants=(_p(active="true"), _p(active="false")),
    ),
    Resource(
        "subscriptions",
        "subscription",
        "/v1/subscriptions",
        "/v1/subscriptions/{id}",
        list_variants=(_p(status="all"),),
        children=(
            Child("subscription_items", "items", "/v1/subscription_items", _p(subscription="{id}")),
        ),
        embeds=(Embed("payment_methods", ("default_payment_method",), "customer"),),
    ),
    Resource(
        "subscription_items",
        "subscription_item",
        None,
        "/v1/subscription_items/{id}",
        parent="subscriptions",
        owned=True,
    ),
    Resource(
        "subscription_schedules",
        "subscription_schedule",
        "/v1/subscription_schedules",
        "/v1/subscription_schedules/{id}",
    ),
    Resource(
        "invoices",
        "invoice",
        "/v1/invoices",
        "/v1/invoices/{id}",
        children=(Child("invoice_line_items", "lines", "/v1/invoices/{id}/lines"),),
    ),
    Resource("invoice_line_items", "line_item", None, None, parent="invoices", owned=True),
    Resource("invoice_items", "invoiceitem", "/v1/invoiceitems", "/v1/invoiceitems/{id}"),
    Resource(
        "payment_intents",
        "payment_intent",
        "/v1/payment_intents",
        "/v1/payment_intents/{id}",
        embeds=(Embed("payment_methods", ("payment_method",), "customer"),),
    ),
    Resource("charges", "charge", "/v1/charges", "/v1/charges/{id}"),
    Resource("refunds", "refund", "/v1/refunds", "/v1/refunds/{id}"),
    Resource(
        "checkout_sessions",
        "checkout.session",
        "/v1/checkout/sessions",
        "/v1/checkout/sessions/{id}",
        # Expired sessions vanish from Stripe's list after a while: absence proves nothing.
        complete_list=False,
        children=(
            Child(
                "checkout_session_line_items",
                "line_items",
                "/v1/checkout/sessions/{id}/line_items",
                parent_expand="line_items",
            ),
        ),
    ),
    Resource(
        "checkout_session_line_items", "item", None, None, parent="checkout_sessions", owned=True
    ),
    # Stripe lists a customer's payment methods only per customer (the global list is for Treasury).
    Resource(
        "payment_methods", "payment_method", None, "/v1/payment_methods/{id}", parent="customers"
    ),
    Resource(
        "setup_intents",
        "setup_intent",
        "/v1/setup_intents",
        "/v1/setup_intents/{id}",
        embeds=(Embed("payment_methods", ("payment_method",), "customer"),),
    ),
    Resource("coupons", "coupon", "/v1/coupons", "/v1/coupons/{id}"),
    Resource(
        "promotion_codes", "promotion_code", "/v1/promotion_codes", "/v1/promotion_codes/{id}"
    ),
    Resource("credit_notes", "credit_note", "/v1/credit_notes", "/v1/credit_notes/{id}"),
    Resource("disputes", "dispute", "/v1/disputes", "/v1/disputes/{id}"),
    Resource("tax_ids", "tax_id", None, "/v1/tax_ids/{id}", parent="customers"),
    Resource(
        "billing_meters",
        "billing.meter",
        "/v1/billing/meters",
        "/v1/billing/meters/{id}",
        created_filter=False,
    ),
    Resource("payouts", "payout", "/v1/payouts", "/v1/payouts/{id}"),
    Resource(
        "balance_transactions",
        "balance_transaction",
        "/v1/balance_transactions",
        "/v1/balance_transactions/{id}",
    ),
    Resource("tax_rates", "tax_rate", "/v1/tax_rates", "/v1/tax_rates/{id}"),
    Resource(
        "early_fraud_warnings",
        "radar.early_fraud_warning",
        "/v1/radar/early_fraud_warnings",
        "/v1/radar/early_fraud_warnings/{id}",
    ),
    Resource(
        "entitlement_features",
        "entitlements.feature",
        "/v1/entitlements/features",
        "/v1/entitlements/features/{id}",
        created_filter=False,
    ),
    Resource("product_features", "product_feature", None, None, parent="products", owned=True),
    Resource(
        "active_entitlements",
        "entitlements.active_entitlement",
        None,
        None,
        parent="customers",
        owned=True,
    ),
)

BY_TABLE: Mapping[str, Resource] = MappingProxyType({r.table: r for r in RESOURCES})
BY_OBJECT: Mapping[str, Resource] = MappingProxyType(
    {name: r for r in RESOURCES for name in (r.object, *r.event_objects)}
)


def selected(include: Iterable[str], exclude: Iterable[str]) -> tuple[Resource, ...]:
    """The resources chosen by config (`sync.include`/`sync.exclude`, by table name)."""
    include, exclude = list(include), list(exclude)
    for key, names in (("sync.include", include), ("sync.exclude", exclude)):
        unknown = [n for n in names if n not in BY_TABLE]
        if unknown:
            raise ConfigError(
                f"{key}: unknown table(s) {', '.join(unknown)} (known: {', '.join(BY_TABLE)})"
            )
    chosen = [
        r for r in RESOURCES if (not include or r.table in include) and r.table not in exclude
    ]
    # A child comes along with its parent: it is only reachable through it.
    tables = {r.table for r in chosen}
    return tuple(r for r in chosen if r.parent is None or r.parent in tables)
