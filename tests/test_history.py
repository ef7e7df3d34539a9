"""History (docs/history.md): every version of the rows of the tables in `history.tables`, written
by triggers in the transaction of the mirror write, with the source of each change; retention;
turning tables on and off; the app's `billing.subscription_history` under row-level security;
configuration errors."""

from __future__ import annotations

import ast
import dataclasses
import itertools
import json
from typing import Any

import anyio
import asyncpg
import pytest

from syncd import appschema, history, metrics
from syncd.config import load_config
from syncd.db import Database, Tx
from syncd.emulator import Emulator
from syncd.errors import ConfigError, DatabaseError
from syncd.registry import BY_TABLE
from syncd.versions import Version
from syncd.writer import Writer
from tests.conftest import ROOT, emulator_config, syncd_cli
from tests.support.daemon import daemon, daemon_env
from tests.support.events import converge, harness
from tests.support.history import assert_history_replays, enable_history, versions
from tests.support.resync import resyncer
from tests.support.views import SUPABASE, admin, as_role, build_account, sync_emulator

CUSTOMERS = BY_TABLE["customers"]
SUBSCRIPTIONS = BY_TABLE["subscriptions"]
ITEMS = BY_TABLE["subscription_items"]


def customer(cid: str, **fields: Any) -> dict[str, Any]:
    return {"id": cid, "object": "customer", "created": 1700000000, "metadata": {}, **fields}


async def upsert(
    db: Database, objs: list[dict[str, Any]], at: float, source: str, table: str = "customers"
) -> list[tuple[str, str]]:
    writer = Writer(db)
    res = BY_TABLE[table]

    async def go(conn: Tx) -> list[tuple[str, str]]:
        written = await writer.upsert(
            conn, res, objs, version=Version.at(at), api_version=None, source=source
        )
        return written.ops

    return await db.transact(go)


def ops(chain: list[dict[str, Any]]) -> list[tuple[str, str | None, Any]]:
    return [(v["operation"], v["source"], v["raw"].get("email")) for v in chain]


async def sql(db: Database, query: str, *args: Any) -> list[asyncpg.Record]:
    return await db.run(lambda c: c.fetch(query, *args), transaction=False)  # type: ignore[no-any-return]


# ---- versions ------------------------------------------------------------------------------


async def test_a_version_per_change_of_content_and_none_otherwise(db: Database) -> None:
    await history.apply(db, ["customers"])
    assert await upsert(db, [customer("cus_1", email="a"), customer("cus_2")], 10, "evt_1") == [
        ("cus_1", "insert"),
        ("cus_2", "insert"),
    ]
    assert await upsert(db, [customer("cus_1", email="a")], 20, "evt_2") == [("cus_1", "same")]
    assert await upsert(db, [customer("cus_1", email="b")], 30, "evt_3") == [("cus_1", "update")]
    assert await upsert(db, [customer("cus_1", email="stale")], 5, "evt_4") == []  # older
    # A page of the resync seeing the row again changes nothing either.
    assert await upsert(db, [customer("cus_1", email="b")], 40, "resync run 7") == [
        ("cus_1", "same")
    ]
    writer = Writer(db)
    tomb = await db.transact(
        lambda c: writer.tombstone(
            c, CUSTOMERS, ["cus_2"], version=Version.at(50), source="resync run 7 sweep"
        )
    )
    assert tomb.ops == [("cus_2", "delete")]
    kept = await versions(db, "customers")
    assert ops(kept["cus_1"]) == [("insert", "evt_1", "a"), ("update", "evt_3", "b")]
    assert ops(kept["cus_2"]) == [("insert", "evt_1", None), ("delete", "resync run 7 sweep", None)]
    # The current version is open; the tombstone closes the last one and takes no time itself.
    first, second = kept["cus_1"]
    assert first["valid_to"] == second["valid_from"] and second["valid_to"] is None
    alive, gone = kept["cus_2"]
    assert alive["valid_to"] == gone["valid_from"] == gone["valid_to"]
    # The content's version on Stripe's clock goes with it.
    assert second["fetched_at"].timestamp() == 30.0
    mirror = await sql(db, "SELECT id, changed_by FROM stripe.customers ORDER BY id")
    assert [tuple(r) for r in mirror] == [("cus_1", "evt_3"), ("cus_2", "resync run 7 sweep")]
    await assert_history_replays(db, ["customers"], sources=False)


