"""Connect through the real daemon (`syncd run` subprocesses) against the emulator's connected
accounts: every account's objects mirrored under its own account_id, changes streamed per
account, an account that connects later picked up, one that disconnects stopped with its rows
kept, and `syncd resync --account`."""

from __future__ import annotations

import subprocess
from typing import Any

import anyio
import asyncpg
import pytest
import stripe

from syncd.emulator import Emulator
from tests.conftest import syncd_cli
from tests.support.daemon import daemon, daemon_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def connect_env(db_url: str, emu: Emulator, **extra: str) -> dict[str, str]:
    return {
        **daemon_env(db_url, emu),
        "SYNCD_STRIPE_ACCOUNTS": "all",
        "SYNCD_STRIPE_ACCOUNTS_REFRESH_INTERVAL": "5",
        "SYNCD_SYNC_EXCLUDE": "payment_methods,tax_ids,active_entitlements",
        "SYNCD_EVENTS_QUIET_POLL_INTERVAL": "2",
        "SYNCD_DAEMON_LEASE_INTERVAL": "0.5",
        **extra,
    }


async def create_customer(emu: Emulator, account: str | None, email: str) -> None:
    """A customer made through the real SDK, acting for `account` (None: the platform)."""
    http = stripe.AIOHTTPClient()
    try:
        sdk = emu.client(stripe_account=account, http_client=http)
        await sdk.v1.customers.create_async({"email": email})
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]


async def wait_for(db_url: str, sql: str, *args: Any, within: float = 60) -> Any:
    conn = await asyncpg.connect(db_url)
    try:
        with anyio.fail_after(within):
            while True:
                value = await conn.fetchval(sql, *args)
                if value:
                    return value
                await anyio.sleep(0.1)
    finally:
        await conn.close()


async def fetch(db_url: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(db_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def live_customers(emu: Emulator, account: str | None) -> set[str]:
    view = emu.account(account) if account else emu
    return {c["id"] for c in view.objects("customer") if not c.get("deleted")}


async def mirrored(db_url: str, account: str) -> set[str]:
    rows = await fetch(
        db_url,
        "SELECT id FROM stripe.customers WHERE account_id = $1 AND deleted_at IS NULL",
        account,
    )
    return {r["id"] for r in rows}


async def converged(db_url: str, emu: Emulator, accounts: dict[str, str | None]) -> None:
    """Each account's live customers are mirrored under its own id, and only those."""
    with anyio.fail_after(60):
        while True:
            ok = True
            for account_id, header in accounts.items():
                if await mirrored(db_url, account_id) != live_customers(emu, header):
                    ok = False
            if ok:
                return
            await anyio.sleep(0.2)


async def test_platform_and_connected_accounts_converge_and_deauthorization_keeps_rows(
    db_url: str, emulator: Emulator
) -> None:
    emu = emulator
    platform = emu.account_id
    emu.seed(customers=5, subscriptions=0, products=2)
    a = emu.create_account()["id"]
    b = emu.create_account(type="express")["id"]
    emu.account(a).seed(customers=7, subscriptions=2, products=2)
    emu.account(b).seed(customers=4, subscriptions=0, products=1)
    accounts = {platform: None, a: a, b: b}
    async with daemon(connect_env(db_url, emu)) as proc:
        await converged(db_url, emu, accounts)
        # Every account has its own cursor and a finished full resync of its own.
        cursors = await fetch(db_url, "SELECT account_id FROM syncd.events_cursor")
        assert {r["account_id"] for r in cursors} == set(accounts)
        await wait_for(
            db_url,
            "SELECT count(DISTINCT account_id) = 3 FROM syncd.resync_runs"
            " WHERE status = 'done' AND tables IS NULL",
        )
        # The application views show each row's account.
        plans = await fetch(db_url, "SELECT DISTINCT account_id FROM billing.pricing_plans")
        with_prices = {
            acct
            for acct, header in accounts.items()
            if (emu.account(header) if header else emu).objects("price")
        }
        assert {r["account_id"] for r in plans} == with_prices
        # Changes in each account stream in under that account.
        await create_customer(emu, a, "new-a@example.com")
        await create_customer(emu, b, "new-b@example.com")
        await create_customer(emu, None, "new-platform@example.com")
        await converged(db_url, emu, accounts)
        # An account that connects later is picked up, resynced and streamed.
        c = emu.create_account()["id"]
        emu.account(c).seed(customers=3, subscriptions=0, products=1)
        accounts[c] = c
        await converged(db_url, emu, accounts)
        # One that disconnects stops being synced; its rows stay, the account marked.
        before = await mirrored(db_url, b)
        emu.deauthorize_account(b)
        await wait_for(
            db_url, "SELECT status = 'deauthorized' FROM syncd.accounts WHERE account_id = $1", b
        )
        assert await mirrored(db_url, b) == before
        await anyio.sleep(1.5)  # its lease is given up within a round
        leased = await fetch(
            db_url, "SELECT leased_by FROM syncd.accounts WHERE account_id = $1", b
        )
        assert leased[0]["leased_by"] is None
        # The others keep streaming.
        await create_customer(emu, a, "after-b@example.com")
        del accounts[b]
        await converged(db_url, emu, accounts)
        # No account's rows hold another's objects.
        for account_id in accounts:
            ids = await mirrored(db_url, account_id)
            for other, other_header in accounts.items():
                if other != account_id:
                    assert not ids & live_customers(emu, other_header)
        assert proc.poll() is None


async def test_resync_one_account_from_the_cli(db_url: str, emulator: Emulator) -> None:
    emu = emulator
    a = emu.create_account()["id"]
    emu.account(a).seed(customers=3, subscriptions=0, products=1)
    env = connect_env(db_url, emu)
    async with daemon(env):
        await wait_for(
            db_url,
            "SELECT count(*) FROM syncd.resync_runs WHERE account_id = $1 AND status = 'done'",
            a,
        )
        done: subprocess.CompletedProcess[str] = await anyio.to_thread.run_sync(
            lambda: syncd_cli(
                "resync",
                "--account",
                a,
                "--type",
                "customers",
                "--wait",
                "--timeout",
                "60",
                env=env,
            )
        )
        assert done.returncode == 0, done.stdout + done.stderr
        runs = await fetch(
            db_url,
            "SELECT account_id, tables FROM syncd.resync_runs WHERE reason = 'cli'",
        )
        assert [(r["account_id"], r["tables"]) for r in runs] == [(a, ["customers"])]
    bad = syncd_cli("resync", "--account", "nope", env=env)
    assert bad.returncode == 2 and "--account" in bad.stderr
