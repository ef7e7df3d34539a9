"""The quarantine: objects Stripe sent that could not be stored, kept rather than dropped.

Transient is retried, the object's own fault is quarantined, nothing is dropped. An object
lands here when the mirror cannot take it as it is: it is not an object of the listed type, it
has no id, or PostgreSQL refuses its data (`db.is_data_error`: a value too large for an index,
a user's CHECK constraint, JSON jsonb cannot hold). Each entry keeps the object's text as
received, the reason, where it came from (a resync run, an event), first and last seen and how
many attempts failed. Full resyncs and `syncd resync --type` meet the object again and retry it;
an entry leaves quarantine (`resolved_at`) when a good version of its object is stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from syncd import metrics
from syncd.db import Database, Row, Tx
from syncd.logs import get_logger

log = get_logger(__name__)

REASON_LIMIT = 500


def as_text(raw: Any) -> str:
    """The object as JSON text PostgreSQL's `text` can hold (which refuses only NUL bytes)."""
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "backslashreplace").replace("\0", "\\u0000")
    if isinstance(raw, str):
        return raw.replace("\0", "\\u0000")
    try:
        return orjson.dumps(raw).decode()
    except (TypeError, orjson.JSONEncodeError):
        # Strings with lone surrogates (an invalid escape Stripe's JSON carried): the standard
        # library writes them back as the `\\udXXX` escapes they came as.
        return json.dumps(raw, default=repr)


def object_id(raw: Any) -> str | None:
    oid = raw.get("id") if isinstance(raw, dict) else None
    return oid if isinstance(oid, str) and oid and "\0" not in oid else None


class Quarantine:
    def __init__(self, db: Database):
        self.db = db
        # Tables with open entries (None: not read yet): successful writes to other tables skip
        # the resolving statement.
        self._open: set[str] | None = None

    async def put(
        self,
        conn: Tx,
        *,
        table: str,
        raw: Any,
        reason: str,
        source: str,
        run_id: int | None = None,
    ) -> None:
        """Record (or count again) one object that could not be stored, in `conn`'s transaction."""
        reason = reason.replace("\0", "\\0")[:REASON_LIMIT]
        await conn.execute(
            "quarantine_object",
            run_id,
            table,
            object_id(raw),
            reason,
            as_text(raw),
            source,
        )
        if self._open is not None:
            self._open.add(table)
        kind = "resync" if run_id is not None else "event"
        metrics.quarantined.labels(table, kind).inc()
        log.warning(
            "object_quarantined",
            table=table,
            object_id=object_id(raw),
            reason=reason,
            source=source,
        )

    async def resolve_ids(self, conn: Tx, table: str, ids: Iterable[str]) -> None:
        """`ids` of `table` were just stored: out of quarantine (if any were in)."""
        if self._open is None:
            rows = await conn.fetch("quarantine_open_tables")
            self._open = {r["table_name"] for r in rows}
        if table not in self._open:
            return
        await conn.execute("quarantine_resolve_ids", table, list(ids))

    async def resolve_listed(self, table: str, run_started_at: Any, started_version: float) -> int:
        """After a resync listed `table`: entries the run stored a good version of leave."""
        status = await self.db.execute(
            "quarantine_resolve_listed", run_started_at, started_version, table, table=table
        )
        resolved = int(status.split()[-1])
        if resolved:
            self._open = None  # read again on the next write
            log.info("quarantine_resolved", table=table, objects=resolved)
        return resolved

    async def open_ids(self, table: str, not_seen_since: Any) -> list[str]:
        """Open entries of `table` not met since `not_seen_since` (a database timestamp)."""
        rows = await self.db.fetch("quarantine_open_ids", table, not_seen_since)
        return [r["object_id"] for r in rows]


def refusal(exc: BaseException) -> str:
    """A quarantine reason from a refused write: SQLSTATE and the server's message's first line
    (`not stored: 54000 index row size ...`)."""
    state = getattr(exc, "sqlstate", None)
    text = str(getattr(exc, "server_message", None) or exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return (
        f"not stored: {state} {first}" if state and state not in first else f"not stored: {first}"
    )


async def summary(db: Database) -> list[dict[str, Any]]:
    """Open entries by table and kind of reason, with the latest example of each."""
    rows: Sequence[Row] = await db.fetch("quarantine_summary")
    return [
        {
            "table": r["table_name"],
            "reason": r["kind"],
            "objects": r["objects"],
            "last_seen": r["last_seen"].isoformat(timespec="seconds"),
            "example": r["example"],
            "example_reason": r["example_reason"],
        }
        for r in rows
    ]
