"""The writer's invariants: ordering guard, final tombstones, child sets, NOTIFY, odd input."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import orjson

from syncd.config import Config
from syncd.daemon import session_settings
from syncd.db import Database, Tx
from syncd.registry import BY_TABLE
from syncd.versions import Version
from syncd.writer import Writer

STRIPE_DATA = Path(__file__).resolve().parent / "data" / "stripe"
CUSTOMERS = BY_TABLE["customers"]
SUBSCRIPTIONS = BY_TABLE["subscriptions"]
ITEMS = BY_TABLE["subscription_items"]


def customer(cid: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "customer",
        "created": 1700000000,
        "livemode": False,
        "metadata": {},
        **fields,
    }


async def write(
    db: Database, writer: Writer, objs: list[dict[str, Any]], version: float | Version
) -> list[tuple[str, str]]:
    """Upsert `objs` with `version` (a float: known to the instant)."""
    v = version if isinstance(version, Version) else Version.at(version)

    async def go(conn: Tx) -> list[tuple[str, str]]:
        return (
            await writer.upsert(conn, CUSTOMERS, objs, version=v, api_version="2025-03-31.basil")
        ).ops

    return await db.transact(go)


async def row(db: Database, cid: str) -> asyncpg.Record | None:
    return await db.run(
        lambda c: c.fetchrow("SELECT * FROM stripe.customers WHERE id = $1", cid), transaction=False
    )


async def test_older_version_never_overwrites_newer(db: Database) -> None:
    writer = Writer(db)
    assert await write(db, writer, [customer("cus_1", email="new@x")], 200.0) == [
        ("cus_1", "insert")
    ]
    assert await write(db, writer, [customer("cus_1", email="old@x")], 100.0) == []
    r = await row(db, "cus_1")
    assert r is not None and r["email"] == "new@x"
    assert await write(db, writer, [customer("cus_1", email="newer@x")], 300.0) == [
        ("cus_1", "update")
    ]


async def queued(db: Database) -> list[tuple[str, str, str | None, float]]:
    rows = await db.run(
        lambda c: c.fetch(
            "SELECT table_name, object_id, parent_id, extract(epoch FROM not_before) AS nb"
            " FROM syncd.refetch_queue ORDER BY 1, 2"
        ),
        transaction=False,
    )
    return [(r[0], r[1], r[2], float(r[3])) for r in rows]


async def test_a_slow_answer_never_overwrites_a_fresher_fetch(db: Database) -> None:
    """Issue 14, divergence 1: a list page sent before a rename but answered after the rename's
    refetch used to carry the later stamp (its arrival) and win with the old name."""
    writer = Writer(db)
    assert await write(db, writer, [customer("cus_1", name="old")], Version(90.0, 90.2))
    # The rename is refetched: sent at 100, answered at 100.2.
    await write(db, writer, [customer("cus_1", name="new")], Version(100.0, 100.2))
    # The slow page: sent at 99.5 (before the rename), answered at 105 (after the refetch).
    assert await write(db, writer, [customer("cus_1", name="old")], Version(99.5, 105.0)) == []
    r = await row(db, "cus_1")
    assert r is not None and r["name"] == "new"
    # Which of the two is newer is unknown: the object is queued to be fetched again once
    # Stripe's clock has passed both versions.
    assert await queued(db) == [("customers", "cus_1", None, 105.0)]


async def test_overlapping_versions_with_the_same_content_merge(db: Database) -> None:
    writer = Writer(db)
    await write(db, writer, [customer("cus_1", name="a")], Version(100.0, 101.0))
    assert await write(db, writer, [customer("cus_1", name="a")], Version(100.5, 103.0)) == [
        ("cus_1", "same")
    ]
    r = await row(db, "cus_1")
    assert r is not None
    # The content was Stripe's at the later of the two moments: [100.5, 103).
    assert (r["fetched_from"].timestamp(), r["fetched_at"].timestamp()) == (100.5, 103.0)
    assert await queued(db) == []
    # Certainly newer content replaces it; certainly older is stale; neither queues anything.
    assert await write(db, writer, [customer("cus_1", name="b")], Version(103.0, 104.0)) == [
        ("cus_1", "update")
    ]
    assert await write(db, writer, [customer("cus_1", name="z")], Version(99.0, 103.0)) == []
    assert await queued(db) == []


async def test_an_event_second_and_a_fetch_overlapping_it_are_not_ordered(db: Database) -> None:
    """Snapshot mode: an event's content is Stripe's at some moment of its `created` second."""
    writer = Writer(db)
    await write(db, writer, [customer("cus_1", name="event")], Version.of_event(200))
    assert await write(db, writer, [customer("cus_1", name="page")], Version(199.2, 200.4)) == []
    assert await queued(db) == [("customers", "cus_1", None, 201.0)]
    # The next second's event is certainly newer.
    assert await write(db, writer, [customer("cus_1", name="next")], Version.of_event(201)) == [
        ("cus_1", "update")
    ]


async def test_unchanged_content_advances_version_without_touching_synced_at(db: Database) -> None:
    writer = Writer(db)
    await write(db, writer, [customer("cus_1", email="a@x")], 100.0)
    before = await row(db, "cus_1")
    assert await write(db, writer, [customer("cus_1", email="a@x")], 300.0) == [("cus_1", "same")]
    after = await row(db, "cus_1")
    assert before is not None and after is not None
    assert after["synced_at"] == before["synced_at"]
    assert after["fetched_at"].timestamp() == 300.0
    # The stale write this protects against: content from t=200 arriving after the t=300 check.
    assert await write(db, writer, [customer("cus_1", email="b@x")], 200.0) == []


async def test_tombstones_are_final(db: Database) -> None:
    writer = Writer(db)
    await write(db, writer, [customer("cus_1", email="a@x")], 100.0)
    stub = {"id": "cus_1", "object": "customer", "deleted": True}
    assert await write(db, writer, [stub], 200.0) == [("cus_1", "delete")]
    r = await row(db, "cus_1")
    assert r is not None and r["deleted_at"] is not None and r["email"] == "a@x"  # last state kept
    # A late update (even with a newer stamp) never resurrects the row.
    assert await write(db, writer, [customer("cus_1", email="zombie@x")], 300.0) == []
    r = await row(db, "cus_1")
    assert r is not None and r["email"] == "a@x" and r["deleted_at"] is not None
    # A delete for an object never seen is kept as a tombstone too.
    assert await write(
        db, writer, [{"id": "cus_2", "object": "customer", "deleted": True}], 50.0
    ) == [("cus_2", "insert")]
    r2 = await row(db, "cus_2")
    assert r2 is not None and r2["deleted_at"] is not None


async def test_tombstone_ids_are_final_whatever_their_version(db: Database) -> None:
    # Stripe never undeletes: an answer saying "deleted" wins over any live version, even one
    # that looks newer (the live row was read before the deletion, whatever its stamp says).
    writer = Writer(db)
    await write(db, writer, [customer("cus_1"), customer("cus_2")], 100.0)
    ops = await db.transact(
        lambda c: writer.tombstone(c, CUSTOMERS, ["cus_1", "cus_404"], version=Version.at(50.0))
    )
    assert ops.ops == [("cus_1", "delete")]  # cus_404 is not in the mirror: nothing to mark
    ops = await db.transact(
        lambda c: writer.tombstone(c, CUSTOMERS, ["cus_1"], version=Version.at(150.0))
    )
    assert ops.ops == []  # already a tombstone


async def test_duplicate_ids_in_one_page_and_objects_without_id(db: Database) -> None:
    writer = Writer(db)
    page = [
        customer("cus_1", email="first@x"),
        {"object": "customer"},
        customer("cus_1", email="last@x"),
    ]
    assert await write(db, writer, page, 100.0) == [("cus_1", "insert")]
    r = await row(db, "cus_1")
    assert r is not None and r["email"] == "last@x"


async def test_page_bytes_go_through_unparsed(db: Database) -> None:
    writer = Writer(db)
    body = orjson.dumps([customer(f"cus_{i}", email=f"{i}@x") for i in range(100)])

    async def go(conn: Tx) -> int:
        return len(
            (
                await writer.upsert(
                    conn, CUSTOMERS, body, version=Version.at(1.0), api_version=None
                )
            ).ops
        )

    assert await db.transact(go) == 100


async def test_typed_columns_follow_raw_in_both_api_shapes(db: Database) -> None:
    writer = Writer(db)
    old_shape = {
        "id": "sub_old",
        "object": "subscription",
        "customer": "cus_1",
        "status": "active",
        "current_period_start": 1000,
        "current_period_end": 2000,
        "items": {
            "object": "list",
            "data": [{"id": "si_1", "price": {"id": "price_1"}, "quantity": 3}],
        },
    }
    basil = {
        "id": "sub_new",
        "object": "subscription",
        "customer": {"id": "cus_2", "object": "customer"},
        "status": "trialing",
        "items": {
            "object": "list",
            "data": [
                {
                    "id": "si_2",
                    "price": {"id": "price_2"},
                    "quantity": 1,
                    "current_period_start": 3000,
                    "current_period_end": 4000,
                }
            ],
        },
    }

    async def go(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        await writer.upsert(
            Tx(db, conn),
            SUBSCRIPTIONS,
            [old_shape, basil],
            version=Version.at(1.0),
            api_version=None,
        )
        return await conn.fetch(
            "SELECT id, customer_id, price_id, quantity, extract(epoch FROM current_period_start) AS cps "
            "FROM stripe.subscriptions ORDER BY id"
        )

    rows = await db.run(go)
    assert [
        (r["id"], r["customer_id"], r["price_id"], r["quantity"], int(r["cps"])) for r in rows
    ] == [
        ("sub_new", "cus_2", "price_2", 1, 3000),
        ("sub_old", "cus_1", "price_1", 3, 1000),
    ]


async def test_replace_children_tombstones_missing_ones(db: Database) -> None:
    writer = Writer(db)
    items = [
        {"id": f"si_{i}", "object": "subscription_item", "subscription": "sub_1"} for i in range(3)
    ]

    async def replace(objs: list[dict[str, Any]], version: float) -> list[tuple[str, str]]:
        async def go(conn: Tx) -> list[tuple[str, str]]:
            return (
                await writer.replace_children(
                    conn, ITEMS, "sub_1", objs, version=Version.at(version), api_version=None
                )
            ).changed

        return await db.transact(go)

    assert len(await replace(items, 1.0)) == 3
    assert await replace(items[:2], 2.0) == [("si_2", "delete")]
    live = await db.run(
        lambda c: c.fetch(
            "SELECT id FROM stripe.subscription_items WHERE deleted_at IS NULL ORDER BY id"
        ),
        transaction=False,
    )
    assert [r["id"] for r in live] == ["si_0", "si_1"]


async def test_a_child_missing_from_an_overlapping_list_is_fetched_again(db: Database) -> None:
    """A child added after its parent's list was read must not be tombstoned by that list."""
    writer = Writer(db)
    items = [
        {"id": f"si_{i}", "object": "subscription_item", "subscription": "sub_1"} for i in range(2)
    ]

    async def replace(objs: list[dict[str, Any]], version: Version) -> list[tuple[str, str]]:
        async def go(conn: Tx) -> list[tuple[str, str]]:
            return (
                await writer.replace_children(
                    conn, ITEMS, "sub_1", objs, version=version, api_version=None
                )
            ).changed

        return await db.transact(go)

    await replace(items, Version(100.0, 100.5))
    # A list read from 99.8 to 104 lacks si_1: removed, or added after the list was read?
    assert await replace(items[:1], Version(99.8, 104.0)) == []
    assert await queued(db) == [("subscription_items", "si_1", "sub_1", 104.0)]
    # A list certainly newer than si_1's row settles it.
    assert await replace(items[:1], Version(105.0, 105.5)) == [("si_1", "delete")]


