"""Which snapshot of one object's events in one second is certainly the newest
(`apply.newest_of_second`): only what Stripe's lifecycle orders, never ids or list order."""

from __future__ import annotations

from typing import Any

from syncd.apply import newest_of_second


def event(type_: str, second: int = 100, **content: Any) -> dict[str, Any]:
    return {"id": f"evt_{type_}", "type": type_, "created": second, "data": {"object": content}}


def test_created_precedes_every_other_event_of_the_second() -> None:
    created = event("customer.subscription.created", status="incomplete")
    updated = event("customer.subscription.updated", status="active")
    for order in ([created, updated], [updated, created]):
        assert newest_of_second(order, 100) is updated


def test_paid_follows_finalized_and_payment_succeeded_is_the_same_change() -> None:
    events = [
        event("invoice.payment_succeeded", status="paid"),
        event("invoice.created", status="draft"),
        event("invoice.paid", status="paid"),
        event("invoice.finalized", status="open"),
    ]
    newest = newest_of_second(events, 100)
    assert newest is not None and newest["data"]["object"] == {"status": "paid"}


def test_two_updates_with_other_content_are_unknown() -> None:
    events = [event("customer.updated", name="a"), event("customer.updated", name="b")]
    assert newest_of_second(events, 100) is None


def test_unordered_events_with_other_content_are_unknown() -> None:
    # finalized and updated in one second: either may be the later one.
    events = [event("invoice.finalized", status="open"), event("invoice.updated", memo="x")]
    assert newest_of_second(events, 100) is None
    # paid and payment_failed cannot both be newest unless they carry the same content.
    events = [event("invoice.paid", status="paid"), event("invoice.payment_failed", status="open")]
    assert newest_of_second(events, 100) is None


def test_a_deletion_is_final() -> None:
    events = [event("product.deleted", id="prod_1"), event("product.updated", id="prod_1", n=2)]
    newest = newest_of_second(events, 100)
    assert newest is not None and newest["type"] == "product.deleted"


def test_only_the_given_second_counts() -> None:
    earlier = event("customer.updated", second=99, name="a")
    latest = event("customer.updated", second=100, name="b")
    assert newest_of_second([earlier, latest], 100) is latest


def test_a_lone_created_event_is_its_own_newest() -> None:
    only = event("customer.created", name="a")
    assert newest_of_second([only], 100) is only
