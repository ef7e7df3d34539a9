"""Convergence: whatever happens to the account and to the daemon, the mirror ends up equal to
Stripe (the emulator), every id and every field, deleted objects tombstoned.

Each scenario is a seeded random walk over: mutations through the API (checkout sessions,
whose line items a refetch expands, among them), head polls, sweeps, same-second bursts (frozen
clock, `set_burst`), late visibility, 429/500 faults, slow answers (Stripe reads the state, then
answers up to 1.5 s later, also to a resync's list pages), polls racing mutations, crashes (a
poll cancelled at a random point, then a fresh stream built from the database alone), restarts,
stops longer than `events.overlap` while events become visible, and a narrower `sync.exclude`
widened at a restart (the new types backfilled, as the daemon does at start). Scenarios are small (a handful of objects, tens of mutations) so that 200 run in every
CI run; SYNCD_CONVERGENCE_SCENARIOS=N runs more, SYNCD_CONVERGENCE_SEED=S starts elsewhere.
A second test does the same with a real `syncd run` subprocess killed with SIGKILL.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import time
from typing import Any

import anyio
import pytest

from syncd.db import Database
from syncd.emulator import Emulator
from syncd.errors import SyncdError
from syncd.registry import BY_TABLE
from syncd.resync import Resync
from syncd.resync_schedule import backfill_of
from tests.support.daemon import daemon_env, start_daemon
from tests.support.events import (
    STREAMED_TYPES,
    Harness,
    assert_ledger_complete,
    differences,
    harness,
    settle_overlaps,
)
from tests.support.history import assert_history_replays, enable_history

SCENARIOS = int(os.environ.get("SYNCD_CONVERGENCE_SCENARIOS", "200"))
FIRST_SEED = int(os.environ.get("SYNCD_CONVERGENCE_SEED", "1"))
# At most 20 scenarios per test, so a large run stays within the per-test timeout.
CHUNKS = max(10, -(-SCENARIOS // 20))
COMPARED = (*STREAMED_TYPES, "invoice", "checkout.session")
# Types a narrowed scenario leaves out until it widens (their objects come by backfill).
NARROWED = ["products", "prices", "plans"]
OVERLAP = 3600.0
TABLES = sorted(BY_TABLE)
# Types whose every version is kept (docs/history.md): replaying them must give the mirror.
HISTORY = ["customers", "prices", "subscriptions"]


def live(emu: Emulator, object_type: str, **match: Any) -> list[dict[str, Any]]:
    return [
        o
        for o in emu.objects(object_type)
        if not o.get("deleted") and all(o.get(k) == v for k, v in match.items())
    ]


class User:
    """Random changes through the API, as the account's users make them."""

    def __init__(self, emu: Emulator, api: Any, rng: random.Random):
        self.emu, self.api, self.rng = emu, api, rng
        self.poisoned: set[str] = set()

    async def act(self) -> None:
        rng = self.rng
        customers = live(self.emu, "customer")
        products = live(self.emu, "product")
        prices = live(self.emu, "price", active=True)
        recurring = [p for p in prices if p.get("recurring")]
        subs = [s for s in live(self.emu, "subscription") if s["status"] != "canceled"]
        choices: list[tuple[int, Any]] = [(3, self.new_customer), (2, self.new_product)]
        if customers:
            choices += [(4, self.update_customer), (1, self.delete_customer)]
            choices += [(1, self.add_tax_id), (1, self.poison_customer)]
        if products:
            choices += [(2, self.new_price), (2, self.update_product)]
        if prices:
            choices += [(2, self.update_price)]
        if customers and recurring:
            choices += [(3, self.new_subscription)]
        if subs:
            choices += [(3, self.update_subscription), (1, self.cancel_subscription)]
        if live(self.emu, "tax_id"):
            choices += [(1, self.delete_tax_id)]
        if prices:
            choices += [(1, self.new_checkout_session)]
        if live(self.emu, "checkout.session", status="open"):
            choices += [(1, self.expire_checkout_session)]
        choices += [(1, self.coupon)]
        weights, actions = zip(*choices, strict=True)
        action = rng.choices(actions, weights)[0]
        await action()

    def pick(self, object_type: str, **match: Any) -> dict[str, Any]:
        return self.rng.choice(live(self.emu, object_type, **match))

    async def new_customer(self) -> None:
        n = self.rng.randrange(10**6)
        # Some names carry a NUL character (jsonb refuses it; syncd stores it escaped).
        name = f"n\0{n}" if self.rng.random() < 0.2 else f"n{n}"
        await self.api.post(
            "/v1/customers", {"email": f"u{n}@example.com", "name": name, "metadata": {"n": n}}
        )

    async def poison_customer(self) -> None:
        """A version PostgreSQL cannot store (an email too large for its index): quarantined,
        until the scenario's end gives the customer a good version again (`mend`)."""
        c = self.pick("customer")
        email = self.rng.randbytes(3000).hex() + "@example.com"
        await self.api.post(f"/v1/customers/{c['id']}", {"email": email})
        self.poisoned.add(c["id"])

    async def mend(self) -> None:
        for cid in sorted(self.poisoned):
            if any(c["id"] == cid for c in live(self.emu, "customer")):
                await self.api.post(f"/v1/customers/{cid}", {"email": "mended@example.com"})

    async def update_customer(self) -> None:
        c = self.pick("customer")
        params = self.rng.choice(
            [
                {"name": f"name {self.rng.randrange(1000)}"},
                {"metadata": {"n": self.rng.randrange(1000)}},
                {"email": f"e{self.rng.randrange(1000)}@example.com", "metadata": {"x": "y"}},
            ]
        )
        await self.api.post(f"/v1/customers/{c['id']}", params)

    async def delete_customer(self) -> None:
        await self.api.request("DELETE", f"/v1/customers/{self.pick('customer')['id']}")

    async def new_product(self) -> None:
        await self.api.post("/v1/products", {"name": f"P{self.rng.randrange(1000)}"})

    async def update_product(self) -> None:
        p = self.pick("product")
        # Real changes only: the emulator bumps `updated` on a no-op update without an event.
        params = self.rng.choice(
            [{"name": f"{p['name']}+"}, {"active": "false" if p["active"] else "true"}]
        )
        await self.api.post(f"/v1/products/{p['id']}", params)

    async def new_price(self) -> None:
        params: dict[str, Any] = {
            "product": self.pick("product")["id"],
            "unit_amount": self.rng.choice([100, 500, 900]),
            "currency": "usd",
        }
        if self.rng.random() < 0.7:
            params["recurring"] = {"interval": self.rng.choice(["month", "year"])}
        await self.api.post("/v1/prices", params)

    async def update_price(self) -> None:
        p = self.pick("price", active=True)
        params = self.rng.choice(
            [{"metadata": {"v": self.rng.randrange(100)}}, {"active": "false"}]
        )
        await self.api.post(f"/v1/prices/{p['id']}", params)

    async def new_subscription(self) -> None:
        price = self.rng.choice(
            [p for p in live(self.emu, "price", active=True) if p.get("recurring")]
        )
        await self.api.post(
            "/v1/subscriptions",
            {"customer": self.pick("customer")["id"], "items": [{"price": price["id"]}]},
        )

    async def update_subscription(self) -> None:
        s = self.rng.choice(
            [s for s in live(self.emu, "subscription") if s["status"] != "canceled"]
        )
        params = self.rng.choice(
            [
                {"metadata": {"m": self.rng.randrange(100)}},
                {"cancel_at_period_end": self.rng.choice(["true", "false"])},
            ]
        )
        await self.api.post(f"/v1/subscriptions/{s['id']}", params)

    async def cancel_subscription(self) -> None:
        s = self.rng.choice(
            [s for s in live(self.emu, "subscription") if s["status"] != "canceled"]
        )
        await self.api.request("DELETE", f"/v1/subscriptions/{s['id']}")

    async def add_tax_id(self) -> None:
        c = self.pick("customer")
        value = f"DE{self.rng.randrange(10**8, 10**9)}"
        await self.api.post(f"/v1/customers/{c['id']}/tax_ids", {"type": "eu_vat", "value": value})

    async def delete_tax_id(self) -> None:
        t = self.pick("tax_id")
        await self.api.request("DELETE", f"/v1/customers/{t['customer']}/tax_ids/{t['id']}")

    async def new_checkout_session(self) -> None:
        one_time = [p for p in live(self.emu, "price", active=True) if not p.get("recurring")]
        if not one_time:
            return await self.new_customer()
        items = [
            {"price": self.pick_from(one_time)["id"], "quantity": self.rng.randrange(1, 4)}
            for _ in range(self.rng.randrange(1, 4))
        ]
        await self.api.post(
            "/v1/checkout/sessions",
            {"mode": "payment", "line_items": items, "success_url": "https://example.com/ok"},
        )

    async def expire_checkout_session(self) -> None:
        s = self.pick("checkout.session", status="open")
        await self.api.post(f"/v1/checkout/sessions/{s['id']}/expire")

    def pick_from(self, objects: list[dict[str, Any]]) -> dict[str, Any]:
        return self.rng.choice(objects)

    async def coupon(self) -> None:
        coupons = live(self.emu, "coupon")
        if coupons and self.rng.random() < 0.5:
            await self.api.request("DELETE", f"/v1/coupons/{self.rng.choice(coupons)['id']}")
        else:
            await self.api.post("/v1/coupons", {"percent_off": self.rng.choice([10, 25])})