async def test_a_rolled_back_write_leaves_no_version(db: Database) -> None:
    await history.apply(db, ["customers"])
    writer = Writer(db)

    async def go(conn: Tx) -> None:
        await writer.upsert(
            conn, CUSTOMERS, [customer("cus_1")], version=Version.at(1), api_version=None
        )
        raise RuntimeError("the transaction fails after the write")

    with pytest.raises(RuntimeError):
        await db.transact(go)
    assert await versions(db, "customers") == {}
    assert await sql(db, "SELECT id FROM stripe.customers") == []


async def test_two_changes_in_one_transaction_are_two_versions(db: Database) -> None:
    await history.apply(db, ["customers"])
    writer = Writer(db)

    async def go(conn: Tx) -> None:
        for n, email in enumerate(("a", "b", "b")):
            await writer.upsert(
                conn,
                CUSTOMERS,
                [customer("cus_1", email=email)],
                version=Version.at(10 + n),
                api_version=None,
                source=f"evt_{n}",
            )

    await db.transact(go)
    chain = (await versions(db, "customers"))["cus_1"]
    assert ops(chain) == [("insert", "evt_0", "a"), ("update", "evt_1", "b")]
    assert chain[0]["valid_to"] == chain[1]["valid_from"]  # the transaction's time: no length
    await assert_history_replays(db, ["customers"])


async def test_a_row_deleted_by_hand_and_written_again_continues_its_history(
    db: Database,
) -> None:
    await history.apply(db, ["customers"])
    await upsert(db, [customer("cus_1", email="a"), customer("cus_2", email="a")], 10, "evt_1")
    await sql(db, "DELETE FROM stripe.customers WHERE id = 'cus_1'")
    await upsert(db, [customer("cus_1", email="b"), customer("cus_3")], 20, "evt_2")
    kept = await versions(db, "customers")
    assert ops(kept["cus_1"]) == [("insert", "evt_1", "a"), ("update", "evt_2", "b")]
    assert ops(kept["cus_3"]) == [("insert", "evt_2", None)]
    await assert_history_replays(db, ["customers"])


async def test_child_sets_and_their_tombstones(db: Database) -> None:
    """Owned children: a replaced set's missing member gets its `delete` version."""
    await history.apply(db, ["subscription_items"])
    writer = Writer(db)

    def item(iid: str, quantity: int) -> dict[str, Any]:
        return {"id": iid, "object": "subscription_item", "quantity": quantity}

    async def replace(kids: list[dict[str, Any]], at: float, source: str) -> None:
        await db.transact(
            lambda c: writer.replace_children(
                c, ITEMS, "sub_1", kids, version=Version.at(at), api_version=None, source=source
            )
        )

    await replace([item("si_1", 1), item("si_2", 1)], 10, "evt_a")
    await replace([item("si_1", 2)], 20, "evt_b")
    kept = await versions(db, "subscription_items")
    assert [(v["operation"], v["source"]) for v in kept["si_1"]] == [
        ("insert", "evt_a"),
        ("update", "evt_b"),
    ]
    assert [(v["operation"], v["source"]) for v in kept["si_2"]] == [
        ("insert", "evt_a"),
        ("delete", "evt_b"),
    ]
    await assert_history_replays(db, ["subscription_items"])


async def test_trigger_calls_a_page_costs(db: Database) -> None:
    """A page of 500 new objects calls the history function once (a statement trigger over
    the inserted rows); seen again unchanged, once more (the insert trigger of the upsert finds
    nothing), never per row; changed, once per changed row (the update trigger's WHEN)."""
    await history.apply(db, ["products"])
    writer = Writer(db)

    async def page(conn: asyncpg.Connection, name: str, at: float) -> int:
        await conn.execute("SET LOCAL track_functions = 'pl'")
        # Counted before and after: the backend may still hold an earlier transaction's calls.
        count = "SELECT pg_stat_get_xact_function_calls('stripe_history.products()'::regprocedure)"
        before = await conn.fetchval(count) or 0
        objs = [{"id": f"prod_{i:03d}", "object": "product", "name": name} for i in range(500)]
        await writer.upsert(
            Tx(db, conn), BY_TABLE["products"], objs, version=Version.at(at), api_version=None
        )
        return int(await conn.fetchval(count)) - int(before)

    assert await db.run(lambda c: page(c, "x", 1)) == 1
    assert await db.run(lambda c: page(c, "x", 2)) == 1
    assert await db.run(lambda c: page(c, "y", 3)) == 1 + 500
    kept = await versions(db, "products")
    assert len(kept) == 500 and {len(chain) for chain in kept.values()} == {2}


