"""Shared helpers for the event stream tests (no tests here): a stream wired to a real
PostgreSQL database and an emulator, a client acting as the account's user, and the exact
comparison of the mirror with the emulator's state, waited for (`converge`); the events ledger."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from syncd.config import Config
from syncd.daemon import session_settings
from syncd.db import Database
from syncd.emulator import Emulator
from syncd.errors import SyncdError
from syncd.events import EventStream
from syncd.registry import BY_OBJECT
from syncd.storable import unescape
from syncd.stripe_api import StripeAPI
from syncd.writer import Writer
from tests.conftest import emulator_config

# Mirror tables whose objects the emulator only changes with an event (compared exactly).
STREAMED_TYPES = (
    "customer",
    "product",
    "price",
    "plan",
    "subscription",
    "subscription_item",
    "coupon",
    "tax_id",
)


@dataclasses.dataclass
class Harness:
    cfg: Config
    db: Database
    api: StripeAPI  # the daemon's client (its clock stamps the rows)
    user: StripeAPI  # the account's user, making changes
    writer: Writer
    stream: EventStream

    batch_size: int = 1000

    def new_stream(self) -> EventStream:
        """A stream as a restarted daemon builds it: everything it knows is in the database."""
        self.stream = EventStream(
            self.cfg, self.db, self.api, self.writer, batch_size=self.batch_size
        )
        return self.stream


def stream_config(db_url: str, emu: Emulator, **events: Any) -> Config:
    return emulator_config(db_url, emu, events=events)


@asynccontextmanager
async def harness(db_url: str, emu: Emulator, **events: Any) -> AsyncIterator[Harness]:
    cfg = stream_config(db_url, emu, **events)
    async with (
        Database.connect(cfg.database, settings=session_settings(cfg)) as db,
        StripeAPI(cfg) as api,
        StripeAPI(cfg) as user,
    ):
        writer = Writer(db, notify_channel=cfg.events.notify_channel)
        stream = EventStream(cfg, db, api, writer)
        yield Harness(cfg, db, api, user, writer, stream)


async def mirror(db: Database, table: str) -> dict[str, tuple[dict[str, Any], bool]]:
    rows = await db.run(
        lambda c: c.fetch(f'SELECT id, raw, deleted_at FROM stripe."{table}"'), transaction=False
    )
    return {r["id"]: (r["raw"], r["deleted_at"] is not None) for r in rows}


# Fields Stripe changes without an event of their object are followed from the events that
# imply them (apply.IMPLIED, apply.REFERENCED): the comparison below is of every field.


async def differences(
    emu: Emulator,
    db: Database,
    types: tuple[str, ...],
    skip_fields: dict[str, set[str]] | None = None,
) -> list[str]:
    """Every way the mirror differs from the emulator: ids, fields, tombstones."""
    problems: list[str] = []
    for object_type in types:
        table = BY_OBJECT[object_type].table
        rows = await mirror(db, table)
        expected = {o["id"]: o for o in emu.objects(object_type)}
        # NUL characters are stored escaped (syncd.storable): compare what Stripe sent.
        rows = {i: (unescape(r[0]), r[1]) for i, r in rows.items()}
        for oid, obj in expected.items():
            row = rows.get(oid)
            if obj.get("deleted"):
                if row is None or not row[1]:
                    problems.append(f"{table} {oid}: deleted in Stripe, not tombstoned")
                continue
            if row is None:
                problems.append(f"{table} {oid}: missing")
            elif row[1]:
                problems.append(f"{table} {oid}: tombstoned but alive in Stripe")
            else:
                skip = (skip_fields or {}).get(object_type, set())
                diff = sorted(
                    k
                    for k in set(obj) | set(row[0])
                    if k not in skip and (k not in obj or k not in row[0] or obj[k] != row[0][k])
                )
                if diff:
                    problems.append(f"{table} {oid}: fields differ: {diff}")
                    if os.environ.get("TEST_SHOW_DIFFERENCES"):  # debugging a scenario
                        for k in diff:
                            print(
                                f"DIFF {table} {oid} {k}:\n  stripe {obj.get(k)!r}\n  mirror {row[0].get(k)!r}"
                            )
        for oid in set(rows) - set(expected):
            problems.append(f"{table} {oid}: in the mirror, unknown to Stripe")
    return problems


async def ledger(db: Database) -> list[dict[str, Any]]:
    rows = await db.run(
        lambda c: c.fetch("SELECT * FROM syncd.events_ledger ORDER BY created, event_id"),
        transaction=False,
    )
    return [dict(r) for r in rows]


async def assert_ledger_complete(
    db: Database, emu: Emulator, seed: int, *, ignored_ok: bool = False
) -> None:
    """Every event recorded once; none ignored unless `ignored_ok` (types not selected)."""
    rows = await db.run(
        lambda c: c.fetch("SELECT event_id, outcome, reason FROM syncd.events_ledger"),
        transaction=False,
    )
    recorded = {r["event_id"] for r in rows}
    events = {e["id"] for e in emu.events()}
    # Every event once (the primary key makes twice impossible), none lost, none invented.
    assert recorded == events, f"seed {seed}: ledger differs from the events"
    outcomes = {(r["outcome"], r["reason"] if r["outcome"] == "ignored" else "") for r in rows}
    allowed = {"applied", "quarantined", *(["ignored"] if ignored_ok else [])}
    assert {o for o, _ in outcomes} <= allowed, f"seed {seed}: {sorted(outcomes)}"


async def converge(emu: Emulator, h: Harness, types: tuple[str, ...], within: float = 60) -> None:
    deadline = time.monotonic() + within
    problems: list[str] = ["never compared"]
    while time.monotonic() < deadline:
        try:
            problems = await differences(emu, h.db, types)
        except SyncdError as exc:  # the database restarting under us
            problems = [str(exc)]
        if not problems:
            return
        await anyio.sleep(0.3)
    raise AssertionError(f"no convergence within {within}s: {problems[:5]}")


async def settle_overlaps(h: Harness) -> None:
    """What the daemon's event loop does after each poll: fetch again the queued objects
    (versions that overlapped with other content, objects changed by another's event) once
    Stripe's clock has passed them, until none is left."""
    with anyio.fail_after(30):
        while await h.db.fetchval("refetch_queue_size"):
            try:
                await h.stream.settle_overlaps()
            except SyncdError as exc:
                assert exc.retryable, exc
            await anyio.sleep(0.05)


async def catalog(h: Harness) -> tuple[dict[str, Any], dict[str, Any]]:
    """A product and its monthly price of 9.00 USD, made by the harness's user."""
    product = await h.user.post("/v1/products", {"name": "Pro"})
    price = await h.user.post(
        "/v1/prices",
        {
            "product": product["id"],
            "unit_amount": 900,
            "currency": "usd",
            "recurring": {"interval": "month"},
        },
    )
    return product, price
