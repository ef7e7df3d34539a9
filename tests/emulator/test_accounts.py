"""Connect in the emulator: connected accounts (`/v1/accounts`), the `Stripe-Account` header
serving each account from its own state, events and limits, `account.*` events on the platform,
deauthorization, and the control and Python APIs scoped to an account."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import stripe

from syncd.emulator import Emulator
from syncd.emulator.cli import configure_parser, emulator_from_args
from syncd.emulator.limits import LimitConfig

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "stripe" / "openapi" / "fixtures3.json"
ACCOUNT_KEYS = set(json.loads(FIXTURES.read_bytes())["resources"]["account"])


def acct(account: str) -> dict[str, Any]:
    """SDK request options acting for a connected account."""
    return {"stripe_account": account}


class FrozenClock:
    """The limiter's clock, frozen: buckets refill only when told to."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def control(emu: Emulator) -> Any:
    async with aiohttp.ClientSession(base_url=emu.url) as s:
        yield s


# accounts --------------------------------------------------------------------------------------
async def test_create_list_retrieve_update(emu: Emulator, aclient: stripe.StripeClient) -> None:
    emu.clock.freeze()  # same second: newest first by insertion
    accounts = aclient.v1.accounts
    std = await accounts.create_async({"email": "s@x.io"})
    exp = await accounts.create_async(
        {"type": "express", "country": "de", "metadata": {"shop": "1"}}
    )
    cus = await accounts.create_async(
        {"type": "custom", "capabilities": {"transfers": {"requested": True}}}
    )
    for a in (std, exp, cus):
        assert set(a.to_dict()) == ACCOUNT_KEYS  # Stripe's own example's key set
        assert a.id.startswith("acct_1") and len(a.id) == 21
        assert a.external_accounts.url == f"/v1/accounts/{a.id}/external_accounts"
    assert (std.type, std.email, std.country, std.default_currency) == (
        "standard",
        "s@x.io",
        "US",
        "usd",
    )
    assert std.controller.type == "account"
    assert (exp.type, exp.country, exp.default_currency, exp.metadata.to_dict()) == (
        "express",
        "DE",
        "eur",
        {"shop": "1"},
    )
    assert exp.controller.type == "application" and exp.controller.is_controller
    assert cus.controller.requirement_collection == "application"
    assert cus.capabilities.to_dict() == {"transfers": "inactive"}
    assert exp.charges_enabled is False and exp.details_submitted is False

    page = await accounts.list_async({"limit": 2})
    assert [a.id for a in page.data] == [cus.id, exp.id] and page.has_more
    rest = await accounts.list_async({"limit": 2, "starting_after": exp.id})
    assert [a.id for a in rest.data] == [std.id] and not rest.has_more
    with pytest.raises(stripe.InvalidRequestError, match="No such account"):
        await accounts.list_async({"starting_after": "acct_1nope"})

    got = await accounts.retrieve_async(exp.id)
    assert got.to_dict() == exp.to_dict()
    # the header naming the same account may retrieve it too (Stripe implies it from the URL)
    assert (await accounts.retrieve_async(exp.id, options=acct(exp.id))).id == exp.id

    upd = await accounts.update_async(
        exp.id, {"email": "e@x.io", "metadata": {"shop": "", "tier": "gold"}}
    )
    assert upd.email == "e@x.io" and upd.metadata.to_dict() == {"tier": "gold"}
    ev = emu.events("account.updated")[0]
    assert ev["account"] == exp.id and ev["data"]["object"]["id"] == exp.id
    assert ev["data"]["previous_attributes"] == {
        "email": None,
        "metadata": {"shop": "1", "tier": ""},
    }
    await accounts.update_async(exp.id, {"email": "e@x.io"})  # no change, no event
    assert len(emu.events("account.updated")) == 1

    # the platform's own account, and a connected account's own view of itself
    me = await accounts.retrieve_current_async()
    assert me.id == emu.account_id and set(me.to_dict()) == ACCOUNT_KEYS
    assert me.charges_enabled and me.id not in {a.id for a in (std, exp, cus)}
    assert (await accounts.retrieve_current_async(options=acct(cus.id))).id == cus.id


