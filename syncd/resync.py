"""Full resync: re-list every mirrored type, fast, resumable, and provably complete.

A run takes `started_version` (Stripe's clock) before its first list request, then lists every
(type, list variant) newest first in created-time slices that idle workers split further
(`lister.Slice.split`), with `sync.concurrency` requests in flight under the shared rate limiter.
Pages go through a bounded queue to `sync.writers` database connections; each page and its slice's
checkpoint are one statement (with its children: one transaction), so a killed run resumes from its
checkpoints and ends exactly as an uninterrupted one would (writes are idempotent under the version
guard).

Completeness: every row this run confirmed carries a version newer than `started_version`. Once a
type with a complete list (`Resource.complete_list`) has been listed, its live rows older than
that were not shown: each is retrieved once, and tombstoned only when Stripe says it is gone
(404 or `deleted: true`); otherwise the fresh copy is written. The retrieve costs one request per
vanished object and protects against list races (a price toggled between the active=true and
active=false lists while they ran). Owned children of a deleted parent are tombstoned with it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import asyncpg
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream

from syncd import metrics
from syncd.config import Config
from syncd.db import Database, is_data_error
from syncd.errors import DatabaseDataError, StripeError, StripeNotFound, SyncdError, leaf_errors
from syncd.lifecycle import Lifecycle
from syncd.lister import Page, PageReader, Slice, check_object, list_params
from syncd.logs import bind_context, get_logger
from syncd.problems import Problems
from syncd.quarantine import Quarantine, object_id, refusal
from syncd.registry import BY_TABLE, Child, Resource, selected
from syncd.storable import loads_lax, storable
from syncd.stripe_api import Reply, StripeAPI
from syncd.writer import Writer

log = get_logger(__name__)

# Rows confirmed up to this many seconds before started_version are left alone by the sweep:
# an event for an object created just after the start carries its whole-second `created`, which
# may read up to a second earlier than our clock estimate (which itself is within one second).
SWEEP_MARGIN = 2.0
# A running slice is split only when it probably holds more than this many objects.
SPLIT_MIN_OBJECTS = 300
PROGRESS_INTERVAL = 5.0
# A listing that wrote nothing for this long is reported (status, metrics), not stopped: a
# Stripe that answers 429 for minutes, a writer waiting on a lock.
STALL_AFTER = 600.0
STALL_PROBLEM = "resync_stalled"
SWEEP_BATCH = 100


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


async def has_completed_resync(db: Database) -> bool:
    """Whether a resync of every type ever finished (the mirror has been filled once)."""
    return bool(await db.fetchval("resync_has_completed"))


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

    # ---- scope and runs ---------------------------------------------------------------------

    def scope(self, tables: Sequence[str] | None) -> list[str] | None:
        return resolve_scope(self.cfg, tables)

    async def enqueue(self, tables: Sequence[str] | None, reason: str) -> int:
        """A pending run for this scope (an unfinished one of the same scope is reused)."""
        scope = self.scope(tables)
        row = await self.db.fetchrow("resync_find_unfinished", scope)
        if row is not None:
            return int(row["run_id"])
        return int(await self.db.fetchval("resync_create_run", scope, reason))

    async def run(self, tables: Sequence[str] | None = None, *, reason: str) -> ResyncResult:
        """Resync `tables` (None: every mirrored type), resuming an unfinished run of that scope."""
        scope = self.scope(tables)
        async with self._lock:
            row = await self.db.fetchrow("resync_find_unfinished", scope)
            resumed = row is not None and row["status"] == "running"
            if row is None:
                run_id = int(await self.db.fetchval("resync_create_run", scope, reason))
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
            listing = _Listing(self, run_id, version, resources, state)
            await listing.list_all()
            await _Sweep(self, run_id, version, resources, state).sweep_all()
            await self._retry_quarantine(run_id, run_started_at, version, resources, state)
            problems = await self._report_problems(run_id, state)
        except BaseExceptionGroup as group:
            # Task groups wrap errors; callers decide on syncd's classes (retryable or not).
            inner = _first_error(group)
            if inner is None:
                raise
            raise inner from group
        finally:
            metrics.resync_running.set(0)
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

    async def _report_problems(self, run_id: int, state: _RunState) -> list[str]:
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
        state: _RunState,
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

        async def go(conn: asyncpg.Connection) -> None:
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

        await self.db.run(go)

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

    async def _load(self, run_id: int, resources: list[Resource]) -> _RunState:
        previous = {
            r["table_name"]: r["objects"] for r in await self.db.fetch("resync_previous_objects")
        }

        async def init(conn: asyncpg.Connection) -> None:
            for res in resources:
                await conn.execute(self.db.sql("resync_init_table"), run_id, res.table)
                for variant in range(len(res.list_variants)):
                    await conn.execute(
                        self.db.sql("resync_insert_slice"), run_id, res.table, variant, 0, 0, None
                    )

        await self.db.run(init)
        state = _RunState()
        for r in await self.db.fetch("resync_tables_of", run_id):
            state.status[r["table_name"]] = r["status"]
            if r["error"]:
                state.errors[r["table_name"]] = r["error"]
        for r in await self.db.fetch("resync_slices_of", run_id):
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


def page_statement(db: Database, writer: Writer, resource: Resource, *, new: bool = False) -> str:
    """resync_write_page for one table: its upsert embedded (see resync.sql), or with `new` its
    plain insert (Writer.insert_sql)."""
    sql = writer.insert_sql(resource) if new else writer.upsert_sql("upsert_objects", resource)
    return db.sql("resync_write_page").replace("{upsert}", sql.rstrip().rstrip(";"))


@dataclass
class _RunState:
    slices: list[Slice] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    disabled_children: set[str] = field(default_factory=set)
    # Per-parent lists that answered 404 for listed parents, by child table (lister).
    missing_children: dict[tuple[str, str], int] = field(default_factory=dict)


class _Listing:
    """The listing phase: workers walk slices, writers commit pages with their checkpoints."""

    def __init__(
        self,
        resync: Resync,
        run_id: int,
        version: float,
        resources: list[Resource],
        state: _RunState,
    ):
        self.r = resync
        self.db = resync.db
        self.run_id = run_id
        self.version = version
        self.state = state
        self.resources = {res.table: res for res in resources}
        self.readers = {
            res.table: PageReader(
                res, resync.child_lists(res), resync.fetch, state.disabled_children
            )
            for res in resources
        }
        for reader in self.readers.values():
            reader.missing_children = state.missing_children  # one count for the run
        self.changed = anyio.Event()
        self.split_lock = anyio.Lock()
        self.next_no: dict[tuple[str, int], int] = {}
        for s in state.slices:
            k = (s.table, s.variant)
            self.next_no[k] = max(self.next_no.get(k, 0), s.no + 1)
        self.api_version = resync.cfg.stripe.api_version
        # resync_write_page of each (table, plain insert or not)
        self._page_sql: dict[tuple[str, bool], str] = {}

    def _active(self, table: str) -> bool:
        return table in self.resources and self.state.status.get(table, "listing") == "listing"

    async def list_all(self) -> None:
        if not any(self._active(s.table) and not s.done for s in self.state.slices):
            await self._mark_listed()
            return
        cfg = self.r.cfg.sync
        send, receive = anyio.create_memory_object_stream[Page](max_buffer_size=cfg.writers * 2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._progress)
            async with anyio.create_task_group() as writers:
                for _ in range(cfg.writers):
                    writers.start_soon(self._write_loop, receive.clone())
                receive.close()
                async with send, anyio.create_task_group() as workers:
                    for _ in range(cfg.concurrency):
                        workers.start_soon(self._worker, send.clone())
            tg.cancel_scope.cancel()
        await self._mark_listed()

    async def _mark_listed(self) -> None:
        for table in self.resources:
            if self.state.status.get(table) == "listing":
                self.state.status[table] = "listed"
                await self.db.execute("resync_set_table", self.run_id, table, "listed", None)

    def _signal(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def _take(self) -> Slice | None:
        while True:
            for s in self.state.slices:
                if not s.done and not s.busy and self._active(s.table):
                    s.busy = True
                    return s
            async with self.split_lock:
                pair = self._split()
                if pair is not None:
                    await self._persist_split(*pair)
                    return pair[1]
            if not any(s.busy and self._active(s.table) for s in self.state.slices):
                return None
            await self.changed.wait()

    def _split(self) -> tuple[Slice, Slice] | None:
        """Split the busy slice with the most objects probably left (synchronous: see lister)."""
        now = self.r.api.clock.now()
        live: dict[tuple[str, int], int] = {}
        for s in self.state.slices:
            if not s.done:
                live[(s.table, s.variant)] = live.get((s.table, s.variant), 0) + 1
        best: Slice | None = None
        best_left = float(SPLIT_MIN_OBJECTS)
        for s in self.state.slices:
            if not s.busy or s.done or not self._active(s.table):
                continue
            if not self.resources[s.table].created_filter:
                continue
            if live[(s.table, s.variant)] >= self.r.cfg.sync.slices:
                continue
            left = s.remaining_estimate(now)
            if left > best_left:
                best, best_left = s, left
        if best is None:
            return None
        k = (best.table, best.variant)
        older = best.split(self.next_no.get(k, 1))
        if older is None:
            return None
        self.next_no[k] = older.no + 1
        older.busy = True
        self.state.slices.append(older)
        return best, older

    async def _persist_split(self, running: Slice, older: Slice) -> None:
        async def go(conn: asyncpg.Connection) -> None:
            await conn.execute(
                self.db.sql("resync_insert_slice"),
                self.run_id,
                older.table,
                older.variant,
                older.no,
                older.lo,
                older.hi,
            )
            await conn.execute(
                self.db.sql("resync_set_lo"),
                self.run_id,
                running.table,
                running.variant,
                running.no,
                running.lo,
            )

        await self.db.run(go)

    async def _worker(self, send: Any) -> None:
        async with send:
            while True:
                s = await self._take()
                if s is None:
                    return
                try:
                    await self._walk(s, send)
                finally:
                    s.busy = False
                    self._signal()

    async def _walk(self, s: Slice, send: Any) -> None:
        res = self.resources[s.table]
        assert res.list_path is not None
        reader = self.readers[s.table]
        previous: Page | None = None
        with bind_context(resource=s.table):
            while not s.done and self._active(s.table):
                params = list_params(res, s.variant, s)
                try:
                    reply = await self.r.fetch(res.list_path, params)
                except StripeError as exc:
                    if exc.retryable:
                        raise
                    if exc.status == 400 and exc.code == "resource_missing" and s.cursor:
                        if previous is not None:
                            await previous.committed.wait()  # its objects are above the restart
                        await self._restart_at_cursor(s)
                        continue
                    await self._unavailable(s.table, exc)
                    break
                page = await reader.read(s, reply)
                if page.done:
                    s.done = True
                self._signal()  # progress known: idle workers may split this slice now
                if previous is not None:
                    await previous.committed.wait()  # checkpoints of one slice stay in order
                await send.send(page)
                previous = page
            if previous is not None:
                await previous.committed.wait()

    async def _restart_at_cursor(self, s: Slice) -> None:
        """The cursor object vanished (Stripe answers 400): go on from its second instead."""
        if s.cursor_created is None:
            raise SyncdError(f"{s.table}: cursor {s.cursor} vanished and its time is unknown")
        log.info("resync_cursor_vanished", cursor=s.cursor, created=s.cursor_created)
        s.hi, s.cursor = s.cursor_created + 1, None
        await self.db.execute("resync_restart_slice", self.run_id, s.table, s.variant, s.no, s.hi)

    async def _unavailable(self, table: str, exc: StripeError) -> None:
        if not self._active(table):
            return
        self.state.status[table] = "unavailable"
        self.state.errors[table] = str(exc)
        log.warning("resync_type_unavailable", table=table, status=exc.status, error=str(exc))
        await self.db.execute("resync_set_table", self.run_id, table, "unavailable", str(exc))

    async def _write_loop(self, receive: MemoryObjectReceiveStream[Page]) -> None:
        # One connection for the whole listing: taking it from the pool for each page cost a
        # reset round trip per page (and the wake-ups of both processes).
        async with receive, self.db.connection() as conn:
            async for page in receive:
                try:
                    if page.children or page.rejected:
                        async with conn.transaction():
                            await self._write_page(conn, page)
                            await self._write_extras(conn, page)
                    else:
                        await self._write_page(conn, page, alone=True)  # atomic by itself
                except (asyncpg.PostgresError, orjson.JSONEncodeError) as exc:
                    if not object_fault(exc):
                        raise
                    await self._write_split(conn, page, exc)
                metrics.resync_objects.labels(page.resource.table).inc(page.count)
                page.committed.set()

    async def _write_split(
        self, conn: asyncpg.Connection, page: Page, error: BaseException
    ) -> None:
        """A page PostgreSQL refused for its data: its objects are written in halves down to the
        ones that fail, which are quarantined; the rest of the page, its children and the
        slice's checkpoint are written as usual, in one transaction."""
        res = page.resource
        log.warning("resync_page_refused", table=res.table, objects=page.count, error=str(error))
        objects = loads_lax(page.data)
        source = f"resync run {self.run_id}"
        w, q = self.r.writer, self.r.quarantine
        async with conn.transaction():
            bad = await write_or_quarantine(
                conn,
                w,
                q,
                res,
                objects,
                version=page.version,
                api_version=self.api_version,
                source=source,
                run_id=self.run_id,
            )
            for c in page.children:
                if c.parent_id is not None and c.parent_id in bad:
                    continue  # comes with its parent once the parent can be stored
                await write_or_quarantine(
                    conn,
                    w,
                    q,
                    c.resource,
                    c.objects,
                    version=c.version,
                    api_version=self.api_version,
                    source=source,
                    run_id=self.run_id,
                    parent_id=c.parent_id if c.resource.owned else None,
                )
            await self._quarantine_rejected(conn, page)
            s = page.slice
            await conn.execute(
                self.db.sql("resync_checkpoint"),
                res.table,
                self.run_id,
                s.variant,
                s.no,
                *page.checkpoint,
            )
        s.fresh = False

    async def _write_page(
        self, conn: asyncpg.Connection, page: Page, *, alone: bool = False
    ) -> None:
        """The page's objects, the NOTIFY of their changes and the slice's checkpoint: one
        statement (resync_write_page), one round trip.

        A page `alone` (not in a transaction) of a slice whose last page was all new objects
        is tried as a plain insert first: a cold resync then writes nearly every page without
        the upsert's conflict machinery. If a row is there after all the statement fails having
        changed nothing, and the page is written as an upsert.
        """
        w = self.r.writer
        res = page.resource
        s = page.slice
        args = (
            storable(page.data),
            w.account_id,
            self.api_version,
            page.version,
            w.notify_channel,
            res.table,  # the slice's table too
            self.run_id,
            s.variant,
            s.no,
            *page.checkpoint,
        )
        rows: list[asyncpg.Record] | None = None
        if alone and s.fresh:
            try:
                rows = await conn.fetch(self._statement(res, new=True), *args)
                metrics.resync_insert_pages.labels(res.table, "inserted").inc()
            except asyncpg.UniqueViolationError:
                metrics.resync_insert_pages.labels(res.table, "conflict").inc()
        if rows is None:
            rows = await conn.fetch(self._statement(res, new=False), *args)
        ops = {r["op"]: r["n"] for r in rows}
        s.fresh = bool(ops.get("insert")) and not ops.keys() - {"insert", "notifications"}
        w.count_rows(res, ops)

    def _statement(self, res: Resource, *, new: bool) -> str:
        sql = self._page_sql.get((res.table, new))
        if sql is None:
            sql = self._page_sql[(res.table, new)] = page_statement(
                self.db, self.r.writer, res, new=new
            )
        return sql

    async def _write_extras(self, conn: asyncpg.Connection, page: Page) -> None:
        """Children and rejected objects of a page, in the page's transaction."""
        w = self.r.writer
        # Children with the same table and version (the page's inline lists share its version)
        # are written together: two statements per child table, not two per parent.
        owned: dict[tuple[str, float], dict[str, list[dict[str, Any]]]] = {}
        loose: dict[tuple[str, float], list[dict[str, Any]]] = {}
        for c in page.children:
            key = (c.resource.table, c.version)
            if c.resource.owned and c.parent_id is not None:
                owned.setdefault(key, {})[c.parent_id] = c.objects
            elif c.objects:
                loose.setdefault(key, []).extend(c.objects)
        for (table, version), sets in owned.items():
            await w.replace_children_of_many(
                conn, BY_TABLE[table], sets, version=version, api_version=self.api_version
            )
        for (table, version), objects in loose.items():
            await w.upsert(
                conn, BY_TABLE[table], objects, version=version, api_version=self.api_version
            )
        await self._quarantine_rejected(conn, page)

    async def _quarantine_rejected(self, conn: asyncpg.Connection, page: Page) -> None:
        """Objects the lister could not accept (not of the type, no id), kept with the reason."""
        res = page.resource
        for bad in page.rejected:
            await self.r.quarantine.put(
                conn,
                table=res.table,
                raw=bad.raw,
                reason=bad.reason,
                source=f"resync run {self.run_id}",
                run_id=self.run_id,
            )
        if page.rejected:
            metrics.resync_rejected.labels(res.table).inc(len(page.rejected))

    async def _progress(self) -> None:
        """One line per type every few seconds: objects, pages, rate and a rough ETA."""
        last: dict[str, int] = {}
        stamp = moved = time.monotonic()
        while True:
            await anyio.sleep(PROGRESS_INTERVAL)
            now, clock = time.monotonic(), self.r.api.clock.now()
            elapsed, stamp = now - stamp, now
            if now - moved > STALL_AFTER:
                self.r.problems.report(
                    STALL_PROBLEM,
                    f"resync run {self.run_id} has listed nothing for {(now - moved) / 60:.0f} min",
                    blocking=False,
                )
            for table in self.resources:
                mine = [s for s in self.state.slices if s.table == table]
                objects = sum(s.objects for s in mine)
                if objects == last.get(table, 0):
                    continue
                moved = now
                self.r.problems.clear(STALL_PROBLEM)
                rate = (objects - last.get(table, 0)) / elapsed
                left = sum(s.remaining_estimate(clock) for s in mine)
                last[table] = objects
                log.info(
                    "resync_progress",
                    table=table,
                    objects=objects,
                    pages=sum(s.pages for s in mine),
                    rate=round(rate),
                    slices_left=sum(1 for s in mine if not s.done),
                    eta_seconds=round(left / rate) if rate > 0 else None,
                )