async def test_changes_are_notified_on_commit_only(cfg: Config) -> None:
    async with Database.connect(cfg.database, min_size=1) as db:
        writer = Writer(db, notify_channel="syncd_changes")
        listener = await db.dedicated_connection()
        received: list[dict[str, Any]] = []
        all_seen = anyio.Event()

        def on_notify(payload: str) -> None:
            received.append(json.loads(payload))
            if sum(len(m["changes"]) for m in received) >= 600:
                all_seen.set()

        await listener.listen("syncd_changes", on_notify)
        try:

            async def rolled_back(conn: Tx) -> None:
                await writer.upsert(
                    conn, CUSTOMERS, [customer("cus_x")], version=Version.at(1.0), api_version=None
                )
                raise RuntimeError("roll back")

            with contextlib.suppress(RuntimeError):
                await db.transact(rolled_back)
            await write(db, writer, [customer(f"cus_{i}") for i in range(600)], 1.0)
            await write(db, writer, [customer("cus_1")], 2.0)  # unchanged: not announced
            with anyio.fail_after(5):
                await all_seen.wait()
            await anyio.sleep(0.2)
        finally:
            await listener.close()
    ids = [c["id"] for m in received for c in m["changes"]]
    assert len(received) > 1  # batched under the payload limit
    assert sorted(ids) == sorted(f"cus_{i}" for i in range(600))
    assert all(m["table"] == "customers" for m in received)


