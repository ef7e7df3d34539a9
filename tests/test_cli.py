"""The CLI as an operator meets it: `run`, `check` and failures, as real subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import asyncpg
import orjson

from syncd.pgserver import free_port
from tests.conftest import ROOT, TEST_API_KEY, syncd_cli


def start_daemon(env: dict[str, str]) -> subprocess.Popen[str]:
    full = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SYNCD_", "DATABASE_URL", "STRIPE_"))
    }
    full.update({"SYNCD_LOG_FORMAT": "json", "SYNCD_HTTP_ENABLED": "false", **env})
    return subprocess.Popen(
        [sys.executable, "-m", "syncd", "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full,
        cwd=ROOT,
    )


def wait_for_line(
    proc: subprocess.Popen[str], event: str, timeout: float = 30
) -> dict[str, object]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        record = orjson.loads(line)
        if record.get("event") == event:
            return dict(record)
    raise AssertionError(f"no {event!r} line; stderr: {proc.stderr.read() if proc.stderr else ''}")


def test_help_lists_commands() -> None:
    result = syncd_cli("--help")
    assert result.returncode == 0
    for command in ("run", "migrate", "config", "check"):
        assert command in result.stdout


async def test_run_migrates_logs_redacted_config_and_stops_on_sigterm(empty_db_url: str) -> None:
    dsn = empty_db_url.replace("postgres@", "postgres:topsecretpw@")
    proc = start_daemon(
        {
            "DATABASE_URL": dsn,
            "STRIPE_API_KEY": TEST_API_KEY,
            "SYNCD_DAEMON_HEARTBEAT_INTERVAL": "0.2",
            # This daemon only heartbeats; later loops are switched off here.
            "SYNCD_EVENTS_ENABLED": "false",
            "SYNCD_USAGE_ENABLED": "false",
            "SYNCD_SYNC_RESYNC_ON_EMPTY": "false",
        }
    )
    try:
        started = wait_for_line(proc, "daemon_started")
        assert started["migrations_applied"] >= 1  # type: ignore[operator]
        text = orjson.dumps(started).decode()
        assert "topsecretpw" not in text and TEST_API_KEY not in text
        conn = await asyncpg.connect(empty_db_url)
        try:
            for _ in range(50):
                beats = await conn.fetchval(
                    "SELECT count(*) FROM syncd.instances WHERE role = 'leader'"
                )
                if beats:
                    break
                await asyncio.sleep(0.1)
            assert beats == 1
        finally:
            await conn.close()
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert time.monotonic() - sent < 10
        assert "topsecretpw" not in out + err and TEST_API_KEY not in out + err
        assert '"daemon_stopped"' in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_unreachable_database_names_host_not_password() -> None:
    port = free_port()
    env = {
        "DATABASE_URL": f"postgresql://app:hunter2@127.0.0.1:{port}/app",
        "STRIPE_API_KEY": TEST_API_KEY,
    }
    for command in ("migrate", "run"):
        result = syncd_cli(command, env={**env, "SYNCD_DATABASE_CONNECT_TIMEOUT": "3"})
        assert result.returncode == 1, result.stderr
        assert f"127.0.0.1:{port}" in result.stderr
        assert "hunter2" not in result.stderr + result.stdout


def test_run_without_api_key_exits_2(empty_db_url: str) -> None:
    result = syncd_cli("run", env={"DATABASE_URL": empty_db_url})
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "syncd: error: stripe.api_key: not set (set STRIPE_API_KEY or stripe.api_key)"
    )


def test_check_reports_each_problem_on_one_line(empty_db_url: str) -> None:
    port = free_port()
    env = {
        "DATABASE_URL": empty_db_url,
        "STRIPE_API_KEY": TEST_API_KEY,
        "SYNCD_STRIPE_API_BASE": f"http://127.0.0.1:{port}",
        "SYNCD_STRIPE_MAX_RETRIES": "0",
    }
    result = syncd_cli("check", env=env)
    assert result.returncode == 1
    fails = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 2, result.stdout
    assert "migration(s) pending" in fails[0]
    assert f"127.0.0.1:{port}" in fails[1]
    assert TEST_API_KEY not in result.stdout