async def test_sources_of_events_and_resyncs(db_url: str, emulator: Emulator) -> None:
    """Events record the newest event of the object; a resync's pages its run; its sweep (a
    row Stripe no longer has) the run's sweep."""
    async with harness(db_url, emulator) as h:
        await history.apply(h.db, ["customers"])
        await h.stream.take_cursor()
        cus = await h.user.post("/v1/customers", {"email": "a@example.com"})
        await h.user.post(f"/v1/customers/{cus['id']}", {"name": "One"})
        await h.stream.poll_head()
        events = [
            r["event_id"]
            for r in await sql(
                h.db, "SELECT event_id FROM syncd.events_ledger ORDER BY created, event_id"
            )
        ]
        chain = (await versions(h.db, "customers"))[cus["id"]]
        assert [v["operation"] for v in chain] == ["insert"]  # one refetch of both events
        assert chain[0]["source"] in events and chain[0]["raw"]["name"] == "One"
    emulator.seed(customers=3, products=1, subscriptions=0)
    cfg = emulator_config(db_url, emulator, sync={"include": ["customers"]})
    async with resyncer(cfg) as rs:
        ghost = customer("cus_ghost", email="gone@example.com")
        await upsert(rs.db, [ghost], 1000.0, "evt_old")
        result = await rs.run(reason="test")
        kept = await versions(rs.db, "customers")
    run = f"resync run {result.run_id}"
    listed = {o["id"] for o in emulator.objects("customer")} - {cus["id"]}
    assert listed and all([v["source"] for v in kept[i]] == [run] for i in listed)
    assert [(v["operation"], v["source"]) for v in kept["cus_ghost"]] == [
        ("insert", "evt_old"),
        ("delete", f"{run} sweep"),
    ]
    async with resyncer(cfg) as rs:
        await assert_history_replays(rs.db, ["customers"], sources=False)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_the_daemon_keeps_history_as_configured(db_url: str, emulator: Emulator) -> None:
    """`syncd run` with history.tables from the environment: its first resync and the changes it
    streams afterwards become versions that replay to the mirror, each with its source."""
    emulator.seed(customers=30, subscriptions=5, products=2)
    env = {
        **daemon_env(db_url, emulator),
        "SYNCD_HISTORY_TABLES": "customers,subscriptions",
        "SYNCD_SYNC_EXCLUDE": "payment_methods,tax_ids,active_entitlements",
    }
    async with harness(db_url, emulator) as h, daemon(env) as proc:
        with anyio.fail_after(60):
            while True:
                if await sql(h.db, "SELECT 1 FROM syncd.resync_runs WHERE status LIKE 'done%'"):
                    break
                await anyio.sleep(0.1)
        changed = emulator.objects("customer")[0]["id"]
        await h.user.post(f"/v1/customers/{changed}", {"name": "Changed"})
        await h.user.request("DELETE", f"/v1/customers/{emulator.objects('customer')[1]['id']}")
        await converge(emulator, h, ("customer", "subscription"), within=60)
        assert proc.poll() is None
        chain = (await versions(h.db, "customers"))[changed]
        assert [v["operation"] for v in chain] == ["insert", "update"]
        assert chain[0]["source"].startswith("resync run ") and chain[1]["source"].startswith(
            "evt_"
        )
        await assert_history_replays(h.db, ["customers", "subscriptions"])


# ---- turning it on and off -----------------------------------------------------------------


