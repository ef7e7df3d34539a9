"""The event stream against the emulator and a real PostgreSQL: apply modes, ordering guard,
ties, deletes, ledger, late events, cursor expiry, bad events."""

from __future__ import annotations

from typing import Any

import anyio
import orjson
import structlog
import structlog.testing

from syncd import metrics
from syncd.emulator import Emulator
from syncd.registry import BY_TABLE
from syncd.versions import Version
from tests.support.events import (
    catalog,
    differences,
    harness,
    ledger,
    mirror,
    settle_overlaps,
)

CORE = ("customer", "product", "price", "plan", "subscription", "subscription_item")


async def test_refetch_mode_mirrors_creates_updates_deletes_and_cancellations(
    db_url: str, emulator: Emulator
) -> None:
    async with harness(db_url, emulator, apply_mode="refetch") as h:
        await h.stream.take_cursor()
        _, price = await catalog(h)
        doomed = await h.user.post("/v1/customers", {"email": "gone@example.com"})
        cust = await h.user.post("/v1/customers", {"email": "a@example.com"})
        sub = await h.user.post(
            "/v1/subscriptions", {"customer": cust["id"], "items": [{"price": price["id"]}]}
        )
        await h.stream.poll_head()
        await settle_overlaps(h)  # the customer its first invoice's finalization numbered
        assert await differences(emulator, h.db, CORE) == []

        await h.user.post(f"/v1/customers/{cust['id']}", {"name": "Ada", "metadata": {"k": "v"}})
        await h.user.request("DELETE", f"/v1/customers/{doomed['id']}")
        await h.user.request("DELETE", f"/v1/subscriptions/{sub['id']}")
        result = await h.stream.poll_head()
        assert result.fresh == 3
        assert await differences(emulator, h.db, CORE) == []
        subs = await mirror(h.db, "subscriptions")
        # customer.subscription.deleted is a cancellation: the row stays, canceled.
        assert subs[sub["id"]][0]["status"] == "canceled" and not subs[sub["id"]][1]
        customers = await mirror(h.db, "customers")
        assert customers[doomed["id"]][1] and not customers[cust["id"]][1]
        # Refetched rows carry the pinned API version.
        versions = await h.db.run(
            lambda c: c.fetch("SELECT DISTINCT api_version FROM stripe.customers"),
            transaction=False,
        )
        assert [r["api_version"] for r in versions] == [h.cfg.stripe.api_version]


async def test_each_event_takes_effect_once(db_url: str, emulator: Emulator) -> None:
    async with harness(db_url, emulator, apply_mode="refetch") as h:
        await h.stream.take_cursor()
        for i in range(5):
            await h.user.post("/v1/customers", {"email": f"c{i}@example.com"})
        first = await h.stream.poll_head()
        assert first.fresh == 5
        stats_before = emulator.stats.count("GET /v1/customers/*")
        # The next head poll and a sweep list the same events again: the ledger skips them.
        again = await h.stream.poll_head()
        swept = await h.stream.sweep()
        assert again.listed == 5 and again.fresh == 0 and swept.fresh == 0
        assert emulator.stats.count("GET /v1/customers/*") == stats_before
        rows = await ledger(h.db)
        assert len(rows) == 5 and {r["outcome"] for r in rows} == {"applied"}
        assert {r["reason"] for r in rows} == {"refetch"}


async def test_snapshot_mode_applies_event_objects_without_requests(
    db_url: str, emulator: Emulator
) -> None:
    async with harness(db_url, emulator, apply_mode="snapshot") as h:
        await h.stream.take_cursor()
        emulator.clock.freeze()
        cust = await h.user.post("/v1/customers", {"email": "a@example.com"})
        emulator.clock.advance(1)
        await h.user.post(f"/v1/customers/{cust['id']}", {"name": "One"})
        emulator.clock.advance(1)
        other = await h.user.post("/v1/customers", {"email": "b@example.com"})
        emulator.clock.advance(1)
        await h.user.request("DELETE", f"/v1/customers/{other['id']}")
        emulator.clock.advance(1)
        await h.stream.poll_head()
        assert emulator.stats.count("GET /v1/customers/*") == 0
        assert await differences(emulator, h.db, ("customer",)) == []
        rows = await mirror(h.db, "customers")
        assert rows[other["id"]][1]  # tombstoned from customer.deleted
        versions = await h.db.run(
            lambda c: c.fetch("SELECT extract(epoch FROM fetched_at) AS v FROM stripe.customers"),
            transaction=False,
        )
        # Stamped with the events' `created`, whole seconds on Stripe's clock.
        assert all(float(r["v"]).is_integer() for r in versions)


