"""A write the server refuses for its own reasons is retried, never recorded as done: the
daemon's role loses INSERT and UPDATE on a mirror table for a while under a stream of changes;
every change arrives once the privilege is back, no event is recorded as ignored, and
meanwhile /readyz answers 503 and `syncd status` exits 1 naming the problem."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest

from syncd.emulator import Emulator
from syncd.pgserver import free_port
from tests.conftest import PgServer, drop_database, syncd_cli, with_db
from tests.support.daemon import daemon, daemon_env
from tests.support.events import converge, harness

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
ROLE = "syncd_runner"


@pytest.fixture
async def own_role_db(pg_server: PgServer) -> AsyncIterator[str]:
    """A database owned by a role that is not a superuser (privileges apply to it)."""
    name = f"syncd_role_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_server.admin_dsn)
    try:
        await admin.execute(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}')"
            f" THEN CREATE ROLE {ROLE} LOGIN; END IF; END $$"
        )
        await admin.execute(f'CREATE DATABASE "{name}" OWNER {ROLE}')
    finally:
        await admin.close()
    base = with_db(pg_server.admin_dsn, name)
    yield base.replace("postgres@", f"{ROLE}@", 1)
    await drop_database(pg_server, name)


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return 0, {}


async def test_lost_privileges_hold_the_cursor_and_lose_nothing(
    own_role_db: str, pg_server: PgServer, emulator: Emulator
) -> None:
    emulator.seed(customers=20, products=2, subscriptions=0)
    port = free_port()
    env = {
        **daemon_env(own_role_db, emulator),
        "SYNCD_HTTP_ENABLED": "true",
        "SYNCD_HTTP_BIND": f"127.0.0.1:{port}",
        "SYNCD_SYNC_INCLUDE": "customers,products,prices",
    }
    admin_url = own_role_db.replace(f"{ROLE}@", "postgres@", 1)
    async with daemon(env) as proc, harness(admin_url, emulator) as h:
        await converge(emulator, h, ("customer", "product", "price"), within=60)
        customers = [c for c in emulator.objects("customer") if not c.get("deleted")]

        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f"REVOKE INSERT, UPDATE ON stripe.customers FROM {ROLE}")
            # A stream of changes while the daemon cannot write them.
            for i, c in enumerate(customers[:10]):
                await h.user.post(f"/v1/customers/{c['id']}", {"name": f"while revoked {i}"})
            await h.user.post("/v1/customers", {"email": "new-while-revoked@example.com"})
            with anyio.fail_after(60):
                while True:
                    status, body = readyz(port)
                    if status == 503 and "events_write" in body.get("checks", {}):
                        break
                    await anyio.sleep(0.3)
            # `syncd status` says so, from the database alone, and exits 1.
            out = syncd_cli("status", "--json", env={"SYNCD_DATABASE_URL": admin_url}, timeout=60)
            assert out.returncode == 1, out.stdout + out.stderr
            assert any("events_write" in p for p in json.loads(out.stdout)["problems"])
            await anyio.sleep(2)  # more failed rounds: still nothing recorded as done
            await admin.execute(f"GRANT INSERT, UPDATE ON stripe.customers TO {ROLE}")
        finally:
            await admin.close()

        await converge(emulator, h, ("customer", "product", "price"), within=60)
        with anyio.fail_after(30):
            while readyz(port)[0] != 200:  # noqa: ASYNC110 (polling another process)
                await anyio.sleep(0.3)
        ignored = await h.db.run(
            lambda c: c.fetch(
                "SELECT event_id, reason FROM syncd.events_ledger WHERE outcome <> 'applied'"
            ),
            transaction=False,
        )
        assert [dict(r) for r in ignored] == []
        assert proc.poll() is None
