"""The database edge: driver errors become syncd's classes, and a lost deadlock is retryable."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from syncd.db import Database
from syncd.errors import (
    DatabaseConflict,
    DatabaseDataError,
    DatabaseRefused,
    SyncdError,
)


async def test_deadlock_becomes_a_retryable_conflict(db: Database) -> None:
    await db.run(
        lambda c: c.execute(
            "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0), (2, 0)"
        )
    )
    both_locked_first = anyio.Event()
    ready = 0
    failures: list[SyncdError] = []

    async def writer(first: int, second: int) -> None:
        nonlocal ready

        async def go(conn: asyncpg.Connection) -> None:
            nonlocal ready
            await conn.execute("UPDATE t SET v = v + 1 WHERE id = $1", first)
            ready += 1
            if ready == 2:
                both_locked_first.set()
            await both_locked_first.wait()
            await conn.execute("UPDATE t SET v = v + 1 WHERE id = $1", second)

        try:
            await db.run(go)
        except SyncdError as exc:
            failures.append(exc)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer, 1, 2)
            tg.start_soon(writer, 2, 1)
    assert len(failures) == 1
    assert isinstance(failures[0], DatabaseConflict) and failures[0].retryable
    assert "40P01" in str(failures[0])


async def test_data_errors_blame_the_data_and_are_not_retried(db: Database) -> None:
    # Retrying the same data fails the same way: the object is quarantined instead.
    for statement in (
        "SELECT 'ten'::int",  # 22P02
        r"""SELECT '"\u0000"'::jsonb""",  # 22P05: jsonb refuses NUL
        "CREATE TEMP TABLE t (n int CHECK (n > 0)); INSERT INTO t VALUES (-1)",  # 23514
    ):
        with pytest.raises(DatabaseDataError) as info:
            await db.run(lambda c, s=statement: c.execute(s))
        assert not info.value.retryable


async def test_server_refusals_are_retried(db: Database) -> None:
    """Privileges, a read-only transaction, a lock timeout, a missing table: the server's
    state, fixed by an operator; the loops retry them and move no cursor meanwhile."""
    for statement in (
        "SET LOCAL ROLE pg_monitor; CREATE TABLE nope (n int)",  # 42501
        "SET LOCAL transaction_read_only = on; CREATE TABLE nope (n int)",  # 25006
        "SET LOCAL lock_timeout = '1ms'; SELECT pg_sleep(0) FROM no_such_table",  # 42P01
    ):
        with pytest.raises(DatabaseRefused) as info:
            await db.run(lambda c, s=statement: c.execute(s))
        assert info.value.retryable
