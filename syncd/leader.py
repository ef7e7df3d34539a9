"""Leadership: exactly one replica writes.

The leader holds a session-level advisory lock on a dedicated connection (never a pooled one:
asyncpg's pool runs `pg_advisory_unlock_all()` when a connection goes back). Standbys try the
lock every `daemon.election_interval` seconds, so when a leader dies (even `kill -9`: the server
closes its session and frees the lock) a standby takes over within about one interval.

The leader checks its lock every interval: the connection must answer and `pg_locks` must still
show the lock as ours. If either fails, or the connection reports that it closed, leadership is
lost: `watch()` returns, the caller cancels the feature loops at once and goes back to standby.
The connection is then terminated, so the server frees the lock even if only our side noticed.
"""

from __future__ import annotations

import contextlib
import zlib

import anyio

from syncd import metrics
from syncd.db import Database, Dedicated, translate
from syncd.errors import SyncdError
from syncd.lifecycle import Lifecycle
from syncd.logs import get_logger

log = get_logger(__name__)


def lock_key(db: Database) -> int:
    # One leader per state schema: two syncd installs in one database each have their own.
    return zlib.crc32(f"syncd:leader:{db.schemas.state}".encode())


class Leadership:
    def __init__(self, db: Database, lifecycle: Lifecycle, *, enabled: bool, interval: float):
        self.db = db
        self.lifecycle = lifecycle
        self.enabled = enabled
        self.interval = interval
        self.key = lock_key(db)
        self._conn: Dedicated | None = None
        self._closed = anyio.Event()

    @property
    def held(self) -> bool:
        return self._conn is not None or not self.enabled

    async def acquire(self) -> bool:
        """Wait until this replica leads (True) or a stop is requested (False)."""
        if not self.enabled:
            return not self.lifecycle.stopping.is_set()
        conn: Dedicated | None = None
        waiting_logged = False
        try:
            while not self.lifecycle.stopping.is_set():
                try:
                    if conn is None or conn.is_closed():
                        conn = await self.db.dedicated_connection()
                        await conn.fetchrow("leader_session_keepalive")
                    with anyio.fail_after(max(2.0, self.interval * 3)):
                        got = await conn.fetchval("try_advisory_lock", self.key)
                except (SyncdError, TimeoutError) as exc:
                    error = exc if isinstance(exc, SyncdError) else translate(exc, self.db.dsn)
                    log.warning("leader_election_failed", error=str(error))
                    _terminate(conn)
                    conn, got = None, False
                if got and conn is not None:
                    self._conn, conn = conn, None
                    self._closed = anyio.Event()
                    closed = self._closed
                    self._conn.on_close(closed.set)
                    metrics.is_leader.set(1)
                    metrics.leadership_changes.labels("acquired").inc()
                    log.info("leadership_acquired")
                    return True
                if not waiting_logged and got is False:
                    log.info("standing_by", detail="another replica leads; waiting for its lock")
                    waiting_logged = True
                await self.lifecycle.sleep(self.interval)
            return False
        finally:
            if conn is not None:
                await _close(conn)

    async def watch(self) -> None:
        """Return as soon as leadership is lost (never while it holds)."""
        if not self.enabled:
            await anyio.sleep_forever()
        conn = self._conn
        assert conn is not None, "watch() without leadership"
        while True:
            with anyio.move_on_after(self.interval):
                await self._closed.wait()
            if self._closed.is_set():
                reason = "connection closed"
                break
            try:
                with anyio.fail_after(max(2.0, self.interval * 3)):
                    held = await conn.fetchval("leader_lock_held", self.key)
            except (SyncdError, TimeoutError, anyio.BrokenResourceError) as exc:
                reason = f"lock connection failed: {(exc.__cause__ or exc).__class__.__name__}"
                break
            if not held:
                reason = "lock no longer held"
                break
        _terminate(conn)
        self._conn = None
        metrics.is_leader.set(0)
        metrics.leadership_changes.labels("lost").inc()
        log.error("leadership_lost", reason=reason)

    async def release(self) -> None:
        """Give the lock up (on stop, or after the feature loops failed)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        metrics.is_leader.set(0)
        metrics.leadership_changes.labels("released").inc()
        with anyio.CancelScope(shield=True):
            await _close(conn, unlock=self.key)
        log.info("leadership_released")


def _terminate(conn: Dedicated | None) -> None:
    if conn is not None and not conn.is_closed():
        conn.terminate()


async def _close(conn: Dedicated, unlock: int | None = None) -> None:
    """Unlock (the lock `unlock`) and close politely, or cut the socket: either way the server
    frees the lock."""
    try:
        with anyio.fail_after(2):
            if unlock is not None and not conn.is_closed():
                await conn.fetchval("advisory_unlock", unlock)
            await conn.close()
    except (SyncdError, TimeoutError, anyio.BrokenResourceError):
        with contextlib.suppress(Exception):
            conn.terminate()
