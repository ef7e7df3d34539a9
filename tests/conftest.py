"""Test harness: a real PostgreSQL (never a mock) and a fresh database per test.

The server comes from SYNCD_TEST_DATABASE_URL, else a Docker engine, else the local server
binaries (see syncd.pgserver). A template database is migrated once per session; each test gets
its own copy (CREATE DATABASE ... TEMPLATE), which takes milliseconds.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from syncd import migrations
from syncd.config import Config, DatabaseConfig, StripeConfig, load_config
from syncd.db import Database
from syncd.emulator import Emulator
from syncd.pgserver import LocalPostgres, throwaway_postgres

# Helpers shared by the test files live in tests/support (a test file never imports another);
# their asserts are rewritten like the tests'. The fixtures among them are plugins, so a test
# requests them by name without importing them.
pytest.register_assert_rewrite("tests.support")
pytest_plugins = ("tests.support.daemon", "tests.support.views")

ROOT = Path(__file__).resolve().parent.parent
TEST_API_KEY = "sk_test_syncdtests0000000000000000"


def with_db(dsn: str, dbname: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{dbname}"


@dataclasses.dataclass
class PgServer:
    admin_dsn: str
    local: LocalPostgres | None


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    external = os.environ.get("SYNCD_TEST_DATABASE_URL")
    if external:
        yield PgServer(external, None)
        return
    with throwaway_postgres() as (dsn, local):
        yield PgServer(dsn, local)


@pytest.fixture(scope="session")
async def template_db(pg_server: PgServer) -> AsyncIterator[str]:
    name = f"syncd_template_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_server.admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    cfg = DatabaseConfig(url=with_db(pg_server.admin_dsn, name))
    async with Database.connect(cfg, min_size=1) as db:
        await migrations.migrate(db)
    yield name
    # A fresh connection: a test may have restarted the server (readiness tests) meanwhile.
    await drop_database(pg_server, name)


async def create_database(pg_server: PgServer, template: str | None) -> str:
    name = f"syncd_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg_server.admin_dsn)
    try:
        clause = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await admin.close()
    return name


async def drop_database(pg_server: PgServer, name: str) -> None:
    admin = await asyncpg.connect(pg_server.admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def db_url(pg_server: PgServer, template_db: str) -> AsyncIterator[str]:
    """DSN of a fresh, fully migrated database for this test alone."""
    name = await create_database(pg_server, template_db)
    yield with_db(pg_server.admin_dsn, name)
    await drop_database(pg_server, name)


@pytest.fixture
async def empty_db_url(pg_server: PgServer) -> AsyncIterator[str]:
    """DSN of a fresh database with no migrations applied."""
    name = await create_database(pg_server, None)
    yield with_db(pg_server.admin_dsn, name)
    await drop_database(pg_server, name)


def make_config(db_url: str, **sections: dict[str, Any]) -> Config:
    """A Config for tests: the given database, a test key, overrides per section."""
    cfg = load_config(None, {})
    cfg = dataclasses.replace(
        cfg,
        database=DatabaseConfig(url=db_url, pool_min_size=1, pool_max_size=8),
        stripe=StripeConfig(api_key=TEST_API_KEY),
        # Any free port: daemons of parallel test runs must not fight over 9090.
        http=dataclasses.replace(cfg.http, bind="127.0.0.1:0"),
    )
    for section, values in sections.items():
        cfg = dataclasses.replace(
            cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)}
        )
    return cfg


@pytest.fixture
def cfg(db_url: str) -> Config:
    return make_config(db_url)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """A fresh Stripe emulator served from this test's event loop."""
    async with Emulator.running(port=0, seed=1) as emu:
        yield emu


def emulator_config(db_url: str, emu: Emulator, **sections: dict[str, Any]) -> Config:
    """A Config pointing at this database and this emulator (generous rate, fast retries)."""
    stripe_overrides = {"api_base": emu.url, "rate_limit": 1000.0, **sections.pop("stripe", {})}
    cfg = make_config(db_url, **sections)
    return dataclasses.replace(cfg, stripe=dataclasses.replace(cfg.stripe, **stripe_overrides))


@pytest.fixture
async def db(cfg: Config) -> AsyncIterator[Database]:
    async with Database.connect(cfg.database, min_size=1) as database:
        yield database


def syncd_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as a subprocess, as an operator would."""
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SYNCD_", "DATABASE_URL", "STRIPE_"))
    }
    full_env["SYNCD_HTTP_BIND"] = "127.0.0.1:0"  # any free port (parallel test runs)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or ROOT,
        timeout=timeout,
        check=False,
    )


# Fixtures that start or need a PostgreSQL server (every database fixture rests on pg_server).
POSTGRES_FIXTURES = frozenset({"pg_server", "tls_postgres"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "unit: needs no PostgreSQL, set by tests/conftest.py (`make test-unit`)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `unit` every test that needs no PostgreSQL server and is not slow: the fast layer."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if not fixtures & POSTGRES_FIXTURES and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.unit)
