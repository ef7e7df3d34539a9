"""Migrations: ordered, locked, checksummed; a fresh install equals an upgrade step by step."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from syncd import migrations
from syncd.config import DatabaseConfig
from syncd.db import Database
from syncd.errors import MigrationError
from tests.conftest import syncd_cli

CATALOG = """
SELECT 'column' AS kind, table_schema || '.' || table_name || '.' || column_name AS name,
       concat_ws(' ', data_type, udt_name, is_nullable, column_default, ordinal_position) AS detail
  FROM information_schema.columns WHERE table_schema = ANY($1)
UNION ALL
SELECT 'constraint', n.nspname || '.' || c.conname, pg_get_constraintdef(c.oid)
  FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = ANY($1)
UNION ALL
SELECT 'index', schemaname || '.' || indexname, indexdef FROM pg_indexes WHERE schemaname = ANY($1)
UNION ALL
SELECT 'view', schemaname || '.' || viewname, definition FROM pg_views WHERE schemaname = ANY($1)
UNION ALL
SELECT 'function', n.nspname || '.' || p.proname, pg_get_functiondef(p.oid)
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = ANY($1)
UNION ALL
SELECT 'trigger', n.nspname || '.' || t.tgname, pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY($1) AND NOT t.tgisinternal
UNION ALL
SELECT 'policy', schemaname || '.' || tablename || '.' || policyname, concat_ws(' ', cmd, qual, with_check)
  FROM pg_policies WHERE schemaname = ANY($1)
UNION ALL
SELECT 'relation', n.nspname || '.' || c.relname, concat_ws(' ', c.relkind, c.relrowsecurity, c.reloptions)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY($1)
ORDER BY 1, 2, 3
"""


async def catalog(dsn: str) -> list[tuple[str, str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(CATALOG, ["stripe", "syncd", "billing"])
        return [(r["kind"], r["name"], r["detail"]) for r in rows]
    finally:
        await conn.close()


async def test_fresh_install_equals_upgrade_through_every_version(
    empty_db_url: str, db_url: str
) -> None:
    fresh = await catalog(db_url)  # the template: every migration in one go
    assert any(kind == "relation" for kind, _, _ in fresh)
    cfg = DatabaseConfig(url=empty_db_url)
    async with Database.connect(cfg, min_size=1) as db:
        for mig in migrations.available():
            applied = await migrations.migrate(db, target=mig.version)
            assert [m.version for m in applied] == [mig.version]
        assert await migrations.pending(db) == []
    assert await catalog(empty_db_url) == fresh


async def test_changed_migration_is_refused(db: Database) -> None:
    await db.execute("record_migration", 0, "tampered", "not-the-checksum")
    first = migrations.available()[0]
    await db.run(
        lambda c: c.execute(
            "UPDATE syncd.schema_migrations SET checksum = 'x' WHERE version = $1", first.version
        )
    )
    with pytest.raises(MigrationError, match=rf"{first.version:04d}_{first.name}.sql was changed"):
        await migrations.migrate(db)


async def test_concurrent_migrations_apply_each_file_once(empty_db_url: str) -> None:
    cfg = DatabaseConfig(url=empty_db_url)
    results: list[list[int]] = []

    async def one() -> None:
        async with Database.connect(cfg, min_size=1) as db:
            results.append([m.version for m in await migrations.migrate(db)])

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(one)
    everything = [m.version for m in migrations.available()]
    assert sorted(results, key=len) == [[], [], everything]
    conn = await asyncpg.connect(empty_db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM syncd.schema_migrations") == len(
            everything
        )
    finally:
        await conn.close()


def test_two_cli_migrates_started_together(empty_db_url: str) -> None:
    import subprocess
    import sys

    env = {"DATABASE_URL": empty_db_url, "SYNCD_LOG_FORMAT": "json"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "syncd", "migrate"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**env, "PATH": "/usr/bin:/bin"},
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    summary = sorted(out.strip().splitlines()[-1] for out, _ in outs)
    assert "nothing to apply" in summary[1] or "nothing to apply" in summary[0]
    result = syncd_cli("migrate", env={"DATABASE_URL": empty_db_url})
    assert "nothing to apply" in result.stdout
