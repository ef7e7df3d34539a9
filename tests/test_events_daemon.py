"""The stream inside the daemon: first start (cursor, full resync, streaming with changes made
during the resync), a 31-day gap, and PostgreSQL restarting under the stream."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from syncd.emulator import Emulator
from syncd.lifecycle import Lifecycle
from syncd.pgserver import LocalPostgres
from tests.support.daemon import daemon, daemon_env
from tests.support.events import Harness, assert_ledger_complete, converge, harness

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
TYPES = ("customer", "product", "price")


async def fetchval(h: Harness, sql: str, *args: Any) -> Any:
    return await h.db.run(lambda c: c.fetchval(sql, *args), transaction=False)


async def wait_until(h: Harness, sql: str, within: float, poll: float = 0.1) -> None:
    with anyio.fail_after(within):
        while True:
            if await fetchval(h, sql):
                return
            await anyio.sleep(poll)


async def test_first_start_streams_changes_made_during_the_full_resync(
    db_url: str, emulator: Emulator
) -> None:
    emulator.seed(customers=3000, subscriptions=0, products=20)
    env = {
        **daemon_env(db_url, emulator),
        "SYNCD_STRIPE_RATE_LIMIT": "20",
        # Per-customer child lists would make this resync minutes long at this rate.
        "SYNCD_SYNC_EXCLUDE": "payment_methods,tax_ids,active_entitlements",
    }
    async with harness(db_url, emulator) as h, daemon(env) as proc:
        await wait_until(
            h, "SELECT count(*) FROM syncd.resync_runs WHERE status = 'running'", 30, 0.05
        )
        # During the resync: edit old and new customers, add and delete some.
        customers = [c for c in emulator.objects("customer") if not c.get("deleted")]
        for c in customers[:: len(customers) // 15]:
            await h.user.post(f"/v1/customers/{c['id']}", {"name": "changed during resync"})
        for c in customers[1:4]:
            await h.user.request("DELETE", f"/v1/customers/{c['id']}")
        for i in range(5):
            await h.user.post("/v1/customers", {"email": f"during{i}@example.com"})
        assert await fetchval(
            h, "SELECT count(*) FROM syncd.resync_runs WHERE status = 'running'"
        ), "the resync ended before the changes: make it longer"
        await converge(emulator, h, TYPES, within=90)
        assert proc.poll() is None
        # The cursor was taken before the resync started listing.
        taken = await fetchval(h, "SELECT taken_at FROM syncd.events_cursor")
        started = await fetchval(h, "SELECT min(started_version) FROM syncd.resync_runs")
        assert taken < started


async def test_a_31_day_gap_leads_to_a_full_resync(db_url: str, emulator: Emulator) -> None:
    emulator.seed(customers=30, subscriptions=0, products=5)
    env = daemon_env(db_url, emulator)
    async with harness(db_url, emulator) as h:
        async with daemon(env):
            await converge(emulator, h, TYPES)
        # While the daemon is down: changes whose events will be gone when it returns.
        customers = [c for c in emulator.objects("customer") if not c.get("deleted")]
        for c in customers[:5]:
            await h.user.post(f"/v1/customers/{c['id']}", {"name": "changed in the gap"})
        await h.user.request("DELETE", f"/v1/customers/{customers[6]['id']}")
        await h.user.post("/v1/customers", {"email": "gap@example.com"})
        emulator.clock.advance(31 * 86400)
        async with daemon(env) as proc:
            await converge(emulator, h, TYPES)
            assert proc.poll() is None
            await wait_until(
                h,
                "SELECT count(*) FROM syncd.resync_runs "
                "WHERE reason = 'cursor_expired' AND status = 'done'",
                30,
            )
        reason = await fetchval(h, "SELECT reason FROM syncd.events_cursor")
        assert reason == "cursor_expired"


async def test_postgres_restart_during_streaming(
    emulator: Emulator, own_server_url: tuple[str, LocalPostgres]
) -> None:
    dsn, local = own_server_url
    async with harness(dsn, emulator, poll_interval=0.2) as h:
        await h.stream.take_cursor()
        lifecycle = Lifecycle(1.0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(h.stream.run, lifecycle)
            for i in range(5):
                await h.user.post("/v1/customers", {"email": f"before{i}@example.com"})
            await converge(emulator, h, ("customer",))
            await anyio.to_thread.run_sync(local.stop)
            try:
                customers = emulator.objects("customer")
                for i, c in enumerate(customers):
                    await h.user.post(f"/v1/customers/{c['id']}", {"name": f"while down {i}"})
                await h.user.post("/v1/customers", {"email": "down@example.com"})
                await anyio.sleep(2.5)  # several failed polls, with backoff
            finally:
                await anyio.to_thread.run_sync(local.start)
            await converge(emulator, h, ("customer",), within=60)
            lifecycle.request_stop("test over")
        # Nothing applied twice: every event exactly once in the ledger, with one outcome.
        await assert_ledger_complete(h.db, emulator, 0)


async def test_the_refetch_queue_is_settled_with_the_stream_off(
    db_url: str, emulator: Emulator
) -> None:
    """Resyncs and `syncd verify --repair` queue objects too: with `events.enabled = false` the
    daemon still fetches them again, so none waits for ever (and status does not warn)."""
    emulator.seed(customers=3, subscriptions=0, products=1)
    env = {
        **daemon_env(db_url, emulator),
        "SYNCD_EVENTS_ENABLED": "false",
        "SYNCD_USAGE_ENABLED": "false",
        "SYNCD_SYNC_EXCLUDE": "payment_methods,tax_ids,active_entitlements",
    }
    customer = next(c for c in emulator.objects("customer") if not c.get("deleted"))
    async with harness(db_url, emulator) as h, daemon(env) as proc:
        await wait_until(h, "SELECT count(*) FROM syncd.resync_runs WHERE status = 'done'", 60, 0.1)
        await h.user.post(f"/v1/customers/{customer['id']}", {"name": "changed, no stream"})
        await fetchval(
            h,
            "INSERT INTO syncd.refetch_queue (table_name, object_id, not_before)"
            " VALUES ('customers', $1, now() - interval '1 minute')",
            customer["id"],
        )
        await wait_until(h, "SELECT count(*) = 0 FROM syncd.refetch_queue", 30)
        name = await fetchval(
            h, "SELECT raw->>'name' FROM stripe.customers WHERE id = $1", customer["id"]
        )
        assert name == "changed, no stream"
        assert proc.poll() is None