class _Sweep:
    """After the listing: tombstone what complete lists no longer show, once Stripe confirms."""

    def __init__(
        self,
        resync: Resync,
        run_id: int,
        version: float,
        resources: list[Resource],
        state: _RunState,
    ):
        self.r = resync
        self.db = resync.db
        self.run_id = run_id
        self.threshold = version - SWEEP_MARGIN
        self.resources = resources
        self.state = state

    async def sweep_all(self) -> None:
        for res in self.resources:
            if self.state.status.get(res.table) != "listed":
                continue
            with bind_context(resource=res.table):
                if res.complete_list:
                    await self._sweep_table(res, res.table)
                for child, child_res in self.r.child_lists(res):
                    if child_res.owned:
                        await self._sweep_orphans(res, child_res)
                    elif (
                        res.complete_list
                        and not child.inline_field
                        and child_res.table not in self.state.disabled_children
                    ):
                        await self._sweep_table(child_res, res.table)
            self.state.status[res.table] = "swept"
            await self.db.execute("resync_set_table", self.run_id, res.table, "swept", None)

    async def _sweep_table(self, res: Resource, owner: str) -> None:
        """`owner`: the listed table the counts are kept under (children count with parents)."""
        after = ""
        while True:
            rows = await self._unconfirmed("resync_unconfirmed", res, after, SWEEP_BATCH)
            if not rows:
                return
            ids = [r["id"] for r in rows]
            after = ids[-1]
            if not await self._verify(res, ids, owner):
                return

    async def _verify(self, res: Resource, ids: list[str], owner: str) -> bool:
        """Retrieve each candidate: tombstone the gone ones, refresh the ones still there."""
        assert res.retrieve_path is not None
        gone: list[tuple[str, float]] = []
        alive: list[tuple[dict[str, Any], float]] = []
        denied: list[StripeError] = []

        async def one(oid: str) -> None:
            try:
                reply = await self.r.fetch(res.retrieve_path.replace("{id}", oid), {})  # type: ignore[union-attr]
            except StripeNotFound:
                gone.append((oid, self.r.api.clock.now()))
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
            await self.db.run(lambda c: self._apply(c, res, gone, alive, owner))
        return not denied

    async def _apply(
        self,
        conn: asyncpg.Connection,
        res: Resource,
        gone: list[tuple[str, float]],
        alive: list[tuple[dict[str, Any], float]],
        owner: str,
    ) -> None:
        w = self.r.writer
        count = 0
        if gone:
            version = max(v for _, v in gone)
            count = len((await w.tombstone(conn, res, [i for i, _ in gone], version=version)).ops)
        if alive:
            await w.upsert(
                conn,
                res,
                [o for o, _ in alive],
                version=min(v for _, v in alive),
                api_version=self.r.cfg.stripe.api_version,
            )
        if count:
            await conn.execute(
                self.db.sql("resync_count_tombstones"), self.run_id, res.table, count
            )
            metrics.resync_tombstoned.labels(res.table).inc(count)
            log.info("resync_tombstoned", table=res.table, count=count)

    async def _unconfirmed(
        self, query: str, res: Resource, after: str, limit: int
    ) -> list[asyncpg.Record]:
        sql = self.db.table_sql(query, res.table)

        async def go(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await conn.fetch(sql, self.threshold, after, limit)
            return rows

        return await self.db.run(go, transaction=False)

    async def _sweep_orphans(self, parent: Resource, res: Resource) -> None:
        """Owned children nobody confirmed whose parent is deleted go with it."""
        after = ""
        while True:
            rows = await self._unconfirmed(
                "resync_unconfirmed_children", res, after, SWEEP_BATCH * 10
            )
            if not rows:
                return
            after = rows[-1]["id"]
            parents = {r["parent_id"] for r in rows}

            async def go(
                conn: asyncpg.Connection, rows: list[Any] = rows, parents: set[str] = parents
            ) -> None:
                states = await self.r.writer.versions(conn, parent, parents)
                dead = [r["id"] for r in rows if states.get(r["parent_id"], (0.0, False))[1]]
                if not dead:
                    return
                done = await self.r.writer.tombstone(
                    conn, res, dead, version=self.r.api.clock.now()
                )
                if done.ops:
                    await conn.execute(
                        self.db.sql("resync_count_tombstones"),
                        self.run_id,
                        res.table,
                        len(done.ops),
                    )

            await self.db.run(go)


def object_fault(exc: BaseException) -> bool:
    """Whether a failed write blames the data written (quarantine it) rather than the server."""
    if isinstance(exc, orjson.JSONEncodeError | DatabaseDataError):
        return True
    return isinstance(exc, asyncpg.PostgresError) and is_data_error(exc.sqlstate)


async def write_or_quarantine(
    conn: asyncpg.Connection,
    writer: Writer,
    quarantine: Quarantine,
    res: Resource,
    objects: list[Any],
    *,
    version: float,
    api_version: str | None,
    source: str,
    run_id: int | None = None,
    parent_id: str | None = None,
) -> set[str]:
    """Write `objects` (children of `parent_id` when owned) in halves down to the ones the
    database refuses for their data, each in a savepoint; quarantine those. Returns their ids.
    An owned child set keeps its refused members' rows (never tombstoned for failing)."""
    bad: set[str] = set()

    async def attempt(batch: list[Any]) -> None:
        if not batch:
            return
        try:
            async with conn.transaction():
                await writer.upsert(
                    conn, res, batch, version=version, api_version=api_version, parent_id=parent_id
                )
        except (asyncpg.PostgresError, orjson.JSONEncodeError) as exc:
            if not object_fault(exc):
                raise
            if len(batch) > 1:
                mid = len(batch) // 2
                await attempt(batch[:mid])
                await attempt(batch[mid:])
                return
            await quarantine.put(
                conn,
                table=res.table,
                raw=batch[0],
                reason=refusal(exc),
                source=source,
                run_id=run_id,
            )
            oid = object_id(batch[0])
            if oid is not None:
                bad.add(oid)

    await attempt(list(objects))
    if res.owned and parent_id is not None:
        keep = [oid for o in objects if (oid := object_id(o)) is not None]
        await writer.tombstone_missing_children(conn, res, parent_id, keep, version=version)
    return bad


def _first_error(group: BaseExceptionGroup[Any]) -> BaseException | None:
    """The first syncd error inside (nested) task-group errors, else the first other one."""
    leaves = leaf_errors(group)
    for e in leaves:
        if isinstance(e, SyncdError):
            return e
    others = [e for e in leaves if not isinstance(e, anyio.get_cancelled_exc_class())]
    return others[0] if others else None
