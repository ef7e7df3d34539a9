"""History: every version of the rows of the tables in `history.tables`, kept in
`database.history_schema` (docs/history.md).

The versions are written by triggers on the mirror tables (SQL in sql/queries/history.sql), so
they commit or roll back with the mirror write that made them, and only a change of content or a
tombstone makes one, whichever code path wrote it. This module
sets the triggers up as configured (`apply`: at daemon start and on `syncd migrate`), prunes old
versions (`prune`, the leader's hourly loop when `history.retention_days` is set) and puts the
row-level policy of `billing.subscription_history` next to the other views' (`attach`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from syncd import metrics
from syncd.config import Config
from syncd.db import Database, Tx
from syncd.errors import ConfigError, SyncdError
from syncd.lifecycle import Lifecycle
from syncd.logs import get_logger
from syncd.registry import BY_TABLE
from syncd.runtime import Runtime

log = get_logger(__name__)

PRUNE_EVERY = 3600.0
# Versions deleted per statement: a first pruning of a long history does not hold one huge
# transaction (and its locks) for minutes.
PRUNE_BATCH = 10_000


@dataclass
class Applied:
    """What `apply` changed: tables whose triggers it created (with how many rows of each it
    found already in the mirror and gave a first version) or dropped."""

    enabled: dict[str, int] = field(default_factory=dict)
    disabled: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # history written for these now


def _checked(tables: Iterable[str]) -> list[str]:
    """Registry tables only: their names are spliced into DDL (config checks them first)."""
    names = sorted(set(tables))
    unknown = [t for t in names if t not in BY_TABLE]
    if unknown:
        raise ConfigError(f"history.tables: unknown table(s) {', '.join(map(repr, unknown))}")
    return names


async def apply(db: Database, tables: Iterable[str]) -> Applied:
    """Make history written for exactly `tables`: their history tables, trigger functions and
    triggers created (a table turned on gets a first version of every row it holds, in the
    transaction that adds its triggers, so no write falls between the two), and the triggers
    of tables no longer listed dropped, their versions kept. One transaction, one setup at a
    time; adding or dropping a trigger waits for the table's writers of the moment."""
    wanted = _checked(tables)

    async def tx(conn: Tx) -> Applied:
        await conn.execute("history_lock")
        done = Applied(tables=wanted)
        found = await conn.fetch("history_triggered")
        triggered = {r["table_name"] for r in found if r["complete"]}
        leftover = {r["table_name"] for r in found}  # also one trigger of two (dropped by hand)
        await conn.execute("history_create_schema")
        for table in wanted:
            await conn.execute("history_create_table", table=table)
            # Replaced every time: a newer syncd's function takes effect at its first start.
            await conn.execute("history_create_function", table=table)
            if table in triggered:
                continue
            await conn.execute("history_create_triggers", table=table)
            await conn.execute("history_baseline_close", table=table)
            status = await conn.execute("history_baseline_open", table=table)
            done.enabled[table] = int(status.split()[-1])
        for table in sorted(leftover - set(wanted)):
            if table in BY_TABLE:
                await conn.execute("history_drop_triggers", table=table)
                done.disabled.append(table)
        return done

    done = await db.transact(tx)
    for table, rows in done.enabled.items():
        log.info("history_enabled", table=table, baseline_versions=rows)
    for table in done.disabled:
        log.info("history_disabled", table=table, detail="its versions are kept")
    return done


async def apply_configured(db: Database, cfg: Config) -> Applied:
    return await apply(db, cfg.history.tables)


async def prune(db: Database, retention_days: float) -> dict[str, int]:
    """Delete the versions replaced more than `retention_days` ago from every history table
    (also those of tables whose history is off now); returns the count per table. 0 keeps
    everything."""
    pruned: dict[str, int] = {}
    if retention_days <= 0:
        return pruned
    for row in await db.fetch("history_kept"):
        table = row["table_name"]
        if table not in BY_TABLE:
            continue  # not syncd's
        total = 0
        while True:
            status = await db.execute("history_prune", retention_days, PRUNE_BATCH, table=table)
            n = int(status.split()[-1])
            total += n
            if n < PRUNE_BATCH:
                break
        if total:
            metrics.history_pruned.labels(table).inc(total)
        pruned[table] = total
    log.info("history_pruned", versions=sum(pruned.values()), tables=len(pruned))
    return pruned


async def prune_loop(db: Database, cfg: Config, lifecycle: Lifecycle) -> None:
    """Prune now and then hourly, until stopping (`Lifecycle.repeat`)."""
    days = cfg.history.retention_days
    await lifecycle.repeat(PRUNE_EVERY, lambda: prune(db, days), "history_prune_failed")


async def apply_row_level_security(db: Database) -> bool:
    """Follow the row-level security of the other views (syncd/appschema.py, applied just
    before): while its policies are on the mirror, a user reads their own subscriptions'
    versions through `billing.subscription_history`; otherwise anon/authenticated get nothing
    in the history schema. Never raises for a database refusal (nothing granted: no access).
    Returns whether the policy is installed."""
    try:
        support = await db.fetchrow("rls_support")
        assert support is not None
        installed = bool(support["installed_policies"])
        if installed:
            await db.execute("history_install_row_level_security")
        else:
            await db.execute("history_remove_row_level_security")
    except SyncdError as exc:
        log.error("history_row_level_security_failed", error=str(exc))
        return False
    return installed


def attach(runtime: Runtime) -> None:
    """The leader's part: the view's policy as a startup step (after the other views'), and
    the pruner when `history.retention_days` is set. The triggers are set up by `apply` before
    leadership (every replica, as migrations are)."""
    runtime.startup.append(lambda: _row_level_security_step(runtime.db))
    if runtime.cfg.history.retention_days > 0:
        runtime.add_loop(
            "history_pruner", lambda: prune_loop(runtime.db, runtime.cfg, runtime.lifecycle)
        )


async def _row_level_security_step(db: Database) -> None:
    await apply_row_level_security(db)