async def reset_database(db: Database) -> None:
    tables = ", ".join(f'stripe."{t}"' for t in TABLES)
    await db.run(
        lambda c: c.execute(
            f"TRUNCATE {tables}, syncd.events_ledger, syncd.events_cursor, syncd.requests,"
            " syncd.resync_runs, syncd.rejected_objects, syncd.refetch_queue,"
            " syncd.resync_coverage CASCADE"
        )
    )
    await db.run(lambda c: c.execute(REFUSALS))


# A transient refusal, as PostgreSQL gives it when a role loses a privilege (42501): a trigger
# on the mirror tables refuses writes to the table named in test_refused_writes.
REFUSALS = """
CREATE TABLE IF NOT EXISTS public.test_refused_writes (table_name text PRIMARY KEY);
TRUNCATE public.test_refused_writes;
CREATE OR REPLACE FUNCTION public.test_refuse_writes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM public.test_refused_writes WHERE table_name = TG_TABLE_NAME) THEN
        RAISE EXCEPTION 'permission denied for table %', TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER test_refuse_writes BEFORE INSERT OR UPDATE ON stripe.customers
    FOR EACH ROW EXECUTE FUNCTION public.test_refuse_writes();
CREATE OR REPLACE TRIGGER test_refuse_writes BEFORE INSERT OR UPDATE ON stripe.products
    FOR EACH ROW EXECUTE FUNCTION public.test_refuse_writes();
CREATE OR REPLACE TRIGGER test_refuse_writes BEFORE INSERT OR UPDATE ON stripe.prices
    FOR EACH ROW EXECUTE FUNCTION public.test_refuse_writes();
"""


