"""What the benchmarks share: the emulator in a process of its own and its control API, the
PostgreSQL server they measure, and the CPU time and memory of processes.

Imported as `bench._common`: the scripts run from the repository root with `PYTHONPATH=.` (or
put the root on sys.path themselves).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from syncd.pgserver import LocalPostgres, free_port, throwaway_postgres

ROOT = Path(__file__).resolve().parent.parent


# --- the emulator -------------------------------------------------------------------------------


def control(url: str, path: str, body: object | None = None, method: str | None = None) -> Any:
    """A call to the emulator's control API: `body` as JSON (a POST; without a body a GET,
    unless `method` says otherwise); its JSON answer ({} when empty)."""
    req = urllib.request.Request(
        url + path,
        data=None if body is None else orjson.dumps(body),
        headers={"Content-Type": "application/json"},
        method=method,
    )
    with urllib.request.urlopen(req, timeout=900) as r:
        answer = r.read()
    return orjson.loads(answer) if answer else {}


@contextmanager
def emulator(
    *flags: str,
    api_key: str | None = None,
    env: Mapping[str, str] | None = None,
    command: Sequence[str] = ("-m", "syncd", "emulator"),
    wait_s: float = 120.0,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`python -m syncd emulator` (or `command`) on a free loopback port, with `flags` (`--seed`),
    `--api-key` and `env` on top of this process's environment: (the process, its URL), once
    `/_emulator/stats` answers (within `wait_s`); terminated on the way out."""
    port = free_port()
    args = [sys.executable, *command, "--port", str(port), *flags]
    if api_key is not None:
        args += ["--api-key", api_key]
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                urllib.request.urlopen(url + "/_emulator/stats", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the emulator did not start") from None
                time.sleep(0.05)
        yield proc, url
    finally:
        proc.terminate()
        proc.wait(10)


def seed_for_resync(url: str, args: argparse.Namespace) -> None:
    """Seed `args.customers` customers, `args.subscriptions` subscriptions and `args.products`
    products (printing how long that took), then delay every answer by `args.latency_ms`: the
    set-up of bench/resync_bench.py and bench/compare_sync_engine.py."""
    started = time.monotonic()
    seed = {
        "customers": args.customers,
        "subscriptions": args.subscriptions,
        "products": args.products,
    }
    control(url, "/_emulator/seed", seed)
    print(f"emulator seeded {seed} in {time.monotonic() - started:.1f}s", flush=True)
    if args.latency_ms:
        control(url, "/_emulator/faults", {"latency_ms": args.latency_ms})


# --- PostgreSQL ---------------------------------------------------------------------------------


def postmaster_pid(server: LocalPostgres | None) -> int:
    """The pid of a throwaway server's postmaster; 0 when there is none (a container)."""
    if server is None:
        return 0
    return int((server.data / "postmaster.pid").read_text().split()[0])


@contextmanager
def database() -> Iterator[tuple[str, int]]:
    """SYNCD_BENCH_DATABASE_URL, else a throwaway server: a DSN and the postmaster's pid (0 when
    unknown: no CPU figures)."""
    if os.environ.get("SYNCD_BENCH_DATABASE_URL"):
        yield os.environ["SYNCD_BENCH_DATABASE_URL"], 0
        return
    with throwaway_postgres(prefer_local=True) as (dsn, local):
        yield dsn, postmaster_pid(local)


@asynccontextmanager
async def scratch_database(admin_dsn: str, prefix: str) -> AsyncIterator[str]:
    """A database of its own (`prefix` and 8 hex digits) on the server of `admin_dsn`: its DSN;
    dropped on the way out."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def copy_usage_rows(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """(customer_id, metric, quantity, timestamp) rows into billing.usage_records with COPY,
    then vacuumed and analyzed."""
    await conn.copy_records_to_table(
        "usage_records",
        schema_name="billing",
        records=rows,
        columns=["customer_id", "metric", "quantity", "timestamp"],
    )
    await conn.execute("VACUUM ANALYZE billing.usage_records")


# --- CPU time -----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> float:
    """CPU of a process and its live children (the PostgreSQL server and its backends)."""
    total = cpu_seconds(root)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == root:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_kb(pid: int) -> int:
    """Resident memory of one process in kB (VmRSS, from /proc); 0 when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def self_cpu() -> float:
    """utime + stime of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
