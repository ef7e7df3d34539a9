"""Connect leases on real replicas (`syncd run` subprocesses, SYNCD_STRIPE_ACCOUNTS=all, leader
election on): pg_locks sampled every 50 ms for the whole test from a connection of its own, and
every write made for an account logged by a trigger with the replica that made it.

One walk through a replica's life: three replicas share 30 accounts (the platform and 29
connected) 10 each, every account synced; `kill -9` of the leader hands its accounts to the two
survivors within 10 s (15 each) and the changes made in them after the kill are mirrored; a
survivor whose lock session the server ends stops and leases again; a replica that joins gets
its 10; one stopped with SIGTERM releases its accounts and the others take them at once.
Throughout: no account lock held by two sessions, and no replica writing (mirror rows, events
cursor, ledger, poll record) for an account whose lock it does not hold.

Then the platform's own account leased by a standby rather than the leader: its events about
connected accounts must work there too (they do not yet: see the test's message)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import asyncpg
import pytest

from syncd.config import DatabaseConfig
from syncd.db import Database
from syncd.emulator import Emulator
from tests.support.connect import (
    ACCOUNT_CLASS,
    Fleet,
    LockSampler,
    Mutator,
    Sample,
    balanced,
    converge,
    double_holds,
    int4,
    record_writes,
    shares,
    unleased_writes,
    wait_log,
    wait_value,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CONNECTED = 29  # with the platform, 30 accounts: 10 per replica of three, 15 per replica of two
HANDOVER_LIMIT = 10.0


async def leader_name(db_url: str, fleet: Fleet) -> str:
    conn = await asyncpg.connect(db_url)
    try:
        pid = await conn.fetchval(
            "SELECT pid FROM syncd.instances WHERE role = 'leader' AND stopped_at IS NULL"
        )
    finally:
        await conn.close()
    return fleet.by_pid()[pid]


async def leased_by(db_url: str, fleet: Fleet) -> dict[str, str | None]:
    """{state}.accounts.leased_by of every account, as replica names."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT a.account_id, i.pid FROM syncd.accounts a"
            " LEFT JOIN syncd.instances i ON i.instance_id = a.leased_by"
        )
    finally:
        await conn.close()
    names = fleet.by_pid()
    return {r["account_id"]: names.get(r["pid"]) for r in rows}