async def test_turning_a_table_on_keeps_its_rows_and_off_keeps_its_versions(db: Database) -> None:
    await upsert(db, [customer("cus_1", email="a"), customer("cus_2", email="a")], 10, "evt_1")
    writer = Writer(db)
    await db.transact(
        lambda c: writer.tombstone(c, CUSTOMERS, ["cus_2"], version=Version.at(11), source="x")
    )
    done = await history.apply(db, ["customers"])
    assert done.enabled == {"customers": 1}  # the live row; the tombstoned one ended before
    kept = await versions(db, "customers")
    assert list(kept) == ["cus_1"] and ops(kept["cus_1"]) == [("baseline", "evt_1", "a")]
    synced = await sql(db, "SELECT synced_at FROM stripe.customers WHERE id = 'cus_1'")
    assert kept["cus_1"][0]["valid_from"] == synced[0]["synced_at"]
    assert (await history.apply(db, ["customers"])).enabled == {}  # nothing to do again

    # Off: the triggers go, the versions stay; changes meanwhile make none.
    done = await history.apply(db, [])
    assert done.disabled == ["customers"] and done.tables == []
    await upsert(db, [customer("cus_1", email="b")], 20, "evt_2")
    await upsert(db, [customer("cus_3", email="c")], 20, "evt_2")
    assert ops((await versions(db, "customers"))["cus_1"]) == [("baseline", "evt_1", "a")]
    triggers = await sql(
        db,
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'stripe.customers'::regclass"
        " AND tgname LIKE 'syncd_history%'",
    )
    assert triggers == []

    # On again: the stale current version ends when the row changed, the rows get baselines.
    await history.apply(db, ["customers"])
    kept = await versions(db, "customers")
    assert ops(kept["cus_1"]) == [("baseline", "evt_1", "a"), ("baseline", "evt_2", "b")]
    assert ops(kept["cus_3"]) == [("baseline", "evt_2", "c")]
    await upsert(db, [customer("cus_1", email="d")], 30, "evt_3")
    assert ops((await versions(db, "customers"))["cus_1"])[-1] == ("update", "evt_3", "d")
    chain = (await versions(db, "customers"))["cus_1"]
    assert all(a["valid_to"] == b["valid_from"] for a, b in itertools.pairwise(chain))


async def test_history_tables_have_the_migrations_shape(db: Database) -> None:
    """Migration 0065 creates stripe_history.subscriptions, history.sql the others: the same
    columns, constraints and indexes (subscriptions has one index more, for its policy)."""
    await history.apply(db, ["prices"])

    async def shape(table: str) -> list[tuple[str, ...]]:
        rows = await sql(
            db,
            """
            SELECT 'column', a.attname::text,
                   concat_ws(' ', format_type(a.atttypid, a.atttypmod), a.attnotnull,
                             a.attidentity, a.attnum)
              FROM pg_attribute a
             WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
            UNION ALL
            SELECT 'constraint', c.contype::text, pg_get_constraintdef(c.oid)
              FROM pg_constraint c WHERE c.conrelid = $1::regclass
            UNION ALL
            SELECT 'index', i.relname::text, pg_get_indexdef(i.oid)
              FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
             WHERE x.indrelid = $1::regclass
            ORDER BY 1, 2, 3
            """,
            f"stripe_history.{table}",
        )
        return [tuple(str(v).replace(table, "T") for v in r) for r in rows]

    subscriptions = [r for r in await shape("subscriptions") if "T_customer" not in r[1]]
    assert subscriptions == await shape("prices")


async def test_a_table_not_in_the_registry_is_refused(db: Database) -> None:
    with pytest.raises(ConfigError, match=r"history\.tables: unknown table"):
        await history.apply(db, ['customers"; DROP TABLE stripe.prices; --'])


async def test_syncd_migrate_applies_history_tables(db_url: str) -> None:
    result = syncd_cli(
        "migrate", env={"DATABASE_URL": db_url, "SYNCD_HISTORY_TABLES": "prices, subscriptions"}
    )
    assert result.returncode == 0, result.stderr
    assert "history: prices, subscriptions" in result.stdout
    async with Database.connect(load_config(None, {"DATABASE_URL": db_url}).database) as db:
        rows = await db.fetch("history_triggered")
    assert sorted(r["table_name"] for r in rows if r["complete"]) == ["prices", "subscriptions"]


