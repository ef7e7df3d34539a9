"""Helpers shared by the full resync tests: a resync wired to a database and an emulator, the
mirror's rows compared with the emulator's objects and children, and the daemon as a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import asyncpg

from syncd.config import Config
from syncd.db import Database
from syncd.emulator import Emulator
from syncd.lifecycle import Lifecycle
from syncd.registry import BY_TABLE, RESOURCES
from syncd.resync import Resync
from syncd.stripe_api import StripeAPI
from syncd.writer import Writer
from tests.conftest import ROOT, TEST_API_KEY

# Types the emulator does not serve (404): reported as unavailable, the others go on.
NOT_EMULATED: set[str] = set()


@asynccontextmanager
async def resyncer(cfg: Config) -> AsyncIterator[Resync]:
    async with Database.connect(cfg.database) as db, StripeAPI(cfg) as api:
        yield Resync(cfg, db, api, Writer(db), Lifecycle(1.0))


async def rows(db: Database, table: str) -> dict[str, asyncpg.Record]:
    got = await db.run(
        lambda c: (
            c.fetch(f"SELECT id, parent_id, raw, deleted_at, fetched_at FROM stripe.{table}")
            if BY_TABLE[table].owned
            else c.fetch(
                f"SELECT id, NULL AS parent_id, raw, deleted_at, fetched_at FROM stripe.{table}"
            )
        ),
        transaction=False,
    )
    return {r["id"]: r for r in got}


async def mirror_differences(db: Database, emu: Emulator, tables: list[str]) -> list[str]:
    """Every live object equals its row (every field); every live row is a live object."""
    problems: list[str] = []
    for table in tables:
        res = BY_TABLE[table]
        if res.owned or table in NOT_EMULATED:
            continue
        live = alive = {o["id"]: o for o in emu.objects(res.object) if not o.get("deleted")}
        if res.parent:
            # Listed only per parent: objects of no live parent cannot be reached by any list.
            parents = {o["id"] for o in emu.objects(BY_TABLE[res.parent].object)}
            parents -= {
                o["id"] for o in emu.objects(BY_TABLE[res.parent].object) if o.get("deleted")
            }
            live = {i: o for i, o in live.items() if o.get("customer") in parents}
        mirror = await rows(db, table)
        for oid, obj in live.items():
            row = mirror.get(oid)
            if row is None:
                problems.append(f"{table}: {oid} missing")
            elif row["deleted_at"] is not None:
                problems.append(f"{table}: {oid} tombstoned but alive")
            elif row["raw"] != obj:
                problems.append(f"{table}: {oid} differs")
        for oid, row in mirror.items():
            if row["deleted_at"] is None and oid not in alive:
                problems.append(f"{table}: {oid} alive in the mirror, gone in Stripe")
    return problems


async def child_sets(db: Database) -> dict[str, dict[str, set[str]]]:
    """Live children per parent, for each owned child table."""
    out: dict[str, dict[str, set[str]]] = {}
    for res in RESOURCES:
        if not res.owned:
            continue
        sets: dict[str, set[str]] = {}
        for r in (await rows(db, res.table)).values():
            if r["deleted_at"] is None:
                sets.setdefault(r["parent_id"], set()).add(r["id"])
        out[res.table] = sets
    return out


async def emulator_children(api: StripeAPI, emu: Emulator) -> dict[str, dict[str, set[str]]]:
    """The same, read from Stripe's own child endpoints (not from our lister)."""

    async def ids(path: str, params: dict[str, Any]) -> set[str]:
        out: set[str] = set()
        after = None
        while True:
            page = await api.get(
                path, {**params, "limit": 100, **({"starting_after": after} if after else {})}
            )
            out |= {o["id"] for o in page["data"]}
            if not page["has_more"]:
                return out
            after = page["data"][-1]["id"]

    subs = [o for o in emu.objects("subscription")]
    invoices = [o for o in emu.objects("invoice") if not o.get("deleted")]
    sessions = emu.objects("checkout.session")
    products = [o for o in emu.objects("product") if not o.get("deleted")]
    customers = [o for o in emu.objects("customer") if not o.get("deleted")]
    result = {
        "subscription_items": {
            s["id"]: await ids("/v1/subscription_items", {"subscription": s["id"]}) for s in subs
        },
        "invoice_line_items": {
            i["id"]: await ids(f"/v1/invoices/{i['id']}/lines", {}) for i in invoices
        },
        "checkout_session_line_items": {
            s["id"]: await ids(f"/v1/checkout/sessions/{s['id']}/line_items", {}) for s in sessions
        },
        "product_features": {
            p["id"]: await ids(f"/v1/products/{p['id']}/features", {}) for p in products
        },
        "active_entitlements": {
            c["id"]: await ids("/v1/entitlements/active_entitlements", {"customer": c["id"]})
            for c in customers
        },
    }
    return {t: {p: s for p, s in m.items() if s} for t, m in result.items()}


def daemon_env(db_url: str, emu: Emulator, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SYNCD_", "DATABASE_URL", "STRIPE_"))
    }
    env.update(
        SYNCD_DATABASE_URL=db_url,
        STRIPE_API_KEY=TEST_API_KEY,
        SYNCD_STRIPE_API_BASE=emu.url,
        SYNCD_STRIPE_RATE_LIMIT="1000",
        SYNCD_EVENTS_ENABLED="false",
        SYNCD_USAGE_ENABLED="false",
        SYNCD_HTTP_ENABLED="false",
        SYNCD_LOG_FORMAT="json",
        SYNCD_DAEMON_SHUTDOWN_GRACE="2",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


async def start_daemon(env: dict[str, str]) -> anyio.abc.Process:
    return await anyio.open_process(
        [sys.executable, "-m", "syncd", "run"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def stop(proc: anyio.abc.Process, sig: int = signal.SIGTERM) -> None:
    if proc.returncode is None:
        proc.send_signal(sig)
    with anyio.fail_after(30):
        await proc.wait()
