"""Writes Stripe objects into the mirror: the one place rows change.

Both the full resync and the event stream come through here, so the invariants hold for every
write: only content certainly newer than the row's replaces it (versions are intervals of
Stripe's clock, `syncd.versions`; an overlap with other content queues the object to be fetched
again instead of guessing), tombstones are final, a whole list page is
one statement (the page's JSON is unpacked by PostgreSQL), and every change is announced with
NOTIFY on `events.notify_channel`, which PostgreSQL delivers only if the transaction commits.

Every write names its `source` (an event id, `resync run N`, `resync run N sweep`, `overlap
refetch`, `verify repair`): a row whose content changes, or that is tombstoned, keeps it in
`changed_by`, and history (syncd.history) records it with the version. Empty: unknown (NULL).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from syncd import metrics
from syncd.db import Database, Tx
from syncd.registry import Resource
from syncd.storable import storable
from syncd.versions import Version

# NOTIFY payloads are limited to 8000 bytes; stay well below with room for the envelope.
_NOTIFY_BUDGET = 7000

Objects = bytes | str | Sequence[dict[str, Any]]


@dataclass
class Written:
    """What one write did: per id, `insert`, `update`, `delete` or `same` (stale writes absent)."""

    ops: list[tuple[str, str]] = field(default_factory=list)

    @property
    def changed(self) -> list[tuple[str, str]]:
        return [(i, op) for i, op in self.ops if op != "same"]

    def __iadd__(self, other: Written) -> Written:
        self.ops.extend(other.ops)
        return self


class Writer:
    def __init__(
        self, db: Database, *, account_id: str = "", notify_channel: str = "", connect: bool = False
    ):
        """`account_id`: written on every row. `connect`: one of several accounts
        (stripe.accounts), so the resync's runs and sweeps and the refetch queue keep to this
        account's rows; without it they cover every row, as with one account."""
        self.db = db
        self.account_id = account_id
        self.notify_channel = notify_channel
        self.connect = connect

    @property
    def run_key(self) -> str:
        """The account the resync runs and coverage are kept under ('' with one account)."""
        return self.account_id if self.connect else ""

    @property
    def rows_of(self) -> str | None:
        """The account whose rows a sweep or queue may touch; None: every row."""
        return self.account_id if self.connect else None

    async def upsert(
        self,
        conn: Tx,
        resource: Resource,
        objects: Objects,
        *,
        version: Version,
        api_version: str | None,
        parent_id: str | None = None,
        source: str = "",
    ) -> Written:
        """Upsert a batch (a JSON array, as bytes/str or parsed) whose content Stripe held at
        some moment of `version`."""
        if isinstance(objects, str):
            objects = objects.encode()
        payload = storable(objects if isinstance(objects, bytes) else orjson.dumps(list(objects)))
        if resource.owned:
            if parent_id is None:
                raise ValueError(f"{resource.table} rows need their parent's id")
            rows = await conn.fetch(
                "upsert_children",
                payload,
                self.account_id,
                api_version,
                version.bounds(),
                parent_id,
                source or None,
                table=resource.table,
            )
        else:
            rows = await conn.fetch(
                "upsert_objects",
                payload,
                self.account_id,
                api_version,
                version.bounds(),
                source or None,
                table=resource.table,
            )
        written = Written([(r["id"], r["op"]) for r in rows])
        await self._announce(conn, resource, written.changed)
        return written

    async def upsert_each(
        self,
        conn: Tx,
        resource: Resource,
        items: Sequence[tuple[dict[str, Any], Version, str | None, str]],
    ) -> Written:
        """Upsert (object, version, api_version, source) in one statement: event snapshots and
        refetches, each with its own version and source (not for owned children)."""
        if resource.owned:
            raise ValueError(f"{resource.table} rows need their parent's id: use upsert")
        payload = storable(
            orjson.dumps(
                [{"o": o, "v": v.bounds(), "a": a, "s": s or None} for o, v, a, s in items]
            )
        )
        rows = await conn.fetch(
            "upsert_objects_each", payload, self.account_id, table=resource.table
        )
        written = Written([(r["id"], r["op"]) for r in rows])
        await self._announce(conn, resource, written.changed)
        return written

    async def tombstone(
        self,
        conn: Tx,
        resource: Resource,
        ids: Iterable[str],
        *,
        version: Version,
        source: str = "",
    ) -> Written:
        return await self._tombstoned(
            conn,
            resource,
            await conn.fetch(
                "tombstone_ids", list(ids), version.bounds(), source or None, table=resource.table
            ),
        )

    async def tombstone_children(
        self,
        conn: Tx,
        resource: Resource,
        parent_id: str,
        *,
        version: Version,
        source: str = "",
    ) -> Written:
        """Every child of a deleted parent: gone with it, whatever the children's versions (a
        complete list would need to be certainly newer than each child; a deletion is final)."""
        return await self._tombstoned(
            conn,
            resource,
            await conn.fetch(
                "tombstone_children",
                parent_id,
                version.bounds(),
                source or None,
                table=resource.table,
            ),
        )

    async def replace_children(
        self,
        conn: Tx,
        resource: Resource,
        parent_id: str,
        objects: Sequence[dict[str, Any]],
        *,
        version: Version,
        api_version: str | None,
        source: str = "",
    ) -> Written:
        """Make `objects` the complete child set of `parent_id`: upsert them, tombstone the rest.

        Call inside the caller's transaction so readers never see a half-replaced set.
        """
        written = await self.upsert(
            conn,
            resource,
            objects,
            version=version,
            api_version=api_version,
            parent_id=parent_id,
            source=source,
        )
        keep = [o["id"] for o in objects if "id" in o]
        written += await self.tombstone_missing_children(
            conn, resource, parent_id, keep, version=version, source=source
        )
        return written

    async def tombstone_missing_children(
        self,
        conn: Tx,
        resource: Resource,
        parent_id: str,
        keep: Sequence[str],
        *,
        version: Version,
        source: str = "",
    ) -> Written:
        """Tombstone the children of `parent_id` other than `keep` (its complete list's ids)."""
        return await self._tombstoned(
            conn,
            resource,
            await conn.fetch(
                "tombstone_missing_children",
                parent_id,
                list(keep),
                version.bounds(),
                source or None,
                table=resource.table,
            ),
        )

    async def replace_children_of_many(
        self,
        conn: Tx,
        resource: Resource,
        sets: Mapping[str, Sequence[dict[str, Any]]],
        *,
        version: Version,
        api_version: str | None,
        source: str = "",
    ) -> Written:
        """`replace_children` for many parents in two statements (a list page's inline items).

        Ids are global in Stripe, so one keep-list serves every parent of the batch.
        """
        objects = [o for kids in sets.values() for o in kids]
        parents = [pid for pid, kids in sets.items() for _ in kids]
        written = Written()
        if objects:
            rows = await conn.fetch(
                "upsert_children_of_many",
                storable(orjson.dumps(objects)),
                self.account_id,
                api_version,
                version.bounds(),
                parents,
                source or None,
                table=resource.table,
            )
            written = Written([(r["id"], r["op"]) for r in rows])
            await self._announce(conn, resource, written.changed)
        keep = [o["id"] for o in objects if "id" in o]
        written += await self._tombstoned(
            conn,
            resource,
            await conn.fetch(
                "tombstone_missing_children_of_many",
                list(sets),
                keep,
                version.bounds(),
                source or None,
                table=resource.table,
            ),
        )
        return written

    async def versions(
        self, conn: Tx, resource: Resource, ids: Iterable[str]
    ) -> dict[str, tuple[Version, bool]]:
        """Current (version, deleted) of the rows that exist among `ids`."""
        rows = await conn.fetch("versions_of", list(ids), table=resource.table)
        return {r["id"]: (Version.stored(r), r["deleted"]) for r in rows}

    @staticmethod
    def count_rows(resource: Resource, ops: Mapping[str, int]) -> None:
        """Rows written per op (`insert`, `update`, `delete`; `same` is not a write)."""
        for op in ("insert", "update", "delete"):
            if ops.get(op):
                metrics.rows_written.labels(resource.table, op).inc(ops[op])

    async def _tombstoned(self, conn: Tx, resource: Resource, rows: Sequence[Any]) -> Written:
        """What a tombstoning statement returned (the ids it tombstoned), announced."""
        gone = Written([(r["id"], "delete") for r in rows])
        await self._announce(conn, resource, gone.ops)
        return gone

    async def _announce(self, conn: Tx, resource: Resource, changes: list[tuple[str, str]]) -> None:
        if not changes:
            return
        self.count_rows(resource, Counter(op for _, op in changes))
        if not self.notify_channel:
            return
        for payload in _notify_payloads(resource.table, changes):
            await conn.execute("notify_changes", self.notify_channel, payload)


def _notify_payloads(table: str, changes: list[tuple[str, str]]) -> list[str]:
    """Batch `{table, changes: [{id, op}]}` messages, each under PostgreSQL's payload limit."""
    payloads: list[str] = []
    batch: list[dict[str, str]] = []
    size = 0
    for row_id, op in changes:
        item = {"id": row_id, "op": op}
        item_size = len(row_id) + len(op) + 20
        if batch and size + item_size > _NOTIFY_BUDGET:
            payloads.append(orjson.dumps({"table": table, "changes": batch}).decode())
            batch, size = [], 0
        batch.append(item)
        size += item_size
    if batch:
        payloads.append(orjson.dumps({"table": table, "changes": batch}).decode())
    return payloads
