"""`syncd verify` against a real PostgreSQL and the emulator through the SDK's requestor: each
kind of drift is found and named (a row changed by hand, a row deleted by hand, an object deleted
in Stripe but live in the mirror, an object the mirror never got, children of both kinds),
`--repair` writes them through the guarded writer and a second verify exits 0; `--json` keeps
its documented shape; `--type` narrows and refuses what it cannot verify (exit 2); `--sample`
deep-compares a sample while counts and ids stay complete; a change made in Stripe while a
verify runs is not drift; and it runs beside a live daemon on half the rate budget."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import asyncpg
import orjson
import pytest

from syncd.db import Database
from syncd.emulator import Emulator
from syncd.registry import BY_TABLE
from syncd.stripe_api import StripeAPI
from syncd.verify import Verifier, differing, resolve_scope, same
from syncd.writer import Writer
from tests.conftest import TEST_API_KEY, emulator_config, syncd_cli
from tests.support.resync import daemon_env, resyncer, start_daemon, stop

pytestmark = pytest.mark.timeout(180)

REPORT_KEYS = {
    "ok",
    "drifted",
    "tables",
    "skipped",
    "requests",
    "seconds",
    "rate_limit",
    "daemon",
    "sample",
    "repair",
}
TABLE_KEYS = {
    "stripe_count",
    "mirror_live",
    "compared",
    "unlisted",
    "missing",
    "extra",
    "different",
    "notes",
    "rejected",
    "requests",
    "error",
    "repaired",
    "unrepaired",
}


def cli_env(db_url: str, emu: Emulator, **extra: str) -> dict[str, str]:
    env = {
        "SYNCD_DATABASE_URL": db_url,
        "STRIPE_API_KEY": TEST_API_KEY,
        "SYNCD_LOG_LEVEL": "warning",
        "SYNCD_STRIPE_API_BASE": emu.url,
        "SYNCD_STRIPE_RATE_LIMIT": "1000",
    }
    env.update(extra)
    return env


async def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The real CLI in a thread: the emulator it talks to is served by this test's loop."""
    return await anyio.to_thread.run_sync(lambda: syncd_cli(*args, env=env, timeout=120))


