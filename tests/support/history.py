"""History checks shared by tests/test_history.py and tests/test_convergence.py: turning history
on for some tables of a test database, and `assert_history_replays`, the acceptance of issue 18
(replaying each row's versions gives the mirror row; one version per change)."""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from syncd import history
from syncd.db import Database

# What the daemon's writes record as their source (docs/history.md).
SOURCES = re.compile(
    r"^(evt_\w+|resync run \d+( sweep| \(retry\))?|overlap refetch|syncd verify --repair)$"
)


async def enable_history(db: Database, tables: Iterable[str]) -> None:
    """History on for exactly `tables`, their history tables emptied (a reset test database:
    the mirror tables were emptied too, so the versions start with the rows)."""
    names = sorted(tables)
    await history.apply(db, names)
    if names:
        kept = ", ".join(f'stripe_history."{t}"' for t in names)
        await db.run(lambda c: c.execute(f"TRUNCATE {kept}"), transaction=False)


async def versions(db: Database, table: str) -> dict[str, list[dict[str, Any]]]:
    """Each id's versions, oldest first."""
    rows = await db.run(
        lambda c: c.fetch(f'SELECT * FROM stripe_history."{table}" ORDER BY id, version'),
        transaction=False,
    )
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[r["id"]].append(dict(r))
    return out


async def assert_history_replays(
    db: Database, tables: Iterable[str], *, label: str = "", sources: bool = True
) -> None:
    """For every row of each table (history on since the table was empty):

    * replaying its versions gives the row: the last version holds the row's `raw`, and it is
      the one current version (valid_to NULL) of a live row, or a closed `delete` version of a
      tombstoned one;
    * one version per change: no two consecutive versions of the same content and state;
    * the versions meet: each one ends where the next begins, none ends before it begins,
      only the last may be current, only the first is an `insert`, `update`s follow a version;
    * (`sources`) each version names what made it, as the daemon's writes do;
    * no versions of rows the mirror does not hold.
    """
    problems: list[str] = []
    for table in tables:
        mirror = {
            r["id"]: r
            for r in await db.run(
                lambda c, t=table: c.fetch(f'SELECT id, raw, deleted_at FROM stripe."{t}"'),
                transaction=False,
            )
        }
        kept = await versions(db, table)
        for oid in sorted(set(kept) - set(mirror)):
            problems.append(f"{table} {oid}: versions of a row the mirror does not hold")
        for oid, row in sorted(mirror.items()):
            chain = kept.get(oid, [])
            where = f"{table} {oid}"
            if not chain:
                problems.append(f"{where}: no versions")
                continue
            last = chain[-1]
            if last["raw"] != row["raw"]:
                problems.append(f"{where}: the last version's raw is not the row's")
            if row["deleted_at"] is None:
                if last["valid_to"] is not None or last["operation"] == "delete":
                    problems.append(f"{where}: live, but its last version is not current")
            elif last["operation"] != "delete" or last["valid_to"] != last["valid_from"]:
                problems.append(f"{where}: tombstoned, but its last version is not a delete")
            for n, v in enumerate(chain):
                if v["valid_to"] is not None and v["valid_to"] < v["valid_from"]:
                    problems.append(f"{where} #{n}: ends before it begins")
                if sources and not SOURCES.match(v["source"] or ""):
                    problems.append(f"{where} #{n}: source {v['source']!r}")
                expected = ("insert", "delete") if n == 0 else ("update", "delete")
                if v["operation"] not in expected:
                    problems.append(f"{where} #{n}: {v['operation']} at position {n}")
            for n, (a, b) in enumerate(itertools.pairwise(chain)):
                if a["valid_to"] is None:
                    problems.append(f"{where} #{n}: current, yet followed by another version")
                elif a["valid_to"] != b["valid_from"]:
                    problems.append(f"{where} #{n}: ends at {a['valid_to']}, next begins later")
                if a["raw"] == b["raw"] and (a["operation"] == "delete") == (
                    b["operation"] == "delete"
                ):
                    problems.append(f"{where} #{n}: the next version changes nothing")
                if a["operation"] == "delete":
                    problems.append(f"{where} #{n}: a version after the tombstone")
    assert problems == [], f"{label}: {problems[:20]} ({len(problems)} problems)"