async def test_account_events_on_the_platform(emu: Emulator, aclient: stripe.StripeClient) -> None:
    a = await aclient.v1.accounts.create_async({"type": "express"})
    evs = (await aclient.v1.events.list_async({"type": "account.*"})).data
    assert [e.type for e in evs] == ["account.application.authorized"]
    d = evs[0].to_dict()
    assert d["account"] == a.id  # the connected account the event is about
    assert d["data"]["object"] == {
        "id": emu.state.application_id,
        "name": None,
        "object": "application",
    }
    # the connected account's own event list does not hold them
    assert (await aclient.v1.events.list_async(options=acct(a.id))).data == []
    # the platform's events about its own objects carry no `account`
    await aclient.v1.customers.create_async()
    own = (await aclient.v1.events.list_async({"type": "customer.created"})).data[0]
    assert "account" not in own.to_dict()


# the header ------------------------------------------------------------------------------------
async def test_each_account_has_its_own_state(emu: Emulator, aclient: stripe.StripeClient) -> None:
    a = (await aclient.v1.accounts.create_async({"type": "express"})).id
    b = (await aclient.v1.accounts.create_async({"type": "express"})).id
    customers = aclient.v1.customers
    mine = await customers.create_async({"email": "platform@x.io"})
    ca = await customers.create_async({"email": "a@x.io"}, options=acct(a))
    cb = await customers.create_async({"email": "b@x.io"}, options=acct(b))
    assert len({mine.id, ca.id, cb.id}) == 3  # ids never repeat across accounts

    assert [c.id for c in (await customers.list_async()).data] == [mine.id]
    assert [c.id for c in (await customers.list_async(options=acct(a))).data] == [ca.id]
    assert [c.id for c in (await customers.list_async(options=acct(b))).data] == [cb.id]
    with pytest.raises(stripe.InvalidRequestError, match="No such customer"):
        await customers.retrieve_async(ca.id)
    with pytest.raises(stripe.InvalidRequestError, match="No such customer"):
        await customers.retrieve_async(mine.id, options=acct(a))
    # whole flows run inside the account: a paid subscription and its events
    price = await aclient.v1.prices.create_async(
        {
            "currency": "usd",
            "unit_amount": 500,
            "recurring": {"interval": "month"},
            "product_data": {"name": "Pro"},
        },
        options=acct(a),
    )
    pay = await customers.create_async({"payment_method": "pm_card_visa"}, options=acct(a))
    pm = (await aclient.v1.payment_methods.list_async({"customer": pay.id}, acct(a))).data[0]
    sub = await aclient.v1.subscriptions.create_async(
        {"customer": pay.id, "items": [{"price": price.id}], "default_payment_method": pm.id},
        options=acct(a),
    )
    assert sub.status == "active"
    assert (await aclient.v1.subscriptions.list_async()).data == []

    # each account's events: its own, each carrying the account's id
    ev_a = (await aclient.v1.events.list_async({"limit": 100}, options=acct(a))).data
    assert {e.to_dict()["account"] for e in ev_a} == {a}
    assert "invoice.paid" in {e.type for e in ev_a}
    ev_b = (await aclient.v1.events.list_async(options=acct(b))).data
    assert [(e.type, e.data.object.id) for e in ev_b] == [("customer.created", cb.id)]
    got = await aclient.v1.events.retrieve_async(ev_b[0].id, options=acct(b))
    assert got.to_dict()["account"] == b
    with pytest.raises(stripe.InvalidRequestError, match="No such event"):
        await aclient.v1.events.retrieve_async(ev_b[0].id)
    platform_types = {e.type for e in (await aclient.v1.events.list_async({"limit": 100})).data}
    assert platform_types == {"account.application.authorized", "customer.created"}

    # the Python API sees the same split
    assert [c["id"] for c in emu.objects("customer")] == [mine.id]
    assert [c["id"] for c in emu.account(b).objects("customer")] == [cb.id]
    assert {e["account"] for e in emu.account(a).events()} == {a}
    # the platform's own id in the header is the platform
    assert [c.id for c in (await customers.list_async(options=acct(emu.account_id))).data] == [
        mine.id
    ]


async def test_unknown_account_answers_403(emu: Emulator, aclient: stripe.StripeClient) -> None:
    with pytest.raises(stripe.PermissionError) as exc:
        await aclient.v1.customers.list_async(options=acct("acct_1Unknown0000000"))
    err = exc.value
    assert err.http_status == 403
    assert err.json_body == {
        "error": {
            "type": "invalid_request_error",
            "code": "account_invalid",
            "doc_url": "https://stripe.com/docs/error-codes/account-invalid",
            "message": "The provided key 'sk_test_****ator' does not have access to account "
            "'acct_1Unknown0000000' (or that account does not exist). Application access may "
            "have been revoked.",
        }
    }
    with pytest.raises(stripe.PermissionError):
        await aclient.v1.accounts.retrieve_async("acct_1Unknown0000000")
    # nothing was created; the header's request never reached a limit (the retrieve, a
    # platform request naming the account in its URL, did)
    assert emu.objects("customer") == [] and emu.limits.count() == (1, 0)
    assert emu.stats.count(status=403, account="acct_1Unknown0000000") == 1
    assert emu.stats.count(status=403) == 2