async def test_snapshot_mode_refetches_same_second_ties(db_url: str, emulator: Emulator) -> None:
    async with harness(db_url, emulator, apply_mode="snapshot") as h:
        await h.stream.take_cursor()
        emulator.clock.freeze()
        cust = await h.user.post("/v1/customers", {"email": "a@example.com"})
        for i in range(6):
            await h.user.post(f"/v1/customers/{cust['id']}", {"name": f"v{i}"})
        emulator.clock.advance(2)
        await h.stream.poll_head()
        # Seven events in one second: which snapshot is newest cannot be known; refetch.
        assert emulator.stats.count("GET /v1/customers/*") == 1
        assert await differences(emulator, h.db, ("customer",)) == []


async def test_snapshot_mode_orders_a_paid_subscription_by_lifecycle(
    db_url: str, emulator: Emulator
) -> None:
    """A subscription paid at once emits, in one second, its `created` and `updated`, the
    invoice's created/finalized/paid/payment_succeeded and the payment's created/succeeded.
    What follows from the lifecycle (created first, paid after finalized, paid and
    payment_succeeded one change) picks the newest snapshot without a request."""
    async with harness(db_url, emulator, apply_mode="snapshot") as h:
        cust = await h.user.post("/v1/customers", {"email": "paid@example.com"})
        pm = await h.user.post("/v1/payment_methods", {"type": "card", "card[token]": "tok_visa"})
        await h.user.post(f"/v1/payment_methods/{pm['id']}/attach", {"customer": cust["id"]})
        await h.user.post(
            f"/v1/customers/{cust['id']}", {"invoice_settings[default_payment_method]": pm["id"]}
        )
        _, price = await catalog(h)
        await h.stream.take_cursor()
        emulator.clock.freeze()
        sub = await h.user.post(
            "/v1/subscriptions", {"customer": cust["id"], "items[0][price]": price["id"]}
        )
        emulator.clock.advance(2)
        emulator.clock.unfreeze()
        await h.stream.poll_head()
        assert sub["status"] == "active"
        for retrieve in ("subscriptions", "invoices", "payment_intents", "charges"):
            assert emulator.stats.count(f"GET /v1/{retrieve}/*") == 0, retrieve
        types = ("subscription", "invoice", "payment_intent", "charge")
        assert await differences(emulator, h.db, types) == []


async def test_snapshot_mode_refetches_when_row_version_shares_the_second(
    db_url: str, emulator: Emulator
) -> None:
    async with harness(db_url, emulator, apply_mode="snapshot") as h:
        await h.stream.take_cursor()
        emulator.clock.freeze()
        cust = await h.user.post("/v1/customers", {"email": "a@example.com"})
        await h.stream.poll_head()  # row stamped with this second
        await h.user.post(f"/v1/customers/{cust['id']}", {"name": "later, same second"})
        await h.stream.poll_head()
        assert emulator.stats.count("GET /v1/customers/*") == 1
        assert await differences(emulator, h.db, ("customer",)) == []


async def test_snapshot_of_another_api_version_is_refetched(
    db_url: str, emulator: Emulator
) -> None:
    async with harness(db_url, emulator, apply_mode="snapshot") as h:
        await h.stream.take_cursor()
        cust = await h.user.post("/v1/customers", {"email": "a@example.com"})
        event = emulator.events("customer.created")[0]
        emulator.import_objects({**event, "api_version": "2020-08-27"})
        await h.stream.poll_head()
        assert emulator.stats.count("GET /v1/customers/*") == 1
        rows = await mirror(h.db, "customers")
        assert rows[cust["id"]][0] == emulator.objects("customer")[0]


async def test_older_snapshot_never_overwrites_newer_row(db_url: str, emulator: Emulator) -> None:
    async with harness(db_url, emulator, apply_mode="snapshot") as h:
        await h.stream.take_cursor()
        emulator.clock.freeze()
        cust = await h.user.post("/v1/customers", {"email": "old@example.com"})
        emulator.clock.advance(5)
        await h.user.post(f"/v1/customers/{cust['id']}", {"email": "new@example.com"})
        created_event = emulator.events("customer.created")[0]
        # The older event becomes visible only after the newer one was applied.
        emulator.state.coll("event").remove(emulator.state.get("event", created_event["id"]))
        emulator.clock.advance(2)
        await h.stream.poll_head()
        emulator.import_objects(created_event)
        await h.stream.poll_head()
        rows = await mirror(h.db, "customers")
        assert rows[cust["id"]][0]["email"] == "new@example.com"
        reasons = {r["event_id"]: r["reason"] for r in await ledger(h.db)}
        assert reasons[created_event["id"]] == "superseded"