async def test_leases_are_exclusive_balanced_and_handed_over(
    tmp_path: Path, db_url: str, emulator: Emulator
) -> None:
    emu = emulator
    emu.seed(customers=2, products=1, subscriptions=0)
    connected = []
    for _ in range(CONNECTED):
        account = emu.create_account()["id"]
        emu.account(account).seed(customers=2, products=1, subscriptions=1)
        connected.append(account)
    accounts = {emu.account_id, *connected}
    keys = {int4(a): a for a in accounts}
    assert len(keys) == len(accounts), "two accounts share a lock key: pick other ids"
    tables = await record_writes(db_url)
    assert "customers" in tables

    sampler = LockSampler(db_url)
    sampler.start()
    fleet = Fleet(db_url, emu, tmp_path)
    mutator = Mutator(emu, random.Random(17))

    def holders(s: Sample) -> dict[str, list[str]]:
        return sampler.holders(s, fleet.by_pid(), keys)

    def describe(s: Sample) -> str:
        h = holders(s)
        missing = sorted(accounts - set(h))
        return (
            f"shares {dict(shares(sampler, s, fleet.by_pid(), keys))},"
            f" unheld {len(missing)}, double {[a for a, o in h.items() if len(o) > 1]}"
        )

    async def wait_balanced(replicas: set[str], within: float, after: float = 0.0) -> Sample:
        return await sampler.wait(
            lambda s: balanced(sampler, s, fleet.by_pid(), keys, accounts, replicas),
            within=within,
            stable=1.5,  # three lease rounds without a change
            after=after,
            what=f"balanced over {sorted(replicas)}",
            describe=describe,
            fleet=fleet,
        )

    async def wait_held_by(replicas: set[str], after: float, within: float) -> Sample:
        """The first sample after `after` in which `replicas` hold every account, once each."""
        return await sampler.wait(
            lambda s: (
                (h := holders(s)).keys() == accounts
                and all(len(o) == 1 and o[0] in replicas for o in h.values())
            ),
            within=within,
            after=after,
            what=f"every account held by {sorted(replicas)}",
            describe=describe,
            fleet=fleet,
        )

    def held(s: Sample, name: str) -> set[str]:
        return {a for a, o in holders(s).items() if name in o}

    timings: dict[str, float] = {}
    try:
        async with Database.connect(DatabaseConfig(url=db_url), min_size=1) as db:
            # Three replicas: 10 accounts each, every account synced under its own id.
            started = time.monotonic()
            for name in ("r1", "r2", "r3"):
                fleet.start(name)
            s = await wait_balanced({"r1", "r2", "r3"}, within=90)
            timings["balanced at start"] = s.mono - started
            print("three replicas:", describe(s))
            assert sorted(shares(sampler, s, fleet.by_pid(), keys).values()) == [10, 10, 10]
            await converge(emu, db, accounts, within=60, fleet=fleet)
            for account in sorted(accounts):
                await mutator.new_customer(account)
            await converge(emu, db, accounts, within=30, fleet=fleet)

            # kill -9 of the leader: the survivors hold every account within 10 s, 15 each,
            # and what changed in the dead replica's accounts after the kill is mirrored.
            victim = fleet.replicas[await leader_name(db_url, fleet)]
            orphans = held(sampler.samples[-1], victim.name)
            assert len(orphans) == 10, describe(sampler.samples[-1])
            survivors = {"r1", "r2", "r3"} - {victim.name}
            killed_at = time.monotonic()
            await victim.kill()
            for account in sorted(orphans):
                await mutator.new_customer(account)
                await mutator.act(account)
            s = await wait_held_by(survivors, killed_at, within=30)
            timings["handover after kill -9"] = s.mono - killed_at
            print(
                f"kill -9 of {victim.name} (leader): its {len(orphans)} accounts held by"
                f" {sorted(survivors)} after {s.mono - killed_at:.2f}s"
            )
            assert s.mono - killed_at < HANDOVER_LIMIT, (
                f"handover after kill -9 took {s.mono - killed_at:.2f}s"
            )
            s = await wait_balanced(survivors, within=15)
            print("two replicas:", describe(s))
            assert sorted(shares(sampler, s, fleet.by_pid(), keys).values()) == [15, 15]
            timings["mirrored after kill -9"] = await converge(
                emu, db, accounts, within=30, fleet=fleet
            )

            # The server ends one survivor's lock session (a network cut): it stops its
            # accounts' work at once, leases again, and the two end balanced.
            a, b = sorted(survivors)
            lease_pid = next(
                pid
                for pid in sampler.samples[-1].presence
                if sampler.who(sampler.samples[-1], pid, fleet.by_pid()) == a
            )
            conn = await asyncpg.connect(db_url)
            try:
                assert await conn.fetchval("SELECT pg_terminate_backend($1)", lease_pid)
            finally:
                await conn.close()
            cut_at = time.monotonic()
            s = await wait_balanced(survivors, within=20, after=cut_at + 0.5)
            timings["balanced after a lock session cut"] = s.mono - cut_at
            assert lease_pid not in s.presence, "the lock session cut is still there"
            releases = [
                line
                for line in fleet.replicas[a].log_lines()
                if line.get("event") == "accounts_released"
                and "lease connection" in str(line.get("reason"))
            ]
            assert releases, f"{a} never said it dropped its accounts after its lock session died"
            for account in sorted(accounts):
                await mutator.act(account)
            await converge(emu, db, accounts, within=30, fleet=fleet)

            # A replica joins: the others give up what is above their new share; 10 each.
            joined_at = time.monotonic()
            fleet.start("r4")
            trio = {a, b, "r4"}
            s = await wait_balanced(trio, within=30, after=joined_at)
            timings["rebalanced after a join"] = s.mono - joined_at
            print("after r4 joined:", describe(s))
            assert shares(sampler, s, fleet.by_pid(), keys) == dict.fromkeys(trio, 10)
            for account in sorted(held(s, "r4")):
                await mutator.new_customer(account)
            await converge(emu, db, accounts, within=30, fleet=fleet)

            # SIGTERM: the replica stops its accounts' work, releases them, exits 0; the others
            # take them within a round or two.
            leaving = fleet.replicas[b]
            given_up = held(sampler.samples[-1], b)
            termed_at = time.monotonic()
            assert await leaving.terminate() == 0
            stopped_in = time.monotonic() - termed_at
            s = await wait_held_by(trio - {b}, termed_at, within=HANDOVER_LIMIT)
            timings["handover after SIGTERM"] = s.mono - termed_at
            print(
                f"SIGTERM of {b}: exited after {stopped_in:.2f}s, its {len(given_up)}"
                f" accounts held by the others after {s.mono - termed_at:.2f}s"
            )
            released = sum(
                int(line.get("count", 0))
                for line in leaving.log_lines()
                if line.get("event") == "accounts_released" and line.get("reason") == "stopping"
            )
            assert released == len(given_up), (released, len(given_up))
            s = await wait_balanced(trio - {b}, within=15)
            # `syncd status` tells who leases each account: the lock holder.
            assert await leased_by(db_url, fleet) == {acct: o[0] for acct, o in holders(s).items()}
            for account in sorted(given_up):
                await mutator.act(account)
            await converge(emu, db, accounts, within=30, fleet=fleet)
            fleet.assert_running()
    finally:
        await mutator.close()
        await fleet.close()  # every replica stopped before the last sample
        sampler.stop()

    for what, seconds in timings.items():
        print(f"{what}: {seconds:.2f}s")
    names = fleet.by_pid()
    await sampler.refresh_instances()
    # No sample ever showed an account lock granted twice or held outside a replica's session.
    assert double_holds(sampler, names, keys) == []
    # Every write made for an account came from the replica holding its lock at the time.
    check = await unleased_writes(db_url, sampler, names)
    gap = sampler.max_gap()
    print(
        f"{len(sampler.samples)} lock samples, longest gap {gap * 1000:.0f} ms;"
        f" writes checked {check.checked} {dict(check.by_replica)}, skipped {check.skipped}"
    )
    assert check.violations == [], check.violations[:10]
    assert check.skipped <= check.checked // 20, "too many writes between distant samples"
    assert set(check.by_replica) == {"r1", "r2", "r3", "r4"}, check.by_replica
    # No replica logged an error (an account's work that failed, a traceback). asyncpg's pool
    # says "Resetting connection with an active transaction" (as an error) when the work of an
    # account given up was cancelled inside a transaction: rolled back, so not counted here.
    errors = {
        name: [p for p in problems if "Resetting connection with an active transaction" not in p]
        for name, problems in fleet.problems().items()
    }
    assert {name: p for name, p in errors.items() if p} == {}