async def verify_json(*args: str, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    done = await cli("verify", "--json", *args, env=env)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, orjson.loads(done.stdout)


async def sql(db_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def build_and_mirror(db_url: str, emu: Emulator, **seed: Any) -> None:
    """Seed the emulator (customers, products, subscriptions with more items than an inline
    list holds, a tax id, a checkout session with 12 line items) and resync it all."""
    cfg = emulator_config(db_url, emu)
    async with resyncer(cfg) as rs:
        emu.seed(**(seed or {"customers": 12, "products": 2, "subscriptions": 4, "big_every": 2}))
        api = rs.api
        customers = emu.objects("customer")
        prices = [p for p in emu.objects("price") if p.get("recurring")]
        await api.post(
            f"/v1/customers/{customers[0]['id']}/tax_ids", {"type": "eu_vat", "value": "DE1234"}
        )
        one_off = await api.post(
            "/v1/prices", {"product": prices[0]["product"], "currency": "usd", "unit_amount": 700}
        )
        await api.post(
            "/v1/checkout/sessions",
            {
                "mode": "payment",
                "success_url": "https://x/ok",
                "line_items": [{"price": one_off["id"], "quantity": i + 1} for i in range(12)],
            },
        )
        await rs.run(reason="test")


@asynccontextmanager
async def stripe(db_url: str, emu: Emulator) -> AsyncIterator[StripeAPI]:
    async with StripeAPI(emulator_config(db_url, emu)) as api:
        yield api


def customers_without_subscriptions(emu: Emulator) -> list[str]:
    subscribed = {s["customer"] for s in emu.objects("subscription")}
    return [
        c["id"]
        for c in emu.objects("customer")
        if not c.get("deleted") and c["id"] not in subscribed
    ]


# ---- drift, found and repaired --------------------------------------------------------------


async def test_each_kind_of_drift_is_named_and_repair_fixes_it(
    db_url: str, emulator: Emulator
) -> None:
    await build_and_mirror(db_url, emulator)
    env = cli_env(db_url, emulator)
    clean = await cli("verify", env=env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.rstrip().endswith("the mirror equals Stripe"), clean.stdout

    plain = customers_without_subscriptions(emulator)
    edited, dropped, gone = plain[:3]
    big = next(s for s in emulator.objects("subscription") if s["items"]["has_more"])
    item = big["items"]["data"][0]["id"]  # of a list Stripe shows only partly inline
    [line] = await sql(db_url, "SELECT id FROM stripe.invoice_line_items ORDER BY id LIMIT 1")
    await sql(
        db_url,
        "UPDATE stripe.customers SET raw = jsonb_set(raw, '{email}', '\"hand@example.com\"')"
        " WHERE id = $1",
        edited,
    )
    await sql(db_url, "DELETE FROM stripe.customers WHERE id = $1", dropped)
    await sql(db_url, "DELETE FROM stripe.subscription_items WHERE id = $1", item)
    await sql(
        db_url,
        'UPDATE stripe.invoice_line_items SET raw = raw || \'{"description": "by hand"}\''
        " WHERE id = $1",
        line["id"],
    )
    async with stripe(db_url, emulator) as api:
        await api.request("DELETE", f"/v1/customers/{gone}")  # no daemon: the mirror keeps it
        new = (await api.post("/v1/customers", {"email": "new@example.com"}))["id"]

    code, report = await verify_json(env=env)
    assert code == 1 and report["ok"] is False
    customers = report["tables"]["customers"]
    assert customers["missing"] == sorted([dropped, new])
    assert customers["extra"] == [gone]
    assert customers["different"] == [{"id": edited, "fields": ["email"]}]
    assert customers["stripe_count"] == 12  # one deleted, one created
    assert customers["mirror_live"] == 11 + 1 - 1  # the dropped row; the gone one still live
    assert report["tables"]["subscription_items"]["missing"] == [item]
    lines = report["tables"]["invoice_line_items"]
    assert lines["different"] == [{"id": line["id"], "fields": ["description"]}]
    # Every other table is clean, and the drift is counted once per object.
    assert report["drifted"] == 6
    for name, table in report["tables"].items():
        if name not in ("customers", "subscription_items", "invoice_line_items"):
            assert not (table["missing"] or table["extra"] or table["different"]), name

    text = await cli("verify", env=env)
    assert text.returncode == 1
    for expected in (
        f"missing    {dropped}",
        f"missing    {new}",
        f"extra      {gone}",
        f"different  {edited}: email",
        f"missing    {item}",
        "drift: 6 object(s) in customers, subscription_items, invoice_line_items",
    ):
        assert expected in text.stdout, text.stdout

    repaired = await cli("verify", "--repair", env=env)
    assert repaired.returncode == 1, repaired.stdout + repaired.stderr  # drift was found
    for oid in (dropped, new, gone, edited, item, line["id"]):
        assert f"repaired   {oid}" in repaired.stdout, repaired.stdout
    assert "unrepaired" not in repaired.stdout, repaired.stdout

    again = await cli("verify", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    [row] = await sql(db_url, "SELECT deleted_at, email FROM stripe.customers WHERE id = $1", gone)
    assert row["deleted_at"] is not None  # tombstoned, not deleted
    [row] = await sql(db_url, "SELECT email FROM stripe.customers WHERE id = $1", edited)
    assert row["email"] != "hand@example.com"


async def test_owned_children_come_and_go_with_their_parent(
    db_url: str, emulator: Emulator
) -> None:
    """A draft invoice the mirror never got: it and its lines are missing, and --repair writes
    the parent and its complete line set. Deleted in Stripe, its line list answers 404: the
    invoice's own answer (`deleted: true`) proves the lines gone, and --repair tombstones both."""
    await build_and_mirror(db_url, emulator)
    env = cli_env(db_url, emulator)
    customer = customers_without_subscriptions(emulator)[0]
    async with stripe(db_url, emulator) as api:
        for amount in (300, 400):
            await api.post(
                "/v1/invoiceitems", {"customer": customer, "amount": amount, "currency": "usd"}
            )
        invoice = await api.post(
            "/v1/invoices", {"customer": customer, "pending_invoice_items_behavior": "include"}
        )
    lines = sorted(line["id"] for line in invoice["lines"]["data"])
    assert len(lines) == 2
    args = ("--type", "invoices", "--type", "invoice_items")
    code, report = await verify_json(*args, "--repair", env=env)
    assert code == 1
    assert report["tables"]["invoices"]["missing"] == [invoice["id"]]
    assert report["tables"]["invoice_line_items"]["missing"] == lines
    assert len(report["tables"]["invoice_items"]["missing"]) == 2
    assert report["tables"]["invoice_line_items"]["repaired"] == lines
    code, report = await verify_json(*args, env=env)
    assert code == 0, report

    async with stripe(db_url, emulator) as api:
        await api.request("DELETE", f"/v1/invoices/{invoice['id']}")
    code, report = await verify_json(*args, "--repair", env=env)
    assert code == 1
    assert report["tables"]["invoices"]["extra"] == [invoice["id"]]
    assert report["tables"]["invoice_line_items"]["extra"] == lines
    assert report["tables"]["invoice_line_items"]["repaired"] == lines
    code, report = await verify_json(*args, env=env)
    assert code == 0, report
    rows = await sql(
        db_url, "SELECT id FROM stripe.invoice_line_items WHERE deleted_at IS NOT NULL"
    )
    assert sorted(r["id"] for r in rows) == lines


async def test_a_tombstoned_row_of_a_live_object_is_reported_not_resurrected(
    db_url: str, emulator: Emulator
) -> None:
    await build_and_mirror(db_url, emulator)
    env = cli_env(db_url, emulator)
    victim = customers_without_subscriptions(emulator)[0]
    await sql(db_url, "UPDATE stripe.customers SET deleted_at = now() WHERE id = $1", victim)
    code, report = await verify_json("--type", "customers", "--repair", env=env)
    assert code == 1
    customers = report["tables"]["customers"]
    assert customers["missing"] == [victim]
    assert "tombstones are final" in customers["notes"][victim]
    assert customers["repaired"] == []
    assert [u["id"] for u in customers["unrepaired"]] == [victim]


async def test_a_live_row_the_list_hides_is_confirmed_before_it_is_called_drift(
    db_url: str, emulator: Emulator
) -> None:
    """Stripe's customer list hides customers on test clocks (as it hides expired checkout
    sessions after a while): such a row is retrieved before anything is said, and is drift only
    once Stripe says the object is gone."""
    await build_and_mirror(db_url, emulator)
    env = cli_env(db_url, emulator)
    template = dict(emulator.objects("customer")[0])
    hidden = "cus_OnATestClock0001"
    emulator.import_objects({**template, "id": hidden, "test_clock": "clock_1"})
    cfg = emulator_config(db_url, emulator)
    async with Database.connect(cfg.database) as db, StripeAPI(cfg) as api:
        reply = await api.request("GET", f"/v1/customers/{hidden}")  # as an event's refetch
        await db.transact(
            lambda c: Writer(db).upsert(
                c, BY_TABLE["customers"], [reply.object()], version=reply.version, api_version=None
            )
        )
    code, report = await verify_json("--type", "customers", env=env)
    customers = report["tables"]["customers"]
    assert code == 0, customers
    assert customers["stripe_count"] == 12 and customers["mirror_live"] == 13
    assert customers["unlisted"] == 1 and customers["requests"] == 2  # the list, one retrieve

    async with stripe(db_url, emulator) as api:
        await api.request("DELETE", f"/v1/customers/{hidden}")
    code, report = await verify_json("--type", "customers", "--repair", env=env)
    assert code == 1 and report["tables"]["customers"]["extra"] == [hidden]
    assert report["tables"]["customers"]["repaired"] == [hidden]
    code, report = await verify_json("--type", "customers", env=env)
    assert code == 0 and report["tables"]["customers"]["mirror_live"] == 12


def test_the_comparison_keeps_json_types_apart_but_not_number_forms() -> None:
    assert same({"a": [1, {"b": None}]}, {"a": [1.0, {"b": None}]})  # jsonb: 1 = 1.0
    assert not same(True, 1) and not same(0, False) and not same(None, False)
    assert not same({"a": 1}, {"a": 1, "b": None})  # a field only one side has
    assert not same([1, 2], [2, 1]) and not same("1", 1)
    assert differing({"id": "x", "a": 1, "b": True}, {"id": "x", "b": 1, "c": 2}) == [
        "a",
        "b",
        "c",
    ]


async def test_strings_stored_escaped_compare_as_stripe_sent_them(
    db_url: str, emulator: Emulator
) -> None:
    """jsonb cannot hold NUL: the mirror stores such strings escaped (storable.py). Verify
    compares what Stripe sent with the row unescaped, so they are equal, not drift."""
    emulator.seed(customers=3, products=1, subscriptions=0)
    template = dict(emulator.objects("customer")[0])
    emulator.import_objects({**template, "id": "cus_WithNul0001", "name": "a\x00b\\0"})
    async with resyncer(emulator_config(db_url, emulator)) as rs:
        await rs.run(["customers"], reason="test")
    [row] = await sql(
        db_url, "SELECT raw->>'name' AS name FROM stripe.customers WHERE id = $1", "cus_WithNul0001"
    )
    assert row["name"] != "a\x00b\\0"  # stored escaped
    code, report = await verify_json("--type", "customers", env=cli_env(db_url, emulator))
    assert code == 0 and report["tables"]["customers"]["compared"] == 4, report


# ---- options ---------------------------------------------------------------------------


async def test_json_shape_is_stable(db_url: str, emulator: Emulator) -> None:
    await build_and_mirror(db_url, emulator)
    env = cli_env(db_url, emulator)
    code, report = await verify_json(env=env)
    assert code == 0
    assert set(report) == REPORT_KEYS
    assert report["ok"] is True and report["drifted"] == 0 and report["repair"] is False
    assert report["sample"] is None and report["daemon"] is None
    assert report["rate_limit"] == 1000.0
    assert list(report["tables"]) == [
        r for r in BY_TABLE if r in report["tables"]
    ]  # registry order
    assert set(report["tables"]) == set(BY_TABLE)  # every mirrored table by default
    for name, table in report["tables"].items():
        assert set(table) == TABLE_KEYS, name
        assert table["error"] is None, name
    assert report["requests"] == sum(t["requests"] for t in report["tables"].values())
    # One list request per variant at this size; products and prices have two variants.
    assert report["tables"]["customers"]["requests"] == 1
    assert report["tables"]["prices"]["requests"] == 2
    # A per-parent list: one request per customer; tax ids come embedded in the customers list.
    assert report["tables"]["payment_methods"]["requests"] == 12
    assert report["tables"]["tax_ids"]["requests"] == 0  # counted with customers

    # Log lines (here a retried 503) never mix into the JSON on stdout.
    emulator.faults.set(pattern="GET /v1/customers", status=503, error_rate=1.0, times=1)
    done = await cli(
        "verify", "--json", "--type", "customers", env={**env, "SYNCD_LOG_LEVEL": "info"}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert orjson.loads(done.stdout)["ok"] is True
    assert "stripe_retry" in done.stderr, done.stderr


async def test_type_narrows_and_bad_usage_exits_2(db_url: str, emulator: Emulator) -> None:
    await build_and_mirror(db_url, emulator)
    env = cli_env(db_url, emulator)
    await sql(db_url, 'UPDATE stripe.products SET raw = raw || \'{"name": "x"}\'')

    code, report = await verify_json("--type", "customers", env=env)
    assert code == 0 and list(report["tables"]) == ["customers"]  # products not verified
    code, report = await verify_json("--type", "subscriptions", env=env)
    # Owned children that come inline are part of their parent.
    assert code == 0 and list(report["tables"]) == ["subscriptions", "subscription_items"]
    code, report = await verify_json("--type", "tax_ids", env=env)
    # A child alone: its parent is listed to reach it, but not compared.
    assert code == 0 and list(report["tables"]) == ["tax_ids"]
    code, report = await verify_json("--type", "customers", "--type", "products", env=env)
    assert code == 1 and list(report["tables"]) == ["customers", "products"]
    assert len(report["tables"]["products"]["different"]) == 2

    for args, says in (
        (("--type", "custmers"), "verify: unknown type 'custmers' (known: customers, "),
        (
            ("--type", "payment_methods"),
            "verify: payment_methods cannot be verified: Stripe lists it only per parent",
        ),
        (("--sample", "0"), "--sample: must be 1 or more"),
        (("--rate-limit", "nan"), "--rate-limit: must be above 0"),
    ):
        extra = {"SYNCD_SYNC_PER_PARENT_LISTS": "false"} if "payment_methods" in args else {}
        done = await cli("verify", *args, env={**env, **extra})
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert says in lines[-1], (args, done.stderr)  # one line says what is wrong
        if args[0] == "--type":
            assert len(lines) == 1, done.stderr  # as other CLI errors: `syncd: error: ...`
        assert "Traceback" not in done.stderr and done.stdout == ""


async def test_sample_compares_a_sample_but_counts_every_id(
    db_url: str, emulator: Emulator
) -> None:
    await build_and_mirror(
        db_url, emulator, customers=30, products=1, subscriptions=0, big_every=25
    )
    env = cli_env(db_url, emulator)
    ids = sorted(c["id"] for c in emulator.objects("customer"))
    await sql(db_url, "DELETE FROM stripe.customers WHERE id = $1", ids[0])
    await sql(
        db_url,
        'UPDATE stripe.customers SET raw = raw || \'{"name": "by hand"}\' WHERE id = ANY($1)',
        ids[1:],
    )
    code, report = await verify_json("--type", "customers", "--sample", "5", env=env)
    customers = report["tables"]["customers"]
    assert code == 1 and report["sample"] == 5
    assert customers["stripe_count"] == 30 and customers["mirror_live"] == 29
    assert customers["missing"] == [ids[0]]  # ids are always complete
    assert customers["compared"] == 5  # only the sample is deep-compared
    assert len(customers["different"]) == 5
    assert {d["id"] for d in customers["different"]} <= set(ids[1:])

    code, report = await verify_json("--type", "customers", "--sample", "100", env=env)
    assert report["tables"]["customers"]["compared"] == 29
    assert len(report["tables"]["customers"]["different"]) == 29


# ---- changes while it runs ---------------------------------------------------------------


async def test_a_change_made_while_verifying_is_not_drift(db_url: str, emulator: Emulator) -> None:
    """Stripe renames a customer and the list shows it before the mirror has it (the daemon's
    events lag): a candidate. It is retrieved again and compared with the row read after that
    answer: when the mirror caught up meanwhile nothing is reported; when Stripe moved on
    again, the drift named is against what Stripe holds now, not what the list showed."""
    await build_and_mirror(db_url, emulator)
    cfg = emulator_config(db_url, emulator)
    customers = customers_without_subscriptions(emulator)
    res = BY_TABLE["customers"]
    async with Database.connect(cfg.database) as db, StripeAPI(cfg) as api:
        writer = Writer(db)

        async def catch_up(oid: str) -> None:
            """What the daemon does with the change's event: the object refetched, written."""
            reply = await api.request("GET", f"/v1/customers/{oid}")
            await db.transact(
                lambda c: writer.upsert(
                    c, res, [reply.object()], version=reply.version, api_version=None
                )
            )

        for caught_up in (True, False):
            oid = customers[int(caught_up)]
            await api.post(f"/v1/customers/{oid}", {"name": "renamed"})  # the mirror lags
            verifier = Verifier(cfg, db, api, resolve_scope(cfg, ["customers"]))
            listed = verifier._list_all

            async def list_then_move(
                listed: Any = listed, oid: str = oid, caught_up: bool = caught_up
            ) -> None:
                await listed()  # the list showed "renamed" while the row has the old name
                if caught_up:
                    await catch_up(oid)
                else:
                    await api.post(f"/v1/customers/{oid}", {"name": "renamed again"})

            verifier._list_all = list_then_move  # type: ignore[method-assign]
            report = await verifier.run()
            check = report.tables["customers"]
            assert check.compared == 12
            assert check.requests == 2  # the list, and the candidate retrieved once more
            if caught_up:
                assert report.ok, check.as_json()
            else:
                assert check.ids("different") == [oid]
                assert check.drift[oid].fields == ["name"]
                expected = check.drift[oid].expected
                assert expected is not None and expected["name"] == "renamed again"


async def test_verify_beside_a_running_daemon(db_url: str, emulator: Emulator) -> None:
    """With a daemon leading, verify takes half the configured rate and still finds the mirror
    equal to Stripe, a change made just before included (the daemon applies it from events)."""
    emulator.seed(customers=10, products=1, subscriptions=2)
    env = daemon_env(
        db_url,
        emulator,
        SYNCD_EVENTS_ENABLED="true",
        SYNCD_DAEMON_HEARTBEAT_INTERVAL="0.5",
        SYNCD_LOG_LEVEL="warning",
    )
    daemon = await start_daemon(env)
    try:
        with anyio.fail_after(60):
            while True:  # the daemon's first resync
                done = "SELECT 1 FROM syncd.resync_runs WHERE status = 'done' AND tables IS NULL"
                if await sql(db_url, done):
                    break
                await anyio.sleep(0.2)
        cli_vars = cli_env(db_url, emulator)
        code, report = await verify_json(env=cli_vars)
        assert code == 0, report
        assert report["daemon"] is not None and report["rate_limit"] == 500.0
        async with stripe(db_url, emulator) as api:
            oid = customers_without_subscriptions(emulator)[0]
            await api.post(f"/v1/customers/{oid}", {"email": "moved@example.com"})
        code, report = await verify_json("--type", "customers", env=cli_vars)
        assert code == 0, report
        code, report = await verify_json("--type", "customers", "--rate-limit", "7", env=cli_vars)
        assert code == 0 and report["rate_limit"] == 7.0
    finally:
        await stop(daemon)