async def refuse_writes(db: Database, table: str | None) -> None:
    """Refuse writes to `table` from now on (None: allow every table again)."""
    await db.run(lambda c: c.execute("TRUNCATE public.test_refused_writes"))
    if table is not None:
        await db.run(
            lambda c: c.execute("INSERT INTO public.test_refused_writes VALUES ($1)", table)
        )


async def run_scenario(db_url: str, emu: Emulator, seed: int) -> None:
    rng = random.Random(seed)
    emu.reset(seed)
    mode = rng.choice(["refetch", "snapshot"])
    # Some scenarios start from an account with objects: a full resync runs alongside the
    # stream (the daemon's first start), its list pages racing the stream's writes.
    with_resync = rng.random() < 0.3
    narrowed = rng.random() < 0.15
    async with harness(
        db_url, emu, apply_mode=mode, overlap=OVERLAP, fetch_concurrency=rng.choice([1, 4])
    ) as h:
        full_cfg = h.cfg
        if narrowed:
            h.cfg = dataclasses.replace(
                h.cfg, sync=dataclasses.replace(h.cfg.sync, exclude=NARROWED)
            )
        h.api.max_retries = 0  # a fault fails the poll at once: the loop's retry is the next poll
        # Small batches: windows drain in several batches, applied side by side.
        h.batch_size = rng.choice([1, 3, 10, 1000])
        h.new_stream()
        await reset_database(h.db)
        await enable_history(h.db, HISTORY)
        user = User(emu, h.user, rng)
        for _ in range(rng.randrange(0, 4) + (6 if with_resync else 0)):
            await user.act()
        if not with_resync:
            emu.reset(seed + 1)  # objects made before the cursor only reach a mirror by resync
        await h.stream.take_cursor()
        async with anyio.create_task_group() as tg:
            if with_resync:
                tg.start_soon(resync_until_done, h)
            frozen = await random_steps(h, emu, user, rng, mode)
            await refuse_writes(h.db, None)  # the resync alongside can finish now
            emu.faults.clear()  # and slow answers end
        # Quiesce: faults gone, writes allowed, every event visible, time moving, poisoned
        # objects given a good version; then the stream catches up.
        emu.faults.clear()
        await refuse_writes(h.db, None)
        await user.mend()
        if frozen:
            emu.clock.advance(1)
            emu.clock.unfreeze()
        emu.set_burst(False)
        if emu.state.ever_late:
            emu.clear_late_visibility()
            await anyio.sleep(0.16)
        if h.cfg is not full_cfg:
            await widen(h, full_cfg)
        h.new_stream()
        await h.stream.sweep()
        await h.stream.poll_head()
        await settle_overlaps(h)
        # Stripe sends no event when a checkout session is created (only on completion or
        # expiry): an open session reaches the mirror with the next full resync.
        open_ids = {s["id"] for s in live(emu, "checkout.session", status="open")}
        problems = [
            p
            for p in await differences(emu, h.db, COMPARED)
            if not (
                p.startswith("checkout_sessions ")
                and p.split()[1].rstrip(":") in open_ids
                and p.endswith(": missing")
            )
        ]
        assert problems == [], (
            f"seed {seed} ({mode}, resync {with_resync}, narrowed {narrowed}): {problems}"
        )
        await assert_ledger_complete(h.db, emu, seed, ignored_ok=narrowed)
        await assert_quarantine_resolved(h.db, emu, seed)
        await assert_history_replays(h.db, HISTORY, label=f"seed {seed}")


