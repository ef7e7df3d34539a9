"""A resync run: its scope, its row in `resync_runs` (started_version, resumed or new), the
listing and the sweep in turn, the quarantine retry, the problems it ends with, its result.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from syncd import metrics
from syncd.config import Config
from syncd.db import Database, Tx
from syncd.errors import StripeError, StripeNotFound, SyncdError, one_error
from syncd.lifecycle import Lifecycle
from syncd.lister import Slice, check_object
from syncd.logs import bind_context, get_logger
from syncd.problems import Problems
from syncd.quarantine import Quarantine
from syncd.registry import BY_TABLE, Child, Embed, Resource, selected
from syncd.resync.eta import RunEta, clear_metrics
from syncd.resync.listing import (
    PROGRESS_INTERVAL,
    STALL_PROBLEM,
    Listing,
    RunContext,
    RunState,
    write_or_quarantine,
)
from syncd.resync.parents import WALK_VARIANT, ParentLists
from syncd.resync.sweep import Sweep
from syncd.stripe_api import Reply, StripeAPI
from syncd.writer import Writer

log = get_logger(__name__)


@dataclass
class TableResult:
    objects: int = 0
    pages: int = 0
    children: int = 0
    rejected: int = 0
    tombstoned: int = 0
    status: str = "listing"
    error: str | None = None


@dataclass
class ResyncResult:
    run_id: int
    started_version: float
    reason: str
    tables: dict[str, TableResult] = field(default_factory=dict)
    duration: float = 0.0
    resumed: bool = False

    @property
    def objects(self) -> int:
        return sum(t.objects for t in self.tables.values())

    @property
    def tombstoned(self) -> int:
        return sum(t.tombstoned for t in self.tables.values())

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "objects": self.objects,
            "tombstoned": self.tombstoned,
            "duration": round(self.duration, 3),
            "unavailable": {t: r.error for t, r in self.tables.items() if r.error},
        }


def resolve_scope(cfg: Config, tables: Sequence[str] | None) -> list[str] | None:
    """Sorted table names to list (children map to their parent); None: every selected type."""
    if not tables:
        return None
    chosen = {r.table for r in selected(cfg.sync.include, cfg.sync.exclude)}
    out: set[str] = set()
    for name in tables:
        if name not in BY_TABLE:
            raise SyncdError(f"resync: unknown type {name!r} (known: {', '.join(BY_TABLE)})")
        if name not in chosen:
            raise SyncdError(f"resync: {name} is not mirrored (sync.include/sync.exclude)")
        res = BY_TABLE[name]
        # A type listed only under its parent (items, lines, tax ids) means the parent's list.
        out.add(res.parent if res.parent and not res.list_path else name)
    return sorted(out)


async def has_completed_resync(db: Database, account: str = "") -> bool:
    """Whether a resync of every type ever finished (the mirror has been filled once), for
    `account` (Writer.run_key: '' with one account)."""
    return bool(await db.fetchval("resync_has_completed", account))


class Resync:
    def __init__(
        self,
        cfg: Config,
        db: Database,
        api: StripeAPI,
        writer: Writer,
        lifecycle: Lifecycle | None = None,
        problems: Problems | None = None,
    ):
        self.cfg = cfg
        self.db = db
        self.api = api
        self.writer = writer
        self.lifecycle = lifecycle
        self.problems = problems if problems is not None else Problems()
        self.quarantine = Quarantine(db)
        self._lock = anyio.Lock()
        # Connect: the replica's runs take turns (a few at once), each account's loop its own.
        self.gate: anyio.Semaphore | None = None

    # ---- scope and runs ---------------------------------------------------------------------

    def scope(self, tables: Sequence[str] | None) -> list[str] | None:
        return resolve_scope(self.cfg, tables)

    async def enqueue(self, tables: Sequence[str] | None, reason: str) -> int:
        """A pending run for this scope (an unfinished one of the same scope is reused)."""
        scope = self.scope(tables)
        key = self.writer.run_key
        row = await self.db.fetchrow("resync_find_unfinished", scope, key)
        if row is not None:
            return int(row["run_id"])
        return int(await self.db.fetchval("resync_create_run", scope, reason, key))

    async def run(self, tables: Sequence[str] | None = None, *, reason: str) -> ResyncResult:
        """Resync `tables` (None: every mirrored type), resuming an unfinished run of that scope."""
        scope = self.scope(tables)
        async with self._lock, self.gate or contextlib.nullcontext():
            key = self.writer.run_key
            row = await self.db.fetchrow("resync_find_unfinished", scope, key)
            resumed = row is not None and row["status"] == "running"
            if row is None:
                run_id = int(await self.db.fetchval("resync_create_run", scope, reason, key))
            else:
                run_id = int(row["run_id"])
            with bind_context(resync_run=run_id):
                return await self._run(run_id, scope, reason, resumed)

    async def _run(
        self, run_id: int, scope: list[str] | None, reason: str, resumed: bool
    ) -> ResyncResult:
        started = time.monotonic()
        resources = self._resources(scope)
        if not resumed:
            # One cheap request first so the Stripe clock is read from Stripe's Date header.
            first = next((r for r in resources if r.list_path), None)
            if first is not None and first.list_path is not None:
                await self._fetch_quiet(first.list_path, {"limit": 1})
        row = await self.db.fetchrow("resync_start_run", run_id, self.api.clock.now())
        assert row is not None
        version = float(row["started_version"])
        run_started_at = row["started_at"]
        reason = row["reason"] or reason
        if not resumed:
            await self.db.execute("resync_supersede", run_id, scope)
        log.info(
            "resync_started",
            reason=reason,
            resumed=resumed,
            tables=[r.table for r in resources],
            started_version=version,
        )
        metrics.resync_running.set(1)
        try:
            state = await self._load(run_id, resources)
            run = RunContext(
                db=self.db,
                writer=self.writer,
                fetch=self.fetch,
                clock=self.api.clock,
                api_version=self.cfg.stripe.api_version,
                run_id=run_id,
                resources=resources,
                children={res.table: self.child_lists(res) for res in resources},
                embeds={res.table: self.embeds(res) for res in resources},
                state=state,
                backlog=lambda: self.api.limiter.backlog,
            )
            walks = ParentLists(run, self.quarantine, self.cfg.sync.per_parent_concurrency)
            eta = RunEta(run, self.api.limiter, walks)
            # The estimate is re-made beside every phase, so other processes see it move
            # (syncd status, syncd resync --wait) through the lists, the sweep and the walks.
            async with anyio.create_task_group() as tg:
                tg.start_soon(eta.loop, PROGRESS_INTERVAL)
                await Listing(run, self.quarantine, self.problems, self.cfg.sync).list_all()
                sweep = Sweep(run, version)
                await sweep.sweep_all()
                await walks.list_all()
                await sweep.sweep_walks()
                tg.cancel_scope.cancel()
            await eta.update()  # nothing left: what status shows once the run is over
            await self._retry_quarantine(run_id, run_started_at, version, resources, state)
            problems = await self._report_problems(run_id, state)
            await self._record_coverage(run_id, resources, state)
        except BaseExceptionGroup as group:
            # Task groups wrap errors; callers decide on syncd's classes (retryable or not).
            inner = one_error(group)
            if inner is group:
                raise
            raise inner from group
        finally:
            metrics.resync_running.set(0)
            clear_metrics()
            self.problems.clear(STALL_PROBLEM)
        status = "done_with_problems" if problems else "done"
        await self.db.execute("resync_finish_run", run_id, status, "; ".join(problems) or None)
        result = await self.result(run_id)
        result.duration = time.monotonic() - started
        result.resumed = resumed
        metrics.resync_runs.labels(status).inc()
        log.info(
            "resync_finished",
            objects=result.objects,
            tombstoned=result.tombstoned,
            seconds=round(result.duration, 2),
            rate=round(result.objects / result.duration) if result.duration else None,
            unavailable=result.summary()["unavailable"],
            problems=problems or None,
        )
        return result

    async def _report_problems(self, run_id: int, state: RunState) -> list[str]:
        """What this run could not mirror: types unavailable, per-parent lists answering 404
        for parents it had just listed. Recorded on the tables; the run ends with problems."""
        problems = [f"{t}: {e}" for t, e in sorted(state.errors.items())]
        for (parent, child), count in sorted(state.missing_children.items()):
            error = f"{child}: per-parent list answered 404 for {count} listed {parent}"
            problems.append(f"{parent}: {error}")
            await self.db.execute("resync_table_problem", run_id, parent, error)
        return problems

    async def _retry_quarantine(
        self,
        run_id: int,
        run_started_at: Any,
        version: float,
        resources: list[Resource],
        state: RunState,
    ) -> None:
        """Quarantined objects of the listed types: those the run stored leave quarantine; the
        rest (not met in a list, e.g. quarantined from an event) are retrieved and written."""
        for res in resources:
            if state.status.get(res.table) not in ("listed", "swept"):
                continue
            await self.quarantine.resolve_listed(res.table, run_started_at, version)
            if res.retrieve_path is None:
                continue
            for oid in await self.quarantine.open_ids(res.table, run_started_at):
                await self._retry_one(run_id, res, oid)

    async def _retry_one(self, run_id: int, res: Resource, oid: str) -> None:
        assert res.retrieve_path is not None
        try:
            reply = await self.fetch(res.retrieve_path.replace("{id}", oid), {})
        except StripeNotFound:
            return  # gone from Stripe: the sweep tombstones its row; the entry stays as history
        except StripeError as exc:
            if exc.retryable:
                raise
            return
        obj = reply.json()
        source = f"resync run {run_id} (retry)"
        reason = check_object(res, obj)
        if reason is None and obj.get("id") != oid:
            reason = f"retrieved as {obj.get('id')!r}"

        async def go(conn: Tx) -> None:
            if reason is not None:
                await self.quarantine.put(
                    conn, table=res.table, raw=obj, reason=reason, source=source, run_id=run_id
                )
                return
            await write_or_quarantine(
                conn,
                self.writer,
                self.quarantine,
                res,
                [obj],
                version=reply.version,
                api_version=self.cfg.stripe.api_version,
                source=source,
                run_id=run_id,
            )

        await self.db.transact(go)

    async def result(self, run_id: int) -> ResyncResult:
        run = await self.db.fetchrow("resync_get_run", run_id)
        if run is None:
            raise SyncdError(f"resync run {run_id} not found")
        out = ResyncResult(run_id, float(run["started_version"] or 0.0), run["reason"])
        for r in await self.db.fetch("resync_progress", run_id):
            out.tables[r["table_name"]] = TableResult(
                objects=r["objects"],
                pages=r["pages"],
                children=r["children"],
                rejected=r["rejected"],
                tombstoned=r["tombstoned"],
                status=r["status"],
                error=r["error"],
            )
        return out

    async def _record_coverage(
        self, run_id: int, resources: list[Resource], state: RunState
    ) -> None:
        """The types this run mirrored (listed, and their children fetched with them): a type
        selected later that is missing here is backfilled at the next start."""
        listed = [r for r in resources if state.status.get(r.table) in ("listed", "swept")]
        covered = set(self.mirrored_tables(listed)) - state.disabled_children
        await self.db.execute("resync_cover", run_id, sorted(covered), self.writer.run_key)

    def mirrored_tables(self, resources: list[Resource] | None = None) -> list[str]:
        """The tables a resync of `resources` (None: every listed type selected) fills: the
        listed types and the children fetched with them (per-parent lists only with
        sync.per_parent_lists)."""
        out: list[str] = []
        for res in self._resources(None) if resources is None else resources:
            out.append(res.table)
            out.extend(child.table for child, _ in self.child_lists(res))
        return out

    def _resources(self, scope: list[str] | None) -> list[Resource]:
        chosen = selected(self.cfg.sync.include, self.cfg.sync.exclude)
        return [r for r in chosen if r.list_path and (scope is None or r.table in scope)]

    def child_lists(self, resource: Resource) -> list[tuple[Child, Resource]]:
        """Children fetched with `resource`'s pages (per-parent lists only when configured)."""
        chosen = {r.table for r in selected(self.cfg.sync.include, self.cfg.sync.exclude)}
        return [
            (c, BY_TABLE[c.table])
            for c in resource.children
            if c.table in chosen and (c.inline_field or self.cfg.sync.per_parent_lists)
        ]

    def embeds(self, resource: Resource) -> list[Embed]:
        """Objects of selected types that `resource`'s pages bring along expanded."""
        chosen = {r.table for r in selected(self.cfg.sync.include, self.cfg.sync.exclude)}
        return [e for e in resource.embeds if e.table in chosen]

    async def _load(self, run_id: int, resources: list[Resource]) -> RunState:
        previous = {
            r["table_name"]: r["objects"]
            for r in await self.db.fetch("resync_previous_objects", self.writer.run_key)
        }

        async def init(conn: Tx) -> None:
            for res in resources:
                await conn.execute("resync_init_table", run_id, res.table)
                for child, child_res in self.child_lists(res):
                    if not child.inline_field:  # a per-parent walk: progress of its own
                        await conn.execute("resync_init_table", run_id, child_res.table)
                for variant in range(len(res.list_variants)):
                    await conn.execute(
                        "resync_insert_slice", run_id, res.table, variant, 0, 0, None
                    )

        await self.db.transact(init)
        state = RunState()
        for r in await self.db.fetch("resync_tables_of", run_id):
            state.status[r["table_name"]] = r["status"]
            if r["error"]:
                state.errors[r["table_name"]] = r["error"]
        for r in await self.db.fetch("resync_slices_of", run_id):
            if r["variant"] == WALK_VARIANT:
                continue  # a per-parent walk's checkpoint (resync/parents.py), not a list slice
            s = Slice(
                r["table_name"],
                r["variant"],
                r["slice_no"],
                lo=r["lo"],
                hi=r["hi"],
                cursor=r["cursor"],
                cursor_created=r["cursor_created"],
                objects=r["objects"],
                pages=r["pages"],
                rejected=r["rejected"],
                children=r["children"],
                done=r["done"],
            )
            state.slices.append(s)
        # Biggest types first (by the last run), so the longest list does not start last.
        order = {res.table: i for i, res in enumerate(resources)}
        state.slices.sort(key=lambda s: (-previous.get(s.table, 0), order.get(s.table, 0), s.no))
        return state

    async def fetch(self, path: str, params: Mapping[str, Any]) -> Reply:
        async with self._requests:
            return await self.api.request("GET", path, params)

    async def _fetch_quiet(self, path: str, params: Mapping[str, Any]) -> None:
        try:
            await self.api.request("GET", path, params)
        except StripeError as exc:
            if exc.retryable:
                raise
            # The type's own listing reports it; this request only read the clock.

    @property
    def _requests(self) -> anyio.CapacityLimiter:
        limiter = getattr(self, "_request_limiter", None)
        if limiter is None:
            limiter = anyio.CapacityLimiter(self.cfg.sync.concurrency)
            self._request_limiter = limiter
        return limiter
