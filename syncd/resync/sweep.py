"""The sweep after a resync's listing: rows of a completely listed type that the run did not
confirm (older than `started_version - SWEEP_MARGIN`) are retrieved one by one; Stripe's 404 or
`deleted: true` tombstones them, any other answer refreshes them. Owned children of a deleted
parent go with it.
"""

from __future__ import annotations

from typing import Any

import anyio

from syncd import metrics
from syncd.db import Tx
from syncd.errors import StripeError, StripeNotFound
from syncd.logs import bind_context, get_logger
from syncd.registry import Resource
from syncd.resync.listing import RunContext
from syncd.versions import Version

log = get_logger(__name__)

# Rows confirmed up to this many seconds before started_version are left alone by the sweep:
# an event for an object created just after the start carries its whole-second `created`, which
# may read up to a second earlier than our clock estimate (which itself is within one second).
SWEEP_MARGIN = 2.0
SWEEP_BATCH = 100


class Sweep:
    """After the listing: tombstone what complete lists no longer show, once Stripe confirms."""

    def __init__(self, run: RunContext, version: float):
        self.db, self.writer, self.fetch, self.clock = run.db, run.writer, run.fetch, run.clock
        self.api_version, self.run_id, self.state = run.api_version, run.run_id, run.state
        self.children = run.children
        self.threshold = version - SWEEP_MARGIN
        self.resources = run.resources
        self.source = f"resync run {self.run_id} sweep"  # what its writes record (history)

    async def sweep_all(self) -> None:
        """The listed types, their owned children, and the loose children their pages carry
        (a customer's tax ids); per-parent lists are swept after their walk (`sweep_walks`)."""
        for res in self.resources:
            if self.state.status.get(res.table) != "listed":
                continue
            with bind_context(resource=res.table):
                if res.complete_list:
                    await self._sweep_table(res, res.table)
                for child, child_res in self.children[res.table]:
                    if child_res.owned:
                        await self._sweep_orphans(res, child_res)
                    elif child.inline_field and self._complete(res, child_res):
                        await self._sweep_table(child_res, res.table)
            self.state.status[res.table] = "swept"
            await self.db.execute("resync_set_table", self.run_id, res.table, "swept", None)

    async def sweep_walks(self) -> None:
        """Loose children listed per parent (payment methods), once their walk is done."""
        for res in self.resources:
            for child, child_res in self.children[res.table]:
                if child.inline_field or child_res.owned:
                    continue
                if self.state.status.get(child_res.table) != "listed":
                    continue
                if self._complete(res, child_res):
                    with bind_context(resource=child_res.table):
                        await self._sweep_table(child_res, res.table)
                self.state.status[child_res.table] = "swept"
                await self.db.execute(
                    "resync_set_table", self.run_id, child_res.table, "swept", None
                )

    def _complete(self, res: Resource, child_res: Resource) -> bool:
        """Whether this run saw every child of every parent: a complete parent list and a
        child list the key may read."""
        return res.complete_list and child_res.table not in self.state.disabled_children

    async def _sweep_table(self, res: Resource, owner: str) -> None:
        """`owner`: the listed table the counts are kept under (children count with parents)."""
        after = ""
        while True:
            rows = await self.db.fetch(
                "resync_unconfirmed",
                self.threshold,
                after,
                SWEEP_BATCH,
                self.writer.rows_of,
                table=res.table,
            )
            if not rows:
                return
            ids = [r["id"] for r in rows]
            after = ids[-1]
            if not await self._verify(res, ids, owner):
                return

    async def _verify(self, res: Resource, ids: list[str], owner: str) -> bool:
        """Retrieve each candidate: tombstone the gone ones, refresh the ones still there."""
        assert res.retrieve_path is not None
        gone: list[tuple[str, Version]] = []
        alive: list[tuple[dict[str, Any], Version]] = []
        denied: list[StripeError] = []

        async def one(oid: str) -> None:
            try:
                reply = await self.fetch(res.retrieve_path.replace("{id}", oid), {})  # type: ignore[union-attr]
            except StripeNotFound:
                gone.append((oid, Version.at(self.clock.now())))
                return
            except StripeError as exc:
                if exc.retryable:
                    raise
                denied.append(exc)
                return
            obj = reply.object()
            if isinstance(obj, dict) and obj.get("deleted") is True:
                gone.append((oid, reply.version))
            elif isinstance(obj, dict) and obj.get("id") == oid:
                alive.append((obj, reply.version))

        async with anyio.create_task_group() as tg:
            for oid in ids:
                tg.start_soon(one, oid)
        if denied:
            log.warning("resync_sweep_skipped", table=res.table, error=str(denied[0]))
        if gone or alive:
            await self.db.transact(lambda c: self._apply(c, res, gone, alive, owner))
        return not denied

    async def _apply(
        self,
        conn: Tx,
        res: Resource,
        gone: list[tuple[str, Version]],
        alive: list[tuple[dict[str, Any], Version]],
        owner: str,
    ) -> None:
        w = self.writer
        count = 0
        if gone:
            ids = [i for i, _ in gone]
            written = await w.tombstone(conn, res, ids, version=gone[-1][1], source=self.source)
            count = len(written.ops)
        for obj, version in alive:  # each with its own answer's version
            await w.upsert(
                conn,
                res,
                [obj],
                version=version,
                api_version=self.api_version,
                source=self.source,
            )
        if count:
            await conn.execute("resync_count_tombstones", self.run_id, res.table, count)
            metrics.resync_tombstoned.labels(res.table).inc(count)
            log.info("resync_tombstoned", table=res.table, count=count)

    async def _sweep_orphans(self, parent: Resource, res: Resource) -> None:
        """Owned children nobody confirmed whose parent is deleted go with it."""
        after = ""
        while True:
            rows = await self.db.fetch(
                "resync_unconfirmed_children",
                self.threshold,
                after,
                SWEEP_BATCH * 10,
                self.writer.rows_of,
                table=res.table,
            )
            if not rows:
                return
            after = rows[-1]["id"]
            parents = {r["parent_id"] for r in rows}

            async def go(conn: Tx, rows: list[Any] = rows, parents: set[str] = parents) -> None:
                states = await self.writer.versions(conn, parent, parents)
                dead = [r["id"] for r in rows if states.get(r["parent_id"], (0.0, False))[1]]
                if not dead:
                    return
                done = await self.writer.tombstone(
                    conn, res, dead, version=Version.at(self.clock.now()), source=self.source
                )
                if done.ops:
                    await conn.execute(
                        "resync_count_tombstones", self.run_id, res.table, len(done.ops)
                    )

            await self.db.transact(go)