async def widen(h: Harness, full_cfg: Any) -> None:
    """A restart with the narrowed types selected again: they are backfilled (the daemon's
    ResyncLoop resyncs the types no finished resync covered) and streamed from then on."""
    h.cfg = full_cfg
    h.new_stream()
    chosen = Resync(h.cfg, h.db, h.api, h.writer).mirrored_tables()
    await resync_until_done(h, backfill_of(NARROWED, chosen))


async def resync_until_done(h: Harness, tables: list[str] | None = None) -> None:
    resync = Resync(h.cfg, h.db, h.api, h.writer)
    while True:
        try:
            await resync.run(tables, reason="first_start" if tables is None else "selection")
            return
        except SyncdError as exc:
            assert exc.retryable, exc  # a fault: the daemon's resync loop runs it again
            await anyio.sleep(0.05)


async def random_steps(
    h: Harness, emu: Emulator, user: User, rng: random.Random, mode: str
) -> bool:
    """The scenario's random walk; returns whether the clock is left frozen."""
    frozen = False
    for _ in range(rng.randrange(8, 20)):
        step = rng.choices(
            [
                "mutate",
                "poll",
                "sweep",
                "crash",
                "restart",
                "burst",
                "late",
                "fault",
                "refuse",
                "slow",
                "race",
                "long_stop",
            ],
            [6, 4, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1],
        )[0]
        if frozen and mode == "snapshot" and step in ("poll", "sweep", "crash", "race"):
            # A real burst ends within its second: Stripe's clock never stands still while we
            # fetch (ours would run ahead of a frozen one and misorder snapshots against fetches).
            emu.clock.advance(1 + rng.random())
            emu.clock.unfreeze()
            frozen = False
        if step == "mutate":
            for _ in range(rng.randrange(1, 5)):
                await user.act()
        elif step in ("poll", "sweep"):
            await step_safely(h.stream.poll_head() if step == "poll" else h.stream.sweep())
        elif step == "crash":
            # kill -9 in process: the poll stops at a random await, the stream is rebuilt
            # from the database alone.
            with anyio.move_on_after(rng.uniform(0, 0.04)):
                await step_safely(h.stream.poll_head())
            h.new_stream()
        elif step == "restart":
            h.new_stream()
        elif step == "slow":
            # Stripe reads the state now and answers later: longer than the poll interval,
            # varying, list pages of a resync alongside included.
            emu.faults.set(
                pattern=rng.choice(["GET /v1/*", "GET /v1/customers*", "GET /v1/subscriptions*"]),
                after_ms=rng.uniform(200, 1500),
                times=rng.randrange(1, 6),
            )
        elif step == "race":
            # A poll (its refetches) racing the account's changes.
            async with anyio.create_task_group() as tg:
                tg.start_soon(step_safely, h.stream.poll_head())
                for _ in range(rng.randrange(1, 4)):
                    await anyio.sleep(rng.uniform(0, 0.05))
                    await user.act()
        elif step == "long_stop" and not frozen:
            # Changes whose events become visible late; a poll moves the cursor past them
            # before they are visible; the daemon stops for longer than `events.overlap` and
            # starts again (which sweeps first, from the cursor).
            emu.set_burst(False)  # a burst ends within its second, never an hour later
            late_before = emu.state.late_visibility
            if late_before is None:
                emu.set_late_visibility(100, 200)
            for _ in range(rng.randrange(1, 3)):
                await user.act()
            await step_safely(h.stream.poll_head())
            emu.clock.advance(OVERLAP + rng.uniform(1, 600))
            await anyio.sleep(0.25)  # every event visible by now
            if late_before is None:
                emu.clear_late_visibility()
            h.new_stream()
            await step_safely(h.stream.sweep())
        elif step == "burst":
            if frozen:
                emu.clock.advance(1 + rng.random())  # time moves past the burst's second
                emu.clock.unfreeze()
                frozen = False
            elif mode == "refetch" and rng.random() < 0.5:
                # Events pinned to one second while time moves on: snapshot ordering by
                # `created` cannot hold here, refetching must.
                emu.set_burst(emu.state.burst_created is None)
            else:
                emu.clock.freeze()
                frozen = True
        elif step == "late":
            if emu.state.late_visibility is None:
                emu.set_late_visibility(0, 150)
            else:
                emu.clear_late_visibility()
        elif step == "refuse":
            # The server refuses writes to one mirror table for a while (as after a privilege
            # change): polls fail and retry, nothing is recorded as done meanwhile.
            await refuse_writes(h.db, rng.choice(["customers", "products", "prices", None]))
        elif step == "fault":
            emu.faults.set(
                pattern="GET /v1/*",
                status=rng.choice([429, 500]),
                error_rate=rng.choice([0.3, 1.0]),
                times=rng.randrange(1, 4),
            )
    return frozen