# ---- retention -----------------------------------------------------------------------------


async def test_retention_prunes_replaced_versions_only(db: Database) -> None:
    await history.apply(db, ["customers"])
    for n, email in enumerate(("a", "b", "c")):
        await upsert(db, [customer("cus_1", email=email)], 10 + n, f"evt_{n}")
    await upsert(db, [customer("cus_old", email="x")], 10, "evt_x")
    # The first two versions of cus_1 were replaced 40 days ago; cus_old never was.
    await sql(
        db,
        "UPDATE stripe_history.customers SET valid_from = valid_from - interval '41 days',"
        " valid_to = valid_to - interval '40 days'"
        " WHERE id = 'cus_1' AND valid_to IS NOT NULL",
    )
    await sql(
        db,
        "UPDATE stripe_history.customers SET valid_from = valid_from - interval '400 days'"
        " WHERE id = 'cus_old'",
    )
    counted = metrics.history_pruned.labels("customers")
    before = counted._value.get()
    assert await history.prune(db, 0) == {}  # 0 keeps everything
    assert await history.prune(db, 60) == {"customers": 0, "subscriptions": 0}
    assert await history.prune(db, 30) == {"customers": 2, "subscriptions": 0}
    assert counted._value.get() - before == 2
    kept = await versions(db, "customers")
    assert ops(kept["cus_1"]) == [("update", "evt_2", "c")] and len(kept["cus_old"]) == 1


async def test_the_pruner_runs_on_the_leader_when_retention_is_set(cfg: Any) -> None:
    from syncd.daemon import Daemon, attach_features
    from syncd.lifecycle import Lifecycle
    from syncd.stripe_api import StripeAPI

    for days, expected in ((0, False), (7, True)):
        config = dataclasses.replace(
            cfg, history=dataclasses.replace(cfg.history, retention_days=days)
        )
        async with Database.connect(config.database, min_size=1) as db, StripeAPI(config) as api:
            daemon = Daemon(config, db, Lifecycle(1.0), api)
            attach_features(daemon.runtime)
            names = [name for name, _ in daemon.runtime.loops]
        assert ("history_pruner" in names) is expected


# ---- configuration -------------------------------------------------------------------------


