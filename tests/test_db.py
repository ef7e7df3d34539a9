"""The database edge: driver errors become syncd's classes, and a lost deadlock is retryable;
the statements `db` composes are valid SQL for every mirror table."""

from __future__ import annotations

import anyio
import asyncpg
import orjson
import pytest

from syncd.db import COMPOSED, Database, Tx
from syncd.errors import (
    DatabaseConflict,
    DatabaseDataError,
    DatabaseDuplicate,
    DatabaseRefused,
    SyncdError,
)
from syncd.registry import RESOURCES


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


async def test_every_composed_statement_prepares_for_every_table(db: Database) -> None:
    """The writer's upserts with each table's own columns spliced in, the plain insert cut from
    the upsert, the resync's page statement with either embedded: a broken composition (or a
    table whose columns no longer fit) fails here, not in the middle of a resync."""
    for res in RESOURCES:
        for name in COMPOSED:
            sql = db.statement(name, res.table)
            try:
                await db.run(lambda c, q=sql: c.prepare(q), transaction=False)
            except SyncdError as exc:
                raise AssertionError(f"{name} for {res.table}: {exc}\n{sql}") from exc


async def test_the_wrapper_translates_and_nests_savepoints(db: Database) -> None:
    """`Tx` raises syncd's classes only (a unique violation: DatabaseDuplicate, which the
    resync's plain insert falls back on), and a nested transaction is a savepoint."""
    customer = orjson.dumps([{"id": "cus_1", "object": "customer", "metadata": {}}])
    args = (customer, "", None, [1.0, 1.0, None, None, None])

    async def go(conn: Tx) -> int:
        await conn.fetch("insert_objects", *args, table="customers")
        with pytest.raises(DatabaseDuplicate) as info:
            async with conn.transaction():
                await conn.fetch("insert_objects", *args, table="customers")
        assert info.value.sqlstate == "23505" and not info.value.retryable
        assert isinstance(info.value.__cause__, asyncpg.UniqueViolationError)
        # The savepoint rolled back alone: the transaction goes on.
        return len(await conn.fetch("versions_of", ["cus_1"], table="customers"))

    assert await db.transact(go) == 1