async def test_connected_account_cannot_act_as_platform(
    emu: Emulator, aclient: stripe.StripeClient
) -> None:
    a = (await aclient.v1.accounts.create_async()).id
    b = (await aclient.v1.accounts.create_async()).id
    with pytest.raises(stripe.InvalidRequestError, match="for platforms"):
        await aclient.v1.accounts.create_async(options=acct(a))
    with pytest.raises(stripe.InvalidRequestError, match="for platforms"):
        await aclient.v1.accounts.delete_async(a, options=acct(a))
    with pytest.raises(stripe.PermissionError):  # another account than the header's
        await aclient.v1.accounts.retrieve_async(b, options=acct(a))
    assert (await aclient.v1.accounts.list_async(options=acct(a))).data == []


# disconnecting ---------------------------------------------------------------------------------
async def test_deauthorize_and_reconnect(
    emu: Emulator, aclient: stripe.StripeClient, control: Any
) -> None:
    a = (await aclient.v1.accounts.create_async({"type": "standard"})).id
    keep = (await aclient.v1.accounts.create_async({"type": "standard"})).id
    cus = await aclient.v1.customers.create_async({"email": "a@x.io"}, options=acct(a))

    async with control.post(f"/_emulator/accounts/{a}/deauthorize") as r:
        assert r.status == 200
        ev = await r.json()
    assert ev["type"] == "account.application.deauthorized" and ev["account"] == a
    assert ev["data"]["object"]["object"] == "application"
    listed = (await aclient.v1.events.list_async({"type": "account.application.*"})).data
    assert listed[0].id == ev["id"]

    for call in (
        aclient.v1.customers.list_async(options=acct(a)),
        aclient.v1.customers.retrieve_async(cus.id, options=acct(a)),
        aclient.v1.events.list_async(options=acct(a)),
        aclient.v1.accounts.retrieve_async(a),
    ):
        with pytest.raises(stripe.PermissionError) as exc:
            await call
        assert exc.value.http_status == 403 and exc.value.error.code == "account_invalid"
    assert [x.id for x in (await aclient.v1.accounts.list_async()).data] == [keep]
    with pytest.raises(stripe.PermissionError):
        await aclient.v1.accounts.update_async(a, {"email": "z@x.io"})
    # its data stays for inspection
    view = emu.account(a)
    assert not view.authorized and [c["id"] for c in view.objects("customer")] == [cus.id]
    async with control.post(f"/_emulator/accounts/{a}/deauthorize") as r:
        assert r.status == 400  # already
    async with control.post("/_emulator/accounts/acct_1nope/deauthorize") as r:
        assert r.status == 404

    # connecting again: the account's data is back
    ev2 = emu.authorize_account(a)
    assert ev2["type"] == "account.application.authorized" and ev2["account"] == a
    assert [c.id for c in (await aclient.v1.customers.list_async(options=acct(a))).data] == [cus.id]
    assert emu.account(a).authorized


async def test_delete_account(emu: Emulator, aclient: stripe.StripeClient) -> None:
    a = (await aclient.v1.accounts.create_async({"type": "custom"})).id
    await aclient.v1.customers.create_async(options=acct(a))
    gone = await aclient.v1.accounts.delete_async(a)
    assert gone.to_dict() == {"id": a, "object": "account", "deleted": True}
    ev = emu.events()[0]
    assert (ev["type"], ev["account"]) == ("account.application.deauthorized", a)
    with pytest.raises(stripe.PermissionError):
        await aclient.v1.customers.list_async(options=acct(a))
    with pytest.raises(stripe.PermissionError):
        await aclient.v1.accounts.delete_async(a)
    assert (await aclient.v1.accounts.list_async()).data == []
    assert emu.account(a).object["deleted"] is True
    assert len(emu.account(a).objects("customer")) == 1