def test_history_configuration() -> None:
    cfg = load_config(
        None,
        {"SYNCD_HISTORY_TABLES": "subscriptions, prices", "SYNCD_HISTORY_RETENTION_DAYS": "90"},
    )
    assert cfg.history.tables == ["subscriptions", "prices"] and cfg.history.retention_days == 90
    assert cfg.database.history_schema == "stripe_history"
    assert load_config(None, {}).history.tables == []
    for env, message in (
        ({"SYNCD_HISTORY_TABLES": "subscriptions,subscription"}, "history.tables: unknown table"),
        ({"SYNCD_HISTORY_RETENTION_DAYS": "-1"}, "history.retention_days: -1 is below"),
        ({"SYNCD_HISTORY_RETENTION_DAYS": "1.5"}, "history.retention_days"),
        ({"SYNCD_DATABASE_HISTORY_SCHEMA": "Bad-Name"}, "database.history_schema"),
        ({"SYNCD_DATABASE_HISTORY_SCHEMA": "stripe"}, "database.history_schema: must differ"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(None, env)


def test_cli_unknown_history_table_exits_2_naming_the_key() -> None:
    result = syncd_cli("config", env={"SYNCD_HISTORY_TABLES": "subscriptions,invoice"})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "history.tables: unknown table(s) 'invoice'" in lines[0]
    assert "did you mean 'invoices'?" in lines[0]


def test_every_write_of_the_daemon_names_its_source() -> None:
    """Each call of a Writer method in syncd passes `source` (upsert_each: in its items), so no
    change reaches history without one. Read from the source with `ast`."""
    methods = {
        "upsert",
        "tombstone",
        "replace_children",
        "tombstone_missing_children",
        "replace_children_of_many",
    }
    missing: list[str] = []
    for path in sorted((ROOT / "syncd").rglob("*.py")):
        if path.name == "writer.py" or "emulator" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = ast.unparse(node.func.value)
            named = any(k.arg == "source" for k in node.keywords)
            if node.func.attr in methods and ("writer" in owner or owner == "w") and not named:
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: {owner}.{node.func.attr}")
    assert missing == []


# ---- the app's view ------------------------------------------------------------------------


async def test_the_view_exists_and_is_empty_while_history_is_off(db: Database) -> None:
    await upsert(
        db,
        [{"id": "sub_1", "object": "subscription", "customer": "cus_1"}],
        1,
        "e",
        "subscriptions",
    )
    assert await sql(db, "SELECT * FROM billing.subscription_history") == []
    options = await sql(
        db, "SELECT reloptions FROM pg_class WHERE oid = 'billing.subscription_history'::regclass"
    )
    assert options[0]["reloptions"] == ["security_invoker=true"]


async def test_subscription_history_under_row_level_security(
    emulator: Emulator, db_url: str
) -> None:
    cfg = emulator_config(db_url, emulator)
    acc = await build_account(emulator)
    async with Database.connect(cfg.database, min_size=1) as db:
        await admin(db, SUPABASE)
        await enable_history(db, ["subscriptions"])
        await sync_emulator(emulator, db, cfg)
        # A plan change of the subscriber's: a second version of their subscription.
        sub = (
            await sql(
                db,
                "SELECT raw FROM stripe.subscriptions WHERE customer_id = $1",
                acc.subscriber_customer,
            )
        )[0]["raw"]
        sub["items"]["data"][0]["price"] = {**sub["items"]["data"][0]["price"], "id": "price_new"}
        await upsert(db, [sub], 4e9, "evt_plan_change", "subscriptions")
        assert await appschema.apply_row_level_security(db, cfg) == "installed"
        assert await history.apply_row_level_security(db) is True
        everything = await sql(db, "SELECT * FROM billing.subscription_history ORDER BY version")
        changes = [(r["change"], r["price_id"]) for r in everything if r["id"] == sub["id"]]
        assert changes[0][0] == "insert" and changes[1:] == [("update", "price_new")]
        users = {r["user_id"] for r in everything if r["user_id"]}
        assert acc.subscriber in users and len(users) > 1
        for user in users:
            theirs = await as_role(
                db,
                "authenticated",
                "SELECT * FROM billing.subscription_history ORDER BY version",
                user=user,
            )
            assert [tuple(r) for r in theirs] == [
                tuple(r) for r in everything if r["user_id"] == user
            ], user
        stranger = "11111111-2222-4333-8444-555555555555"
        nothing = await as_role(
            db, "authenticated", "SELECT * FROM billing.subscription_history", user=stranger
        )
        assert nothing == []
        # The history table itself is filtered the same; anon reads nothing.
        raw = await as_role(
            db, "authenticated", "SELECT id FROM stripe_history.subscriptions", user=acc.subscriber
        )
        assert {r["id"] for r in raw} == {
            r["id"] for r in everything if r["user_id"] == acc.subscriber
        }
        with pytest.raises(DatabaseError, match="42501"):
            await as_role(db, "anon", "SELECT * FROM billing.subscription_history")
        # The policy finds a user's versions through the index on their customer.
        plan = await db.run(lambda c: _plan(c, acc.subscriber))
        assert "subscriptions_customer" in plan, plan

        # Row-level security off: the client roles keep nothing of it.
        off = dataclasses.replace(cfg, app=dataclasses.replace(cfg.app, row_level_security=False))
        assert await appschema.apply_row_level_security(db, off) == "removed"
        assert await history.apply_row_level_security(db) is False
        for query in (
            "SELECT * FROM billing.subscription_history",
            "SELECT * FROM stripe_history.subscriptions",
        ):
            with pytest.raises(DatabaseError, match="42501"):
                await as_role(db, "authenticated", query, user=acc.subscriber)


async def _plan(conn: asyncpg.Connection, user: str) -> str:
    await conn.execute("SET LOCAL enable_seqscan = off")
    await conn.execute("SET LOCAL ROLE authenticated")
    await conn.execute(
        "SELECT set_config('request.jwt.claims', $1, true)", json.dumps({"sub": user})
    )
    lines = await conn.fetch("EXPLAIN SELECT * FROM billing.subscription_history")
    return "\n".join(r[0] for r in lines)
