"""Leader takeover time after `kill -9`, with the default election interval (1 s).

    PYTHONPATH=. python bench/takeover_bench.py --rounds 5

Two replicas (`syncd run` plus the test feature loop of tests/support/ops.py, which commits
small batches continuously) share a throwaway PostgreSQL. Each round kills the leader with
SIGKILL and measures the time until the other replica's first committed batch; the killed
replica is restarted and becomes the standby of the next round. Figures go to
docs/operations.md.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from syncd import lifecycle
from syncd.pgserver import throwaway_postgres
from tests.support.ops import DaemonProcess, consistency, prepare


async def _leader(dsn: str) -> str | None:
    conn = await asyncpg.connect(dsn)
    try:
        value: str | None = await conn.fetchval(
            "SELECT instance_id FROM syncd.instances WHERE role = 'leader' AND stopped_at IS NULL "
            "ORDER BY beat_at DESC LIMIT 1"
        )
        return value
    finally:
        await conn.close()


async def _first_row_not_by(dsn: str, writers: set[str], within: float) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if await conn.fetchval(
                "SELECT count(*) FROM ops_rows WHERE writer <> ALL($1::text[])", list(writers)
            ):
                return time.monotonic()
            await asyncio.sleep(0.01)
    finally:
        await conn.close()
    raise RuntimeError(f"no takeover within {within}s")


async def main(rounds: int, interval: float) -> None:
    env = {
        "SYNCD_DAEMON_ELECTION_INTERVAL": str(interval),
        "SYNCD_DAEMON_HEARTBEAT_INTERVAL": "1",
        "TEST_BATCH_ROWS": "3",
        "TEST_ROW_DELAY": "0.01",
    }
    with throwaway_postgres() as (admin, _local):
        conn = await asyncpg.connect(admin)
        await conn.execute("CREATE DATABASE takeover")
        await conn.close()
        dsn = admin.rpartition("/")[0] + "/takeover"
        tmp = Path(tempfile.mkdtemp(prefix="syncd-takeover-"))
        await prepare(dsn)
        replicas = [DaemonProcess(tmp, dsn, "r0", **env)]
        replicas[0].wait_for("batch_committed", timeout=60)
        replicas.append(DaemonProcess(tmp, dsn, "r1", **env))
        replicas[1].wait_for("standing_by", timeout=60)
        times = []
        seen: set[str] = set()
        try:
            for n in range(rounds):
                leader_id = await _leader(dsn)
                assert leader_id is not None
                leader = next(
                    r for r in replicas if r.proc.poll() is None and f"-{r.proc.pid}-" in leader_id
                )
                conn = await asyncpg.connect(dsn)
                seen |= {
                    r["writer"] for r in await conn.fetch("SELECT DISTINCT writer FROM ops_rows")
                }
                await conn.close()
                killed = time.monotonic()
                leader.proc.send_signal(signal.SIGKILL)
                leader.proc.wait()
                took = await _first_row_not_by(dsn, seen, within=30) - killed
                times.append(took)
                print(f"round {n + 1}: takeover {took:.2f}s", flush=True)
                replicas.remove(leader)
                leader.stop()
                fresh = DaemonProcess(tmp, dsn, f"r{n + 2}", **env)
                fresh.wait_for("standing_by", timeout=60)
                replicas.append(fresh)
        finally:
            for r in replicas:
                r.stop()
        cursor, rows, top = await consistency(dsn)
        assert cursor == rows == top, (cursor, rows, top)
    print(
        f"election interval {interval}s, {rounds} rounds: takeover min {min(times):.2f}s "
        f"median {statistics.median(times):.2f}s max {max(times):.2f}s; cursor consistent"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    lifecycle.run(main, args.rounds, args.interval)
