"""All 71 real event payloads (`tests/data/stripe/events/`) through the pipeline in snapshot
mode: each one applied, or recorded as ignored with a reason, and never an error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from syncd.apply import is_deletion
from syncd.emulator import Emulator
from syncd.registry import BY_OBJECT
from tests.support.events import harness, ledger, mirror

EVENTS_DIR = Path(__file__).resolve().parent / "data" / "stripe" / "events"


def payloads() -> list[dict[str, Any]]:
    files = sorted(EVENTS_DIR.glob("*.json"))
    assert files, f"real payloads not found in {EVENTS_DIR}"
    return [json.loads(Path(f).read_text()) for f in files]


async def test_every_real_payload_is_applied_or_ignored_with_a_reason(
    db_url: str, emulator: Emulator
) -> None:
    events = payloads()
    assert len(events) == 71
    async with harness(db_url, emulator, apply_mode="snapshot") as h:
        await h.stream.take_cursor()
        now = emulator.clock.now()
        # Listable (inside the 30 days), one second apart (no ties), at the pinned version so
        # the snapshots themselves are written; the documentation examples share event ids.
        rendered = [
            {
                **e,
                "id": f"evt_payload{i:02d}",
                "created": now - len(events) + i,
                "api_version": h.cfg.stripe.api_version,
            }
            for i, e in enumerate(events)
        ]
        emulator.import_objects(rendered)
        # Older than the cursor: the overlap sweep lists them (the head poll, the newest).
        swept, head = await h.stream.sweep(), await h.stream.poll_head()
        assert swept.fresh + head.fresh == 71
        rows = {r["event_id"]: r for r in await ledger(h.db)}
        assert set(rows) == {e["id"] for e in rendered}
        for event in rendered:
            row = rows[event["id"]]
            assert row["reason"], event["type"]
            obj = event["data"]["object"]
            if row["outcome"] == "ignored":
                assert obj.get("object") not in BY_OBJECT or not obj.get("id"), event["type"]
                continue
            assert row["reason"] in ("snapshot", "tombstone", "superseded", "entitlements")
        # The newest snapshot of every object is what the mirror holds.
        newest: dict[tuple[str, str], dict[str, Any]] = {}
        for event in rendered:
            obj = event["data"]["object"]
            resource = BY_OBJECT.get(obj.get("object", ""))
            if resource is not None and obj.get("id") and not resource.owned:
                newest[(resource.table, obj["id"])] = event
        assert len(newest) >= 30
        for (table, oid), event in newest.items():
            row = (await mirror(h.db, table))[oid]
            if is_deletion(event["type"]):
                assert row[1], (table, oid)
            else:
                assert row == (event["data"]["object"], False), (table, oid)
        ignored = {r["object_type"] for r in rows.values() if r["outcome"] == "ignored"}
        assert ignored == {"invoice_payment", "review"}
        # The entitlement summary refreshed that customer's active entitlements.
        ents = await mirror(h.db, "active_entitlements")
        assert list(ents) == ["ent_test_61SzbY9Pui5KGP3yf41BRSrwpzKxHTFY"]


async def test_payloads_of_an_older_api_version_are_refetched(
    db_url: str, emulator: Emulator
) -> None:
    events = [
        e
        for e in payloads()
        if e["data"]["object"].get("object") in ("customer", "product", "price", "plan")
        and not is_deletion(e["type"])
    ]
    async with harness(db_url, emulator, apply_mode="snapshot") as h:
        await h.stream.take_cursor()
        now = emulator.clock.now()
        emulator.import_objects([e["data"]["object"] for e in events])
        emulator.import_objects(
            [
                {**e, "id": f"evt_payload{i:02d}", "created": now - len(events) + i}
                for i, e in enumerate(events)
            ]
        )
        await h.stream.sweep()
        await h.stream.poll_head()
        reasons = {r["reason"] for r in await ledger(h.db)}
        assert reasons == {"refetch"}  # 2020-03-02 snapshots are never written as they are
        for e in events:
            obj = e["data"]["object"]
            table = BY_OBJECT[obj["object"]].table
            row = (await mirror(h.db, table))[obj["id"]]
            expected = next(o for o in emulator.objects(obj["object"]) if o["id"] == obj["id"])
            assert row == (expected, False)