# idempotency and limits ------------------------------------------------------------------------
async def test_idempotency_keys_are_per_account(
    emu: Emulator, aclient: stripe.StripeClient, raw: Any
) -> None:
    a = (await aclient.v1.accounts.create_async()).id
    b = (await aclient.v1.accounts.create_async()).id
    customers = aclient.v1.customers

    def opts(account: str | None) -> dict[str, Any]:
        return {"idempotency_key": "k1", **(acct(account) if account else {})}

    ids = [(await customers.create_async({"name": "n"}, opts(x))).id for x in (None, a, b)]
    assert len(set(ids)) == 3  # the same key in three accounts: three requests
    again = [(await customers.create_async({"name": "n"}, opts(x))).id for x in (None, a, b)]
    assert again == ids  # each account replays its own
    with pytest.raises(stripe.IdempotencyError):
        await customers.create_async({"name": "other"}, opts(a))
    h = {"Idempotency-Key": "k1", "Stripe-Account": b}
    async with raw.post("/v1/customers", data={"name": "n"}, headers=h) as r:
        assert r.headers["Idempotent-Replayed"] == "true" and (await r.json())["id"] == ids[2]
    assert len(emu.account(a).objects("customer")) == 1
    # an account's reset forgets its keys only
    emu.account(a).reset()
    await customers.create_async({"name": "other"}, opts(a))  # a new request now
    assert len(emu.account(a).objects("customer")) == 1
    with pytest.raises(stripe.IdempotencyError):
        await customers.create_async({"name": "other"}, opts(b))


async def test_limits_per_account(emu: Emulator, aclient: stripe.StripeClient, raw: Any) -> None:
    a = (await aclient.v1.accounts.create_async()).id
    b = (await aclient.v1.accounts.create_async()).id
    emu.limits.clock = FrozenClock()
    emu.limits.configure(global_rate=2, connect_limits="account")
    emu.limits.reset_counters()

    async def statuses(account: str | None, n: int) -> list[int]:
        headers = {"Stripe-Account": account} if account else {}
        out = []
        for _ in range(n):
            async with raw.get("/v1/customers", headers=headers) as r:
                out.append(r.status)
        return out

    # "account": each account its own budget, the platform's untouched
    assert await statuses(a, 3) == [200, 200, 429]
    assert await statuses(b, 2) == [200, 200]
    assert await statuses(None, 3) == [200, 200, 429]
    assert emu.limits.count(account=a) == (3, 1)
    assert emu.limits.count(account=b) == (2, 0)
    assert emu.limits.count() == (8, 2)  # every request
    assert emu.limits.counters_json(a)["by_reason"] == {"global-rate": 1}

    # "shared" (the default, stricter): the platform's budget counts every account's requests
    emu.limits.configure(connect_limits="shared")  # buckets start full again
    assert await statuses(a, 1) == [200]
    assert await statuses(b, 1) == [200]
    assert await statuses(b, 1) == [429]  # b has a token left, the platform none
    assert await statuses(None, 1) == [429]
    assert LimitConfig().connect_limits == "shared"

    # the SDK sees Stripe's 429
    with pytest.raises(stripe.RateLimitError):
        await aclient.v1.customers.list_async(options=acct(a))


async def test_meter_concurrency_slot_is_per_account(emu: Emulator, raw: Any) -> None:
    """One meter event in flight per (account, meter, customer): another account's event for
    its own meter and customer is not turned away."""
    emu.limits.configure(meter_event_concurrency=True)
    a = emu.create_account(type="express")["id"]
    view = emu.account(a)
    emu.faults.set(pattern="POST /v1/billing/meter_events", latency_ms=300)
    ids: dict[str | None, str] = {}
    for who, h in ((None, {}), (a, {"Stripe-Account": a})):
        async with raw.post(
            "/v1/billing/meters",
            data={
                "display_name": "T",
                "event_name": "t",
                "default_aggregation[formula]": "sum",
            },
            headers=h,
        ) as r:
            assert r.status == 200
        async with raw.post("/v1/customers", headers=h) as r:
            ids[who] = (await r.json())["id"]

    async def send(who: str | None) -> int:
        h = {"Stripe-Account": who} if who else {}
        data = {"event_name": "t", "payload[stripe_customer_id]": ids[who], "payload[value]": "1"}
        async with raw.post("/v1/billing/meter_events", data=data, headers=h) as r:
            return r.status

    assert sorted(await asyncio.gather(send(None), send(a))) == [200, 200]
    assert sorted(await asyncio.gather(send(a), send(a))) == [200, 429]
    assert sum(view.meter_totals().values()) == 2 and sum(emu.meter_totals().values()) == 1