async def test_user_id_follows_configured_metadata_key(cfg: Config) -> None:
    from dataclasses import replace

    cfg = replace(cfg, app=replace(cfg.app, user_id_metadata_key="app_user"))
    async with Database.connect(cfg.database, min_size=1, settings=session_settings(cfg)) as db:
        writer = Writer(db)
        await write(
            db,
            writer,
            [customer("cus_1", metadata={"app_user": "u-1", "supabase_user_id": "s-1"})],
            1.0,
        )
        r = await row(db, "cus_1")
        assert r is not None and r["user_id"] == "u-1"
        await write(db, writer, [customer("cus_1", metadata={"app_user": "u-2"})], 2.0)
        r = await row(db, "cus_1")
        assert r is not None and r["user_id"] == "u-2"


async def test_every_fixture_type_in_the_registry_round_trips(db: Database) -> None:
    fixtures = json.loads((STRIPE_DATA / "openapi" / "fixtures3.json").read_text())["resources"]
    writer = Writer(db)
    for resource in BY_TABLE.values():
        obj = fixtures[resource.object]
        obj = {**obj, "id": obj.get("id") or f"x_{resource.table}"}

        async def go(conn: asyncpg.Connection, resource: Any = resource, obj: Any = obj) -> Any:
            await writer.upsert(
                Tx(db, conn),
                resource,
                [obj],
                version=Version.at(1.0),
                api_version=None,
                parent_id="parent_1",
            )
            return await conn.fetchval(
                f"SELECT raw FROM stripe.{resource.table} WHERE id = $1", obj["id"]
            )

        assert await db.run(go) == obj, resource.table
