"""sql/roles.sql: a non-superuser writer runs syncd (migrations, writes, row-level security) and a
read-only role reads the views and the mirror, nothing else."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from syncd import appschema, migrations
from syncd.db import Database, sql_dir
from syncd.errors import DatabaseError
from syncd.registry import BY_TABLE
from syncd.versions import Version
from syncd.writer import Writer
from tests.conftest import make_config
from tests.support.views import SUPABASE

APP_LOGIN = "syncd_test_app"


def as_user(dsn: str, user: str) -> str:
    parts = urlsplit(dsn)
    netloc = f"{user}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def customer(cid: str, user: str, version: int) -> dict[str, object]:
    return {
        "id": cid,
        "object": "customer",
        "created": 1700000000 + version,
        "email": f"{cid}@example.com",
        "metadata": {"supabase_user_id": user},
    }


async def test_writer_and_reader_roles(empty_db_url: str) -> None:
    admin = await asyncpg.connect(empty_db_url)
    try:
        await admin.execute((sql_dir() / "roles.sql").read_text())
        await admin.execute(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_LOGIN}')"
            f" THEN CREATE ROLE {APP_LOGIN} LOGIN; END IF; END $$;"
            f" GRANT syncd_reader TO {APP_LOGIN}"
        )
        su = await admin.fetchval(
            "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = 'syncd_writer'"
        )
        assert su is False
    finally:
        await admin.close()

    writer_cfg = make_config(as_user(empty_db_url, "syncd_writer"))
    async with Database.connect(writer_cfg.database, min_size=1) as db:
        assert await migrations.migrate(db)
        writer = Writer(db)
        await db.transact(
            lambda c: writer.upsert(
                c,
                BY_TABLE["customers"],
                [customer("cus_a", "user-a", 1)],
                version=Version.at(1),
                api_version=None,
            )
        )

    reader_cfg = make_config(as_user(empty_db_url, APP_LOGIN))
    async with Database.connect(reader_cfg.database, min_size=1) as reader:
        got = await reader.run(
            lambda c: c.fetch("SELECT id, stripe_customer_id FROM billing.customers"),
            transaction=False,
        )
        assert [tuple(r) for r in got] == [("user-a", "cus_a")]
        raw = await reader.run(lambda c: c.fetchval("SELECT count(*) FROM stripe.customers"))
        assert raw == 1
        for sql in (
            "INSERT INTO stripe.customers (id, raw, fetched_at) VALUES ('x', '{}', now())",
            "UPDATE stripe.customers SET raw = '{}'",
            "SELECT * FROM syncd.schema_migrations",
            "CREATE TABLE billing.mine (x int)",
        ):
            with pytest.raises(DatabaseError, match="42501"):
                await reader.run(lambda c, s=sql: c.execute(s))

    # Supabase: the writer installs the policies (owner) and keeps writing under them.
    admin = await asyncpg.connect(empty_db_url)
    try:
        await admin.execute(SUPABASE)
        await admin.execute("GRANT USAGE ON SCHEMA auth TO syncd_writer")
    finally:
        await admin.close()
    async with Database.connect(writer_cfg.database, min_size=1) as db:
        assert await appschema.apply_row_level_security(db, writer_cfg) == "installed"
        writer = Writer(db)
        await db.transact(
            lambda c: writer.upsert(
                c,
                BY_TABLE["customers"],
                [customer("cus_a", "user-a2", 2), customer("cus_b", "user-b", 2)],
                version=Version.at(2),
                api_version=None,
            )
        )
        ids = await db.run(
            lambda c: c.fetch("SELECT id FROM billing.customers ORDER BY id"), transaction=False
        )
        assert [r["id"] for r in ids] == ["user-a2", "user-b"]
