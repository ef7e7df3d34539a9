"""Objects PostgreSQL cannot store as they are never stop a resync or the event stream: odd
values are stored (typed columns NULL, `raw` as sent, NUL characters escaped), what still cannot
be stored is quarantined with its text and reason, the rest goes on, and a good version later
takes the object out of quarantine."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest

from syncd import metrics
from syncd.db import Database
from syncd.emulator import Emulator
from syncd.storable import MARK, escape, unescape
from tests.conftest import emulator_config, syncd_cli
from tests.support.events import harness, mirror, settle_overlaps
from tests.support.resync import resyncer, rows


def unindexable() -> str:
    """An email no btree index can hold (over 2704 bytes even compressed): PostgreSQL refuses
    the row with 54000, whatever syncd does with the value."""
    return secrets.token_hex(3000) + "@example.com"


async def quarantine(db: Database) -> list[dict[str, Any]]:
    got = await db.run(
        lambda c: c.fetch(
            "SELECT table_name, object_id, reason, raw_text, source, attempts, resolved_at"
            " FROM syncd.rejected_objects ORDER BY id"
        ),
        transaction=False,
    )
    return [dict(r) for r in got]


def test_nul_escaping_is_lossless_and_unambiguous() -> None:
    tricky = {
        "name": "a\0b",
        "k\0": ["\\0", MARK + "x", "plain", "\\\0\\"],
        "nested": {"v": 1, "s": MARK},
    }
    stored = escape(tricky)
    assert "\0" not in repr(stored)
    assert stored["name"] == MARK + "a\\0b"
    assert stored["nested"]["s"] == MARK + MARK  # the mark alone is escaped too
    assert stored[MARK + "k\\0"][0] == "\\0"  # untouched: no NUL, no mark
    assert unescape(stored) == tricky


async def test_poison_objects_in_a_full_resync(db_url: str, emulator: Emulator) -> None:
    emulator.seed(customers=40, products=1, subscriptions=0)
    records = emulator.state.coll("customer").records
    poisoned = {
        "nul": (records[2], {"name": "Zoë\0Null", "metadata": {"k\0": "v\0"}}),
        "decimal": (records[5], {"balance": "10.00"}),
        "float": (records[6], {"balance": 12.5}),
        "string_for_number": (records[8], {"created": "yesterday", "livemode": "maybe"}),
        "huge_metadata": (records[9], {"metadata": {f"k{i}": "v" * 500 for i in range(400)}}),
        "unindexable": (records[11], {"email": unindexable()}),
    }

    def spoil() -> None:
        for rec, fields in poisoned.values():
            rec.obj.update(fields)
            rec.invalidate()
        missing = records[13]
        for key in list(missing.obj):
            if key not in ("id", "object"):
                del missing.obj[key]
        missing.invalidate()

    emulator.locked(spoil)
    cfg = emulator_config(db_url, emulator, sync={"include": ["customers"]})
    unfit_before = metrics.unfit_values.labels("bigint")._value.get()
    async with resyncer(cfg) as rs:
        result = await rs.run(reason="test")
        assert result.tables["customers"].status == "swept"
        mirrored = await rows(rs.db, "customers")
        bad_id = poisoned["unindexable"][0].id
        # Every other object is mirrored, raw as Stripe sent it (NUL escaped, reversibly).
        for o in emulator.objects("customer"):
            if o["id"] == bad_id:
                assert o["id"] not in mirrored
                continue
            assert unescape(mirrored[o["id"]]["raw"]) == o, o["id"]
        nul_row = mirrored[poisoned["nul"][0].id]["raw"]
        assert nul_row["name"] == MARK + "Zoë\\0Null"
        typed = await rs.db.run(
            lambda c: c.fetch("SELECT id, balance, created, livemode FROM stripe.customers"),
            transaction=False,
        )
        by_id = {r["id"]: r for r in typed}
        assert by_id[poisoned["decimal"][0].id]["balance"] is None
        assert by_id[poisoned["float"][0].id]["balance"] is None
        assert by_id[poisoned["string_for_number"][0].id]["created"] is None
        assert by_id[poisoned["string_for_number"][0].id]["livemode"] is None
        assert metrics.unfit_values.labels("bigint")._value.get() >= unfit_before + 2

        # The one object PostgreSQL refuses is quarantined with its text and reason.
        entries = await quarantine(rs.db)
        assert [(e["table_name"], e["object_id"]) for e in entries] == [("customers", bad_id)]
        entry = entries[0]
        assert "54000" in entry["reason"] and entry["resolved_at"] is None
        assert poisoned["unindexable"][0].obj["email"] in entry["raw_text"]
        assert entry["source"] == f"resync run {result.run_id}"
        assert metrics.quarantined.labels("customers", "resync")._value.get() >= 1
        # `syncd status` shows it (a warning: the rest of the mirror is fine).
        status = syncd_cli("status", "--json", env={"SYNCD_DATABASE_URL": db_url})
        report = json.loads(status.stdout)
        assert report["quarantine"][0]["table"] == "customers"
        assert report["quarantine"][0]["example"] == bad_id
        assert any("quarantined" in w for w in report["warnings"])

        # Seen again by the next resync: one entry, another attempt.
        await rs.run(reason="test")
        entries = await quarantine(rs.db)
        assert len(entries) == 1 and entries[0]["attempts"] >= 2

        # Once Stripe serves a good version it is mirrored and leaves quarantine.
        def mend() -> None:
            rec = poisoned["unindexable"][0]
            rec.obj["email"] = "mended@example.com"
            rec.invalidate()

        emulator.locked(mend)
        await rs.run(reason="test")
        assert (await rows(rs.db, "customers"))[bad_id]["raw"]["email"] == "mended@example.com"
        assert (await quarantine(rs.db))[0]["resolved_at"] is not None


async def test_a_poison_object_found_by_event_is_retried_by_a_type_resync(
    db_url: str, emulator: Emulator
) -> None:
    """Quarantined from an event, then retrieved by `syncd resync --type` once mended."""
    async with harness(db_url, emulator, apply_mode="snapshot") as h:
        await h.stream.take_cursor()
        customer = await h.user.post("/v1/customers", {"email": unindexable()})
        await h.stream.poll_head()
        assert customer["id"] not in await mirror(h.db, "customers")
        assert [e["object_id"] for e in await quarantine(h.db)] == [customer["id"]]

        def mend() -> None:
            rec = emulator.state.coll("customer").by_id[customer["id"]]
            rec.obj["email"] = "fine@example.com"
            rec.invalidate()

        emulator.locked(mend)
        cfg = emulator_config(db_url, emulator, sync={"include": ["customers"]})
        async with resyncer(cfg) as rs:
            await rs.run(["customers"], reason="test")
        assert (await mirror(h.db, "customers"))[customer["id"]][0]["email"] == "fine@example.com"
        assert (await quarantine(h.db))[0]["resolved_at"] is not None


@pytest.mark.parametrize("mode", ["refetch", "snapshot"])
async def test_poison_objects_through_events(db_url: str, emulator: Emulator, mode: str) -> None:
    async with harness(db_url, emulator, apply_mode=mode) as h:
        await h.stream.take_cursor()
        good = await h.user.post("/v1/customers", {"email": "good@example.com"})
        nul = await h.user.post("/v1/customers", {"name": "tab\0name"})
        odd = await h.user.post("/v1/customers", {"email": "odd@example.com"})

        def spoil() -> None:  # values the emulator's API would not take
            rec = emulator.state.coll("customer").by_id[odd["id"]]
            rec.obj["balance"] = "10.00"
            rec.invalidate()

        emulator.locked(spoil)
        await h.user.post(f"/v1/customers/{odd['id']}", {"description": "touched"})
        bad = await h.user.post("/v1/customers", {"email": unindexable()})
        big = await h.user.post(
            "/v1/customers", {"metadata": {f"k{i}": "v" * 500 for i in range(50)}}
        )
        bare = await h.user.post("/v1/customers", {"email": "bare@example.com"})

        def strip() -> None:  # an object missing most of its fields
            rec = emulator.state.coll("customer").by_id[bare["id"]]
            for key in [k for k in rec.obj if k not in ("id", "object", "created")]:
                del rec.obj[key]
            rec.invalidate()

        emulator.locked(strip)
        await h.user.post(f"/v1/customers/{big['id']}", {"description": "still big"})
        after = await h.user.post("/v1/customers", {"email": "after@example.com"})
        await h.stream.poll_head()

        stored = await mirror(h.db, "customers")
        for c in (good, after, big, bare):
            assert c["id"] in stored
        assert len(stored[big["id"]][0]["metadata"]) == 50
        assert unescape(stored[nul["id"]][0])["name"] == "tab\0name"
        assert bad["id"] not in stored
        entries = await quarantine(h.db)
        assert [e["object_id"] for e in entries] == [bad["id"]]
        assert entries[0]["source"].startswith("event evt_")
        ledger = await h.db.run(
            lambda c: c.fetch("SELECT object_id, outcome FROM syncd.events_ledger"),
            transaction=False,
        )
        outcomes = {(r["object_id"], r["outcome"]) for r in ledger}
        assert (bad["id"], "quarantined") in outcomes
        assert not any(o == "ignored" for _, o in outcomes)
        if mode == "refetch":
            assert stored[odd["id"]][0]["balance"] == "10.00"

        # A later good version takes it out of quarantine.
        await h.user.post(f"/v1/customers/{bad['id']}", {"email": "now-fine@example.com"})
        await h.stream.poll_head()
        assert (await mirror(h.db, "customers"))[bad["id"]][0]["email"] == "now-fine@example.com"
        assert (await quarantine(h.db))[0]["resolved_at"] is not None


async def test_a_deleted_object_whose_content_was_refused_is_still_tombstoned(
    db_url: str, emulator: Emulator
) -> None:
    """Snapshot mode: Stripe's `customer.deleted` carries the last content, which PostgreSQL
    refuses; the tombstone needs none of it and is written with the id alone."""
    async with harness(db_url, emulator, apply_mode="snapshot") as h:
        await h.stream.take_cursor()
        customer = await h.user.post("/v1/customers", {"email": unindexable()})
        await h.user.request("DELETE", f"/v1/customers/{customer['id']}")
        await h.stream.poll_head()
        row, deleted = (await mirror(h.db, "customers"))[customer["id"]]
        assert deleted and row == {"id": customer["id"], "object": "customer", "deleted": True}


async def test_a_queued_object_the_database_refuses_is_quarantined(
    db_url: str, emulator: Emulator
) -> None:
    """A customer queued to be fetched again (its invoice was finalized) whose new content the
    database refuses is quarantined and leaves the queue: the settle loop never retries it for
    ever, and the invoice's own change is written."""
    async with harness(db_url, emulator) as h:
        customer = await h.user.post("/v1/customers", {"email": "fine@example.com"})
        await h.stream.take_cursor()
        await h.stream.poll_head()  # mirrored

        def poison() -> None:  # changed in Stripe without an event of its own
            rec = emulator.state.coll("customer").by_id[customer["id"]]
            rec.obj["email"] = unindexable()
            rec.invalidate()

        emulator.locked(poison)
        await h.user.post(
            "/v1/invoiceitems", {"customer": customer["id"], "amount": 500, "currency": "usd"}
        )
        invoice = await h.user.post(
            "/v1/invoices",
            {"customer": customer["id"], "pending_invoice_items_behavior": "include"},
        )
        await h.user.post(f"/v1/invoices/{invoice['id']}/finalize")
        await h.stream.poll_head()
        assert await h.db.fetchval("refetch_queue_size") == 1
        await settle_overlaps(h)  # fails the test if an entry stays or an error escapes
        kept = await quarantine(h.db)
        assert [(e["object_id"], e["source"]) for e in kept] == [
            (customer["id"], "overlap refetch")
        ]
        assert (await mirror(h.db, "customers"))[customer["id"]][0]["email"] == "fine@example.com"
        assert (await mirror(h.db, "invoices"))[invoice["id"]][0]["status"] == "open"
