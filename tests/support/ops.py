"""Shared by the ops tests: a real `syncd run` in a subprocess, with a test feature that writes
batches the way a feature does (rows plus a cursor in one transaction, slowly), so signals,
grace periods and leadership can be checked against what actually committed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg

from syncd.pgserver import free_port
from tests.conftest import ROOT, TEST_API_KEY

# Run as `python script.py`: `syncd run` with one extra loop ("batches") and signal handlers.
DAEMON_SCRIPT = r"""
import os, signal, sys, time
import anyio
from syncd.config import load_config
from syncd.daemon import run_daemon
from syncd.logs import configure
from syncd.runtime import Runtime

ROWS = int(os.environ.get("TEST_BATCH_ROWS", "5"))
DELAY = float(os.environ.get("TEST_ROW_DELAY", "0.02"))
PAUSE = float(os.environ.get("TEST_PAUSE", "0.05"))

def features(d: Runtime) -> None:
    # Only the test loop: the mechanisms under test (signals, grace, leadership) are the
    # daemon's, independent of which features run (those are tested with the emulator).
    hup = anyio.Event()
    def on_hup() -> None:
        nonlocal hup
        hup.set()
    d.lifecycle.on_signal(signal.SIGHUP, on_hup)

    async def batches() -> None:
        nonlocal hup
        while True:
            if hup.is_set():
                hup = anyio.Event()
                await d.db.run(lambda c: c.execute(
                    "INSERT INTO ops_signals (writer, sig) VALUES ($1, 'SIGHUP')", d.instance_id))
            async def one(conn) -> int:
                n = await conn.fetchval("SELECT n FROM ops_cursor WHERE id = 1 FOR UPDATE")
                print("batch_started", n, flush=True)
                for i in range(1, ROWS + 1):
                    await conn.execute(
                        "INSERT INTO ops_rows (n, writer) VALUES ($1, $2)", n + i, d.instance_id)
                    await conn.execute("SELECT pg_sleep($1)", DELAY)
                await conn.execute("UPDATE ops_cursor SET n = $1 WHERE id = 1", n + ROWS)
                return n + ROWS
            n = await d.db.run(one)
            print("batch_committed", n, flush=True)
            d.state.succeeded("events")
            if not await d.lifecycle.sleep(PAUSE, hup):
                if d.lifecycle.stopping.is_set():
                    return
    d.add_loop("events", batches)

configure("info", "json")
cfg = load_config(None)
sys.exit(anyio.run(run_daemon, cfg, features))
"""

SETUP_SQL = """
CREATE TABLE IF NOT EXISTS ops_rows (n integer PRIMARY KEY, writer text NOT NULL,
                                      at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS ops_cursor (id integer PRIMARY KEY, n integer NOT NULL);
INSERT INTO ops_cursor VALUES (1, 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS ops_signals (writer text, sig text,
                                         at timestamptz NOT NULL DEFAULT clock_timestamp());
"""


async def prepare(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(SETUP_SQL)
    finally:
        await conn.close()


async def consistency(db_url: str) -> tuple[int, int, int]:
    """(cursor, rows, max n): equal when every batch committed whole or not at all."""
    conn = await asyncpg.connect(db_url)
    try:
        cursor = await conn.fetchval("SELECT n FROM ops_cursor WHERE id = 1")
        rows = await conn.fetchval("SELECT count(*) FROM ops_rows")
        top = await conn.fetchval("SELECT coalesce(max(n), 0) FROM ops_rows")
        return cursor, rows, top
    finally:
        await conn.close()


class DaemonProcess:
    """One replica: `syncd run` (plus the test loop) in its own process."""

    def __init__(self, tmp: Path, db_url: str, name: str = "a", real: bool = False, **env: str):
        """`real`: plain `syncd run` with every feature (point SYNCD_STRIPE_API_BASE at an
        emulator); otherwise the daemon with only the test loop."""
        self.port = free_port()
        script = tmp / "ops_daemon.py"
        script.write_text(DAEMON_SCRIPT)
        command = [sys.executable, "-m", "syncd", "run"] if real else [sys.executable, str(script)]
        self.log_path = tmp / f"daemon-{name}.log"
        full_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SYNCD_", "DATABASE_URL", "STRIPE_"))
        }
        full_env.update(
            {
                "PYTHONPATH": str(ROOT),
                "DATABASE_URL": db_url,
                "STRIPE_API_KEY": TEST_API_KEY,
                "SYNCD_STRIPE_API_BASE": "http://127.0.0.1:9",
                "SYNCD_HTTP_BIND": f"127.0.0.1:{self.port}",
                "SYNCD_DAEMON_HEARTBEAT_INTERVAL": "0.5",
                "SYNCD_DAEMON_ELECTION_INTERVAL": "0.5",
                "SYNCD_DATABASE_CONNECT_TIMEOUT": "2",
                "SYNCD_LOG_FORMAT": "json",
                **env,
            }
        )
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            command,
            cwd=tmp,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def wait_for(self, text: str, timeout: float = 20, after: int = 0) -> float:
        """Wait until `text` appears in the output (past offset `after`); returns the time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output()[after:]:
                return time.monotonic()
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not seen in {timeout}s:\n{self.output()[-4000:]}")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def get(self, path: str, timeout: float = 5) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def get_json(self, path: str) -> tuple[int, dict[str, Any]]:
        status, body = self.get(path)
        return status, json.loads(body)

    def wait_http(self, path: str, status: int, timeout: float = 20) -> float:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.get(path, timeout=3)
                if last[0] == status:
                    return time.monotonic()
            except OSError as exc:
                last = exc
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"{path} never answered {status} in {timeout}s (last: {last})")
