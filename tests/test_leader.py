"""High availability on real replicas: one writer among several, `kill -9` of the leader hands
over within 10 s, and a leader whose lock connection dies stops writing at once."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import anyio
import asyncpg

from tests.support.ops import DaemonProcess, consistency, prepare


async def _writers(db_url: str) -> list[str]:
    """Writers of ops_rows in commit order, consecutive duplicates folded."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT writer FROM ops_rows ORDER BY n")
    finally:
        await conn.close()
    runs: list[str] = []
    for r in rows:
        if not runs or runs[-1] != r["writer"]:
            runs.append(r["writer"])
    return runs


async def _roles(db_url: str) -> dict[str, str]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT instance_id, role FROM syncd.instances")
    finally:
        await conn.close()
    return {r["instance_id"]: r["role"] for r in rows}


async def _wait_rows_by_other(db_url: str, old: str, within: float) -> float:
    conn = await asyncpg.connect(db_url)
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if await conn.fetchval("SELECT count(*) FROM ops_rows WHERE writer <> $1", old):
                return time.monotonic()
            await anyio.sleep(0.02)
    finally:
        await conn.close()
    raise AssertionError(f"no other writer within {within}s")


async def test_two_replicas_one_writer_and_kill9_hands_over(tmp_path: Path, db_url: str) -> None:
    await prepare(db_url)
    a = DaemonProcess(tmp_path, db_url, "a")
    b = None
    try:
        a.wait_for("batch_committed")
        b = DaemonProcess(tmp_path, db_url, "b")
        b.wait_for("standing_by")
        await anyio.sleep(2)
        # One leader, one standby, both ready and saying so.
        sa, ra = a.get_json("/readyz")
        sb, rb = b.get_json("/readyz")
        assert (sa, ra["checks"]["role"]) == (200, "leader"), ra
        assert (sb, rb["checks"]["role"]) == (200, "standby"), rb
        roles = sorted((await _roles(db_url)).values())
        assert roles == ["leader", "standby"]
        writers = await _writers(db_url)
        assert len(writers) == 1
        leader = writers[0]

        killed = time.monotonic()
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(5)
        took_over = await _wait_rows_by_other(db_url, leader, within=15)
        takeover = took_over - killed
        print(f"takeover after kill -9: {takeover:.2f}s")
        assert takeover < 10, takeover
        b.wait_for("leadership_acquired")
        await anyio.sleep(1)
        assert len(await _writers(db_url)) == 2  # a, then b: never interleaved
        status, body = b.get_json("/readyz")
        assert (status, body["checks"]["role"]) == (200, "leader")
        b.signal(signal.SIGTERM)
        assert b.wait(15) == 0
    finally:
        a.stop()
        if b is not None:
            b.stop()
    cursor, rows, top = await consistency(db_url)
    assert cursor == rows == top > 0  # b continued from a's last committed batch


async def test_lock_connection_loss_stops_the_writer_at_once(tmp_path: Path, db_url: str) -> None:
    await prepare(db_url)
    # Long batches (3 s): losing the lock must cancel the one in hand, not let it finish.
    a = DaemonProcess(tmp_path, db_url, "a", TEST_BATCH_ROWS="30", TEST_ROW_DELAY="0.1")
    b = None
    try:
        a.wait_for("batch_committed")
        b = DaemonProcess(tmp_path, db_url, "b", TEST_BATCH_ROWS="30", TEST_ROW_DELAY="0.1")
        b.wait_for("standing_by")
        offset = len(a.output())
        a.wait_for("batch_started", after=offset)
        admin = await asyncpg.connect(db_url)
        try:
            # Kill the leader's lock session from the server side (as a network cut would).
            pid = await admin.fetchval(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid <> pg_backend_pid() LIMIT 1"
            )
            assert pid is not None
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        lost_at = a.wait_for("leadership_lost", timeout=10)
        b.wait_for("leadership_acquired", timeout=10)
        await anyio.sleep(4)
        # a's batch in hand was cancelled (never committed after the loss) and it stands by.
        out = a.output()
        after_loss = out[out.index("leadership_lost") :]
        assert "batch_committed" not in after_loss, after_loss
        _, body = a.get_json("/readyz")
        assert body["checks"]["role"] == "standby", body
        assert lost_at > 0
        writers = await _writers(db_url)
        assert len(writers) == 2, writers  # a then b, no interleaving
    finally:
        a.stop()
        if b is not None:
            b.stop()
    cursor, rows, top = await consistency(db_url)
    assert cursor == rows == top > 0


async def test_without_election_a_replica_always_leads(tmp_path: Path, db_url: str) -> None:
    await prepare(db_url)
    a = DaemonProcess(tmp_path, db_url, "a", SYNCD_DAEMON_LEADER_ELECTION="false")
    try:
        a.wait_for("batch_committed")
        conn = await asyncpg.connect(db_url)
        try:
            locks = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            )
        finally:
            await conn.close()
        assert locks == 0
        assert (await _roles(db_url)) and set((await _roles(db_url)).values()) == {"leader"}
        a.signal(signal.SIGTERM)
        assert a.wait(15) == 0
    finally:
        a.stop()