async def test_platform_leased_by_a_standby_still_discovers_accounts(
    tmp_path: Path, db_url: str, emulator: Emulator
) -> None:
    """Whichever replica leases the platform's account runs its stream: the platform's
    `account.application.authorized` makes a newly connected account synced within seconds
    there too, not only at the leader's next listing (`accounts_refresh_interval`)."""
    emu = emulator
    platform = emu.account_id
    b = emu.create_account()["id"]
    # Listings rare: an account that connects is found by the platform's events alone.
    fleet = Fleet(db_url, emu, tmp_path, SYNCD_STRIPE_ACCOUNTS_REFRESH_INTERVAL="600")
    sampler = LockSampler(db_url)
    sampler.start()
    keys = {int4(platform): platform, int4(b): b}
    hold = await asyncpg.connect(db_url)
    try:
        async with Database.connect(DatabaseConfig(url=db_url), min_size=1) as db:
            # The test holds the platform's lease lock while r1 leads and takes its share (b);
            # r2, a standby, takes the platform when the test lets go (r1 has its share).
            assert await hold.fetchval(
                "SELECT pg_try_advisory_lock($1, $2)", ACCOUNT_CLASS, int4(platform)
            )
            r1 = fleet.start("r1")
            await wait_log(r1, "leadership_acquired", within=30)
            for _ in range(2):  # r1 takes b alone; b stays with it once r2 is there
                await sampler.wait(
                    lambda s: sampler.holders(s, fleet.by_pid(), keys).get(b) == ["r1"],
                    within=20,
                    stable=1.0,
                    what="r1 holding b",
                    describe=lambda s: str(sampler.holders(s, fleet.by_pid(), keys)),
                    fleet=fleet,
                )
                if "r2" not in fleet.replicas:
                    r2 = fleet.start("r2")
                    for replica in (r1, r2):
                        await wait_log(replica, "lease_replicas", within=30, replicas=2)
            await hold.execute("SELECT pg_advisory_unlock($1, $2)", ACCOUNT_CLASS, int4(platform))
            await sampler.wait(
                lambda s: sampler.holders(s, fleet.by_pid(), keys) == {b: ["r1"], platform: ["r2"]},
                within=10,
                what="the standby r2 holding the platform",
                describe=lambda s: str(sampler.holders(s, fleet.by_pid(), keys)),
                fleet=fleet,
            )
            await converge(emu, db, {platform, b}, within=30, fleet=fleet)

            c = emu.create_account()["id"]
            emu.account(c).seed(customers=2, products=1, subscriptions=0)
            try:
                await wait_value(
                    db,
                    "SELECT status = 'active' FROM syncd.accounts WHERE account_id = $1",
                    c,
                    within=15,
                    what=f"account {c} connected",
                )
            except AssertionError:
                refused = [
                    line.get("error")
                    for line in r2.log_lines()
                    if line.get("event") == "events_batch_refused"
                ]
                raise AssertionError(
                    f"BUG: {c} connected (account.application.authorized on the platform) but"
                    " is not synced 15 s later: the platform's account is leased by r2, a"
                    " standby: its Directory.platform is None (only the leader's refresh sets"
                    " it), so platform_events inserts it with platform NULL; the batch is"
                    " refused and re-applied object by object without on_commit (the account"
                    " events dropped, the cursor past them). It waits for the leader's next"
                    f" listing (accounts_refresh_interval). r2 logged events_batch_refused: {refused}"
                ) from None
            await converge(emu, db, {platform, b, c}, within=30, fleet=fleet)
            refused = [
                line
                for line in fleet.replicas["r2"].log_lines()
                if line.get("event") == "events_batch_refused"
            ]
            assert refused == [], refused
    finally:
        await hold.close()
        await fleet.close()
        sampler.stop()
