"""Helpers shared by the daemon tests: `syncd run` as a subprocess against an emulator, and a
private PostgreSQL server a test may stop and start under it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from syncd import migrations
from syncd.config import PINNED_API_VERSION, DatabaseConfig
from syncd.db import Database
from syncd.emulator import Emulator
from syncd.pgserver import LocalPostgres
from tests.conftest import ROOT, TEST_API_KEY, PgServer


def daemon_env(db_url: str, emu: Emulator) -> dict[str, str]:
    return {
        "SYNCD_DATABASE_URL": db_url,
        "SYNCD_STRIPE_API_KEY": TEST_API_KEY,
        "SYNCD_STRIPE_API_BASE": emu.url,
        "SYNCD_STRIPE_RATE_LIMIT": "500",
        "SYNCD_STRIPE_API_VERSION": PINNED_API_VERSION,
        "SYNCD_EVENTS_POLL_INTERVAL": "0.2",
        "SYNCD_EVENTS_OVERLAP_INTERVAL": "2",
        "SYNCD_HTTP_ENABLED": "false",
        "SYNCD_DAEMON_LEADER_ELECTION": "false",
        "SYNCD_LOG_FORMAT": "json",
        "PATH": os.environ.get("PATH", ""),
    }


def start_daemon(env: dict[str, str]) -> subprocess.Popen[bytes]:
    # TEST_DAEMON_LOG=path: the daemons' logs, appended there (debugging a test).
    log_path = os.environ.get("TEST_DAEMON_LOG")
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND) if log_path else None
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "syncd", "run"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL if out is None else out,
            stderr=subprocess.DEVNULL if out is None else out,
        )
    finally:
        if out is not None:
            os.close(out)  # the child has its own copy


@asynccontextmanager
async def daemon(env: dict[str, str]) -> AsyncIterator[subprocess.Popen[bytes]]:
    proc = start_daemon(env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await anyio.to_thread.run_sync(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
async def own_server_url(pg_server: PgServer) -> AsyncIterator[tuple[str, LocalPostgres]]:
    """A private PostgreSQL server (migrated database) that this test may stop and start."""
    if pg_server.local is None:
        pytest.skip("PostgreSQL is external: it cannot be restarted from here")
    local = LocalPostgres(pg_server.local.bindir)
    await anyio.to_thread.run_sync(local.init)
    await anyio.to_thread.run_sync(local.start)
    try:
        async with Database.connect(DatabaseConfig(url=local.dsn), min_size=1) as db:
            await migrations.migrate(db)
        yield local.dsn, local
    finally:
        await anyio.to_thread.run_sync(local.destroy)
