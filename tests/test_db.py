"""The database edge: driver errors become syncd's classes, and a lost deadlock is retryable."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from syncd.db import Database
from syncd.errors import DatabaseConflict, DatabaseError, SyncdError


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


async def test_other_errors_are_not_retryable(db: Database) -> None:
    with pytest.raises(DatabaseError) as info:
        await db.run(lambda c: c.execute("SELECT * FROM no_such_table"))
    assert not info.value.retryable and "42P01" in str(info.value)
