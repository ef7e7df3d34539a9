"""The per-parent phase of a resync: collections Stripe lists only one parent at a time (a
customer's payment methods and active entitlements, a product's features).

They cost one request per parent, so they never hold back the main lists: the listing writes
the parents without them, and this phase follows once the main types are listed and swept. It
walks the parents the mirror holds, by id, in batches; each batch's children are written with
the walk's checkpoint (a `resync_slices` row of the child table, variant -1, whose cursor is the
last parent done) in one transaction, so a restart resumes after the last batch. Requests go
through the run's fetch (the shared rate limiter) with at most `sync.per_parent_concurrency` in
flight: a bounded share of the budget, the event stream keeps the rest.

Entitlements are asked only of customers that can have any: a customer with a live
subscription on a product that has features, or one the mirror shows with entitlements (its
set may have become empty). With no product features in the mirror that is nobody, and the
product features walk comes first.
"""

from __future__ import annotations

import anyio

from syncd import metrics
from syncd.db import Tx
from syncd.lister import ChildLists, ChildWrite, Rejected, fetch_children
from syncd.logs import bind_context, get_logger
from syncd.quarantine import Quarantine
from syncd.registry import Child, Resource
from syncd.resync.listing import RunContext

log = get_logger(__name__)

WALK_VARIANT = -1  # the resync_slices row of a per-parent walk (list slices have 0..n)
BATCH = 100  # parents per transaction


class ParentLists:
    """Walk each per-parent collection over the parents the mirror holds."""

    def __init__(self, run: RunContext, quarantine: Quarantine, concurrency: int):
        self.run = run
        self.quarantine = quarantine
        self.limit = anyio.CapacityLimiter(concurrency)
        # Where each walk is, for its ETA (resync/eta.py): the cursor of its last committed
        # batch and the parents answered since. Both change together, with no await between,
        # so a reader never counts a batch twice or not at all.
        self.positions: dict[str, tuple[str, int]] = {}

    def walks(self) -> list[tuple[Resource, Child, Resource]]:
        """(parent type, child list, child type) of every per-parent collection of the run's
        listed types; product features first (entitlements depend on them)."""
        out = [
            (parent, child, child_res)
            for parent in self.run.resources
            for child, child_res in self.run.children[parent.table]
            if not child.inline_field
        ]
        out.sort(key=lambda w: w[2].table != "product_features")
        return out

    async def list_all(self) -> None:
        state = self.run.state
        for parent, child, child_res in self.walks():
            if state.status.get(parent.table) not in ("listed", "swept"):
                continue  # the parent type failed: its children wait for the next run
            if state.status.get(child_res.table) in ("listed", "swept"):
                continue  # done before a restart
            with bind_context(resource=child_res.table, parent=parent.table):
                await self._walk(parent, child, child_res)

    async def _walk(self, parent: Resource, child: Child, child_res: Resource) -> None:
        run = self.run
        row = await run.db.fetchrow("resync_walk_of", run.run_id, child_res.table, WALK_VARIANT)
        cursor = str(row["cursor"] or "") if row is not None else ""
        parents_done = int(row["objects"]) if row is not None else 0
        written = int(row["children"]) if row is not None else 0
        self.positions[child_res.table] = (cursor, 0)
        while child_res.table not in run.state.disabled_children:
            if child_res.table == "active_entitlements":  # only customers who can have any
                rows = await run.db.fetch(
                    "resync_entitled_customers",
                    cursor,
                    BATCH,
                    run.writer.rows_of,
                    table=parent.table,
                )
            else:
                rows = await run.db.fetch(
                    "resync_parent_ids", cursor, BATCH, run.writer.rows_of, table=parent.table
                )
            ids = [r["id"] for r in rows]
            if not ids:
                break
            writes: list[ChildWrite] = []
            rejected: list[Rejected] = []
            async with anyio.create_task_group() as tg:
                for pid in ids:
                    tg.start_soon(self._one, parent, child, child_res, pid, writes, rejected)
            cursor = ids[-1]
            parents_done += len(ids)
            written += sum(len(w.objects) for w in writes)

            async def commit(
                conn: Tx,
                writes: list[ChildWrite] = writes,
                rejected: list[Rejected] = rejected,
                progress: tuple[str, int, int] = (cursor, parents_done, written),
            ) -> None:
                for w in writes:
                    await self._write(conn, w)
                for bad in rejected:  # not of the type, no id: kept with the reason
                    await self.quarantine.put(
                        conn,
                        table=child_res.table,
                        raw=bad.raw,
                        reason=bad.reason,
                        source=f"resync run {run.run_id}",
                        run_id=run.run_id,
                    )
                await conn.execute(
                    "resync_walk_checkpoint",
                    run.run_id,
                    child_res.table,
                    WALK_VARIANT,
                    *progress,
                    False,
                )

            await run.db.transact(commit)
            self.positions[child_res.table] = (cursor, 0)
            metrics.resync_objects.labels(child_res.table).inc(sum(len(w.objects) for w in writes))
        await run.db.execute(
            "resync_walk_checkpoint",
            run.run_id,
            child_res.table,
            WALK_VARIANT,
            cursor,
            parents_done,
            written,
            True,
        )
        run.state.status[child_res.table] = "listed"
        await run.db.execute("resync_set_table", run.run_id, child_res.table, "listed", None)
        log.info("resync_parent_lists_done", parents=parents_done, children=written)

    async def _one(
        self,
        parent: Resource,
        child: Child,
        child_res: Resource,
        pid: str,
        out: list[ChildWrite],
        rejected: list[Rejected],
    ) -> None:
        state = self.run.state
        lists = ChildLists(state.disabled_children, state.missing_children)
        async with self.limit:
            write, bad, answered = await fetch_children(
                self.run.fetch, child, child_res, parent.table, pid, lists
            )
        if answered:
            self._answered(child_res.table)
        rejected.extend(bad)
        if write is not None:
            out.append(write)

    def _answered(self, table: str) -> None:
        cursor, answered = self.positions[table]
        self.positions[table] = (cursor, answered + 1)

    async def _write(self, conn: Tx, w: ChildWrite) -> None:
        run = self.run
        if w.resource.owned and w.parent_id is not None:
            await run.writer.replace_children(
                conn,
                w.resource,
                w.parent_id,
                w.objects,
                version=w.version,
                api_version=run.api_version,
                source=f"resync run {run.run_id}",
            )
        elif w.objects:
            await run.writer.upsert(
                conn,
                w.resource,
                w.objects,
                version=w.version,
                api_version=run.api_version,
                source=f"resync run {run.run_id}",
            )