async def test_faults_for_one_account(emu: Emulator, aclient: stripe.StripeClient) -> None:
    a = (await aclient.v1.accounts.create_async()).id
    b = (await aclient.v1.accounts.create_async()).id
    customers = aclient.v1.customers
    emu.faults.set(pattern="GET /v1/customers", status=500, error_rate=1.0, account=a)
    with pytest.raises(stripe.APIError):
        await customers.list_async(options=acct(a))
    await customers.list_async(options=acct(b))
    await customers.list_async()
    # the platform's own id: the platform's requests only
    emu.faults.clear()
    emu.faults.set(pattern="GET /v1/customers", status=503, error_rate=1.0, account=emu.account_id)
    with pytest.raises(stripe.APIError):
        await customers.list_async()
    await customers.list_async(options=acct(a))


# control and Python APIs -----------------------------------------------------------------------
async def test_control_api_takes_an_account(
    emu: Emulator, aclient: stripe.StripeClient, control: Any
) -> None:
    a = (await aclient.v1.accounts.create_async({"type": "express"})).id
    q = {"account": a}
    async with control.post("/_emulator/seed", params=q, json={"customers": 5}) as r:
        assert (await r.json())["customer"] == 5
    async with control.get("/_emulator/objects/customer", params=q) as r:
        assert (await r.json())["count"] == 5
    async with control.get("/_emulator/objects/customer") as r:
        assert (await r.json())["count"] == 0  # the platform's
    obj = {"id": "cus_imported1", "object": "customer", "created": 1_700_000_000}
    async with control.post(
        "/_emulator/import", headers={"Stripe-Account": a}, json=[obj]
    ) as r:  # the header works as well as ?account=
        assert (await r.json()) == {"imported": 1}
    listed = await aclient.v1.customers.list_async({"limit": 100}, options=acct(a))
    assert "cus_imported1" in {c.id for c in listed.data} and len(listed.data) == 6

    async with control.post("/_emulator/events/visibility", params=q, json={"burst": True}) as r:
        assert (await r.json())["burst"] is True
    async with control.get("/_emulator/events/visibility") as r:
        assert (await r.json())["burst"] is False  # the platform's switch is apart

    async with control.get("/_emulator/stats", params=q) as r:
        st = await r.json()
    assert st["endpoints"]["GET /v1/customers"] == {"200": 1} and st["total"] == 1
    async with control.get("/_emulator/limits", params=q) as r:
        assert (await r.json())["counters"]["requests"] == 1
    async with control.get("/_emulator/meter_totals", params=q) as r:
        assert (await r.json())["totals"] == []

    async with control.post("/_emulator/reset", params=q) as r:
        assert r.status == 200
    assert emu.account(a).objects("customer") == []
    assert (await aclient.v1.accounts.retrieve_async(a)).id == a  # still connected
    async with control.get("/_emulator/objects/customer", params={"account": "acct_1x"}) as r:
        assert r.status == 404
    async with control.post("/_emulator/reset") as r:  # everything, accounts included
        assert r.status == 200
    with pytest.raises(stripe.PermissionError):
        await aclient.v1.customers.list_async(options=acct(a))
    with pytest.raises(KeyError):
        emu.account(a)


async def test_python_api(emu: Emulator) -> None:
    a = emu.create_account(type="custom", email="c@x.io")
    view = emu.account(a["id"])
    assert view.object["email"] == "c@x.io" and view.authorized
    counts = view.seed(customers=20, subscriptions=4, events=True, days=5)
    assert counts["customer"] == 20
    assert len(emu.objects("customer")) == 0 and len(view.objects("customer")) == 20
    assert {e["account"] for e in view.events()} == {a["id"]}
    sub = next(s for s in view.objects("subscription") if s["status"] == "active")
    out = view.renew_subscriptions([sub["id"]])
    assert out["renewed"] == 1
    assert view.state.clock is emu.clock  # one clock for every account
    with pytest.raises(KeyError):
        emu.account("acct_1nope")
    ev = emu.deauthorize_account(a["id"])
    assert ev["account"] == a["id"] and not view.authorized


def test_sync_client_with_a_default_account(temu: Emulator) -> None:
    a = temu.create_account(type="express")["id"]
    client = temu.client(stripe_account=a)  # StripeClient(stripe_account=...): every call
    cus = client.v1.customers.create({"email": "s@x.io"})
    assert [c["id"] for c in temu.account(a).objects("customer")] == [cus.id]
    assert temu.objects("customer") == []
    assert client.v1.events.list().data[0].to_dict()["account"] == a


def test_cli_flags() -> None:
    p = argparse.ArgumentParser()
    configure_parser(p)
    emu = emulator_from_args(p.parse_args(["--connect-limits", "account"]))
    assert emu.limits.config.connect_limits == "account"
    assert p.parse_args(["--accounts", "3"]).accounts == 3
    with pytest.raises(ValueError, match="connect_limits"):
        emu.limits.configure(connect_limits="both")