async def test_late_events_are_caught_by_the_overlap_sweep(db_url: str, emulator: Emulator) -> None:
    async with harness(db_url, emulator, overlap=120.0) as h:
        await h.stream.take_cursor()
        emulator.set_late_visibility(800, 800)
        cust = await h.user.post("/v1/customers", {"email": "late@example.com"})
        emulator.clear_late_visibility()
        await h.stream.poll_head()  # not visible yet
        emulator.clock.advance(10)
        await h.stream.poll_head()  # syncs the clock
        await h.stream.poll_head()  # the cursor moves past the event
        await anyio.sleep(0.9)
        head = await h.stream.poll_head()
        assert head.fresh == 0 and cust["id"] not in await mirror(h.db, "customers")
        swept = await h.stream.sweep()
        assert swept.fresh == 1
        assert await differences(emulator, h.db, ("customer",)) == []


async def test_cursor_moves_with_polls_and_never_backwards(db_url: str, emulator: Emulator) -> None:
    async with harness(db_url, emulator) as h:
        taken = await h.stream.take_cursor()
        assert await h.stream.take_cursor() == taken  # a second start keeps the first cursor
        emulator.clock.advance(60)
        await h.stream.poll_head()
        await h.stream.poll_head()
        moved = await h.stream.cursor()
        assert moved is not None and moved > taken + 59
        await h.db.execute("events_cursor_advance", "", taken)
        assert await h.stream.cursor() == moved


async def test_old_cursor_restarts_and_requests_a_full_resync(
    db_url: str, emulator: Emulator
) -> None:
    async with harness(db_url, emulator) as h:
        taken = await h.stream.take_cursor()
        await h.user.post("/v1/customers", {"email": "a@example.com"})
        emulator.clock.advance(31 * 86400)
        result = await h.stream.poll_head()
        if not result.restarted:  # the first answer synced the clock mid-poll at the latest
            result = await h.stream.poll_head()
        assert result.restarted
        position = await h.stream.cursor()
        assert position is not None and position > taken + 31 * 86400 - 5
        requests = await h.db.run(
            lambda c: c.fetch("SELECT kind, args, status FROM syncd.requests"), transaction=False
        )
        assert [(r["kind"], r["args"], r["status"]) for r in requests] == [
            ("resync", {"reason": "cursor_expired"}, "pending")
        ]
        again = await h.stream.poll_head()
        assert not again.restarted


async def test_a_bad_event_is_recorded_and_the_rest_applied(
    db_url: str, emulator: Emulator
) -> None:
    async with harness(db_url, emulator, apply_mode="snapshot") as h:
        await h.stream.take_cursor()
        good = await h.user.post("/v1/customers", {"email": "good@example.com"})
        now = emulator.clock.now()
        bad = {
            "id": "evt_bad",
            "object": "event",
            "api_version": h.cfg.stripe.api_version,
            "created": now,
            "type": "customer.created",
            "data": {"object": {"id": "cus_bad", "object": "customer", "created": "soon"}},
        }
        odd = [
            {**bad, "id": "evt_noobj", "data": {}},
            {
                **bad,
                "id": "evt_unknown",
                "type": "brand_new.thing",
                "data": {"object": {"object": "thing", "id": "th_1"}},
            },
            {
                **bad,
                "id": "evt_noid",
                "type": "invoice.upcoming",
                "data": {"object": {"object": "invoice"}},
            },
        ]
        emulator.import_objects([bad, *odd])
        counted = metrics.events_processed.labels("ignored", "unknown_object")
        before = counted._value.get()
        result = await h.stream.poll_head()
        assert counted._value.get() == before + 1
        assert result.fresh == 5
        outcomes = {r["event_id"]: (r["outcome"], r["reason"]) for r in await ledger(h.db)}
        # A value that does not fit its typed column is stored as NULL; raw keeps it.
        assert outcomes["evt_bad"][0] == "applied"
        stored = await mirror(h.db, "customers")
        assert stored["cus_bad"][0]["created"] == "soon"
        assert outcomes["evt_noobj"] == ("ignored", "no_object")
        assert outcomes["evt_unknown"] == ("ignored", "unknown_object")
        assert outcomes["evt_noid"] == ("ignored", "no_object_id")
        assert good["id"] in await mirror(h.db, "customers")
        # The stream goes on: the next poll sees nothing new, and does not fail.
        assert (await h.stream.poll_head()).fresh == 0


async def test_changes_are_announced_after_commit(db_url: str, emulator: Emulator) -> None:
    async with harness(db_url, emulator) as h:
        await h.stream.take_cursor()
        got: list[dict[str, Any]] = []
        arrived = anyio.Event()

        def listen(payload: str) -> None:
            got.append(orjson.loads(payload))
            arrived.set()

        conn = await h.db.dedicated_connection()
        try:
            await conn.listen(h.cfg.events.notify_channel, listen)
            cust = await h.user.post("/v1/customers", {"email": "a@example.com"})
            await h.stream.poll_head()
            with anyio.move_on_after(5):
                await arrived.wait()
        finally:
            await conn.close()
        assert got == [{"table": "customers", "changes": [{"id": cust["id"], "op": "insert"}]}]