async def step_safely(step: Any) -> None:
    try:
        await step
    except SyncdError as exc:
        # A fault that outlived the retries: the daemon's loop backs off and polls again.
        assert exc.retryable, exc


async def assert_quarantine_resolved(db: Database, emu: Emulator, seed: int) -> None:
    """Every quarantined object got a good version stored, or no longer exists in Stripe."""
    rows = await db.run(
        lambda c: c.fetch("SELECT object_id FROM syncd.rejected_objects WHERE resolved_at IS NULL"),
        transaction=False,
    )
    alive = {c["id"] for c in live(emu, "customer")}
    assert {r["object_id"] for r in rows} & alive == set(), f"seed {seed}: left in quarantine"


@pytest.mark.parametrize("chunk", range(CHUNKS))
async def test_random_scenarios_converge(db_url: str, emulator: Emulator, chunk: int) -> None:
    per_chunk = -(-SCENARIOS // CHUNKS)
    start = FIRST_SEED + chunk * per_chunk
    for seed in range(start, start + per_chunk):
        try:
            await run_scenario(db_url, emulator, seed)
        except Exception as exc:
            replay = (
                f"SYNCD_CONVERGENCE_SCENARIOS=1 SYNCD_CONVERGENCE_SEED={seed} .venv/bin/pytest"
                " 'tests/test_convergence.py::test_random_scenarios_converge[0]'"
            )
            raise AssertionError(f"seed {seed} failed; replay it with:\n{replay}") from exc


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("seed", [7, 8])
async def test_daemon_killed_with_sigkill_converges(
    db_url: str, emulator: Emulator, seed: int
) -> None:
    rng = random.Random(seed)
    env = daemon_env(db_url, emulator)
    async with harness(db_url, emulator) as h:
        user = User(emulator, h.user, rng)
        proc = start_daemon(env)
        try:
            for _ in range(4):
                for _ in range(rng.randrange(3, 10)):
                    await user.act()
                    await anyio.sleep(rng.uniform(0, 0.05))
                await anyio.sleep(rng.uniform(0.1, 1.5))  # somewhere mid-poll, mid-apply
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                proc = start_daemon(env)
            await user.mend()  # poisoned versions get a good one: then the mirror can converge
            deadline = time.monotonic() + 120
            problems: list[str] = ["not checked"]
            while problems and time.monotonic() < deadline:
                await anyio.sleep(0.5)
                problems = await differences(emulator, h.db, COMPARED)
            # The last daemon must still run (a crash would explain a mirror left behind).
            assert proc.poll() is None, f"the daemon exited with {proc.returncode}"
            assert problems == []
            with anyio.fail_after(10):
                while True:  # the last events' ledger rows commit with their writes
                    try:
                        await assert_ledger_complete(h.db, emulator, seed)
                        break
                    except AssertionError:
                        await anyio.sleep(0.3)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await anyio.to_thread.run_sync(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