async def test_an_aging_cursor_warns_before_it_expires(db_url: str, emulator: Emulator) -> None:
    async with harness(db_url, emulator) as h:
        await h.stream.take_cursor()
        await h.db.execute(
            "events_cursor_restart", "", h.api.clock.now() - 26 * 86400, "first_start"
        )
        with structlog.testing.capture_logs() as logs:
            result = await h.stream.poll_head()
        assert not result.restarted
        assert [e["age_days"] for e in logs if e["event"] == "events_cursor_old"] == [26.0]
        requests = await h.db.run(
            lambda c: c.fetchval("SELECT count(*) FROM syncd.requests"), transaction=False
        )
        assert requests == 0


async def test_ledger_rows_are_pruned_after_the_retention(db_url: str, emulator: Emulator) -> None:
    async with harness(db_url, emulator, ledger_retention_days=35.0) as h:
        await h.stream.take_cursor()
        for i in range(3):
            await h.user.post("/v1/customers", {"email": f"c{i}@example.com"})
        await h.stream.poll_head()
        await h.db.run(
            lambda c: c.execute(
                "UPDATE syncd.events_ledger SET processed_at = now() - interval '36 days'"
                " WHERE event_id IN (SELECT event_id FROM syncd.events_ledger LIMIT 2)"
            )
        )
        await h.stream.prune_ledger()
        assert len(await ledger(h.db)) == 1


async def test_upsert_each_keeps_the_newest_version_per_object(
    db_url: str, emulator: Emulator
) -> None:
    async with harness(db_url, emulator) as h:
        customers = BY_TABLE["customers"]

        def cus(email: str) -> dict[str, Any]:
            return {"id": "cus_1", "object": "customer", "created": 1, "email": email}

        async def write(items: list[tuple[dict[str, Any], float, str | None]]) -> list[Any]:
            versioned = [(o, Version.of_event(v), a, "evt_test") for o, v, a in items]
            return (
                await h.db.transact(lambda c: h.writer.upsert_each(c, customers, versioned))
            ).ops

        # Within one statement the newest of an object's versions is the one written.
        assert await write([(cus("b@x"), 200.0, "v"), (cus("a@x"), 100.0, "v")]) == [
            ("cus_1", "insert")
        ]
        assert (await mirror(h.db, "customers"))["cus_1"][0]["email"] == "b@x"
        assert await write([(cus("old@x"), 150.0, "v")]) == []  # older than the row
        assert await write([({**cus("b@x"), "deleted": True}, 300.0, "v")]) == [("cus_1", "delete")]
        assert await write([(cus("later@x"), 400.0, "v")]) == []  # tombstones are final


async def test_a_cursor_stripe_refuses_as_expired_restarts_it(
    db_url: str, emulator: Emulator
) -> None:
    async with harness(db_url, emulator, max_cursor_age_days=30.0) as h:
        await h.stream.take_cursor()
        now = emulator.clock.now()
        edge = now - 30 * 86400 + 10  # ten seconds inside Stripe's retention
        cust = await h.user.post("/v1/customers", {"email": "a@example.com"})
        event = emulator.events("customer.created")[0]
        emulator.import_objects(
            [{**event, "id": f"evt_edge{i:03d}", "created": edge} for i in range(150)]
        )
        await h.db.execute("events_cursor_restart", "", float(edge - 5), "first_start")
        # Each page of events takes 0.4 s; while the second is on its way, 20 s pass at Stripe:
        # the page's `starting_after` event falls out of the retention and Stripe says so.
        emulator.faults.set(pattern="GET /v1/events", latency_ms=400)
        async with anyio.create_task_group() as tg:

            async def later() -> None:
                await anyio.sleep(0.6)
                emulator.clock.advance(20)

            tg.start_soon(later)
            result = await h.stream.poll_head()
        assert result.restarted
        assert emulator.stats.count("GET /v1/events", 400) == 1  # refused by Stripe, not by age
        row = await h.db.fetchrow("events_cursor_get", "")
        assert row is not None and row["reason"] == "cursor_expired"
        assert row["position"] >= now + 19
        requests = await h.db.run(
            lambda c: c.fetch("SELECT kind, args FROM syncd.requests"), transaction=False
        )
        assert [(r["kind"], r["args"]) for r in requests] == [
            ("resync", {"reason": "cursor_expired"})
        ]
        assert cust["id"] not in await mirror(h.db, "customers")  # nothing half-applied
