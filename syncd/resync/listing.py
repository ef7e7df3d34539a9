"""The listing phase of a resync run: workers walk created-time slices newest first and split
busy ones when idle (`lister.Slice.split`); pages go through a bounded queue to `sync.writers`
connections, each page written with its slice's checkpoint in one statement (with children or
rejected objects: one transaction). A page the database refuses for its data is written in
halves and the refused objects quarantined (`write_or_quarantine`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream

from syncd import metrics
from syncd.config import SyncConfig
from syncd.db import Database, Row, Tx
from syncd.errors import (
    DatabaseDataError,
    DatabaseDuplicate,
    DatabaseError,
    StripeError,
    SyncdError,
)
from syncd.lister import Fetch, Page, PageReader, Slice, list_params
from syncd.logs import bind_context, get_logger
from syncd.problems import Problems
from syncd.quarantine import Quarantine, object_id, refusal
from syncd.registry import BY_TABLE, Child, Embed, Resource
from syncd.storable import loads_lax, storable
from syncd.stripe_api import StripeClock
from syncd.versions import Version
from syncd.writer import Writer

log = get_logger(__name__)

# A running slice is split only when it probably holds more than this many objects.
SPLIT_MIN_OBJECTS = 300
PROGRESS_INTERVAL = 5.0
# A listing that wrote nothing for this long is reported (status, metrics), not stopped: a
# Stripe that answers 429 for minutes, a writer waiting on a lock.
STALL_AFTER = 600.0
STALL_PROBLEM = "resync_stalled"


@dataclass
class RunState:
    slices: list[Slice] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    disabled_children: set[str] = field(default_factory=set)
    # Per-parent lists that answered 404 for listed parents, by child table (lister).
    missing_children: dict[tuple[str, str], int] = field(default_factory=dict)
    # The latest estimate per table: (requests left, seconds left) at the budget (resync/eta.py).
    estimates: dict[str, tuple[int, float]] = field(default_factory=dict)
    floors: set[str] = field(default_factory=set)  # estimates that are only a floor


@dataclass(frozen=True)
class RunContext:
    """What the listing and the sweep of one run work with, handed over by the run."""

    db: Database
    writer: Writer
    fetch: Fetch  # a GET under the run's concurrency limit
    clock: StripeClock
    api_version: str
    run_id: int
    resources: list[Resource]
    children: Mapping[str, list[tuple[Child, Resource]]]  # child lists of each listed table
    # Objects of mirrored types each listed table's pages embed (registry.Embed).
    embeds: Mapping[str, list[Embed]]
    state: RunState
    # Requests waiting for the rate budget now (RateLimiter.backlog).
    backlog: Callable[[], int] = lambda: 0


class Listing:
    """The listing phase: workers walk slices, writers commit pages with their checkpoints."""

    def __init__(
        self, run: RunContext, quarantine: Quarantine, problems: Problems, sync: SyncConfig
    ):
        self.db, self.writer, self.fetch, self.clock = run.db, run.writer, run.fetch, run.clock
        self.api_version, self.run_id, self.state = run.api_version, run.run_id, run.state
        self.quarantine, self.problems, self.sync = quarantine, problems, sync
        self.backlog = run.backlog
        state = run.state
        self.resources = {res.table: res for res in run.resources}
        # Pages carry the children their objects embed; per-parent lists follow the listing
        # (resync/parents.py) so that they never hold it back.
        self.readers = {
            res.table: PageReader(
                res,
                [(c, r) for c, r in run.children[res.table] if c.inline_field],
                run.fetch,
                state.disabled_children,
                run.embeds.get(res.table, []),
            )
            for res in run.resources
        }
        for reader in self.readers.values():
            reader.missing_children = state.missing_children  # one count for the run
        self.changed = anyio.Event()
        self.split_lock = anyio.Lock()
        self.next_no: dict[tuple[str, int], int] = {}
        for s in state.slices:
            k = (s.table, s.variant)
            self.next_no[k] = max(self.next_no.get(k, 0), s.no + 1)

    def _active(self, table: str) -> bool:
        return table in self.resources and self.state.status.get(table, "listing") == "listing"

    async def list_all(self) -> None:
        if not any(self._active(s.table) and not s.done for s in self.state.slices):
            await self._mark_listed()
            return
        cfg = self.sync
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
        """Split the busy slice with the most objects probably left (synchronous: see lister).
        Not while requests wait for the rate budget: another slice would not list faster, only
        end in one more part-filled page (under Stripe's limits, 20 % more requests)."""
        if self.backlog():
            return None
        now = self.clock.now()
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
            if live[(s.table, s.variant)] >= self.sync.slices:
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
        async def go(conn: Tx) -> None:
            await conn.execute(
                "resync_insert_slice",
                self.run_id,
                older.table,
                older.variant,
                older.no,
                older.lo,
                older.hi,
            )
            await conn.execute(
                "resync_set_lo",
                self.run_id,
                running.table,
                running.variant,
                running.no,
                running.lo,
            )

        await self.db.transact(go)

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
                params = list_params(
                    res, s.variant, s, [c for c, _ in reader.children], reader.embeds
                )
                try:
                    reply = await self.fetch(res.list_path, params)
                except StripeError as exc:
                    if exc.retryable or exc.code == "account_invalid":
                        raise  # Connect: the account, not the type, is gone: the run fails
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
        async with receive, self.db.session() as conn:
            async for page in receive:
                try:
                    if page.children or page.rejected:
                        async with conn.transaction():
                            await self._write_page(conn, page)
                            await self._write_extras(conn, page)
                    else:
                        await self._write_page(conn, page, alone=True)  # atomic by itself
                except (DatabaseError, orjson.JSONEncodeError) as exc:
                    if not object_fault(exc):
                        raise
                    await self._write_split(conn, page, exc)
                metrics.resync_objects.labels(page.resource.table).inc(page.count)
                page.committed.set()

    async def _write_split(self, conn: Tx, page: Page, error: BaseException) -> None:
        """A page PostgreSQL refused for its data: its objects are written in halves down to the
        ones that fail, which are quarantined; the rest of the page, its children and the
        slice's checkpoint are written as usual, in one transaction."""
        res = page.resource
        log.warning("resync_page_refused", table=res.table, objects=page.count, error=str(error))
        objects = loads_lax(page.data)
        source = f"resync run {self.run_id}"
        w, q = self.writer, self.quarantine
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
                "resync_checkpoint",
                res.table,
                self.run_id,
                s.variant,
                s.no,
                *page.checkpoint,
            )
        s.fresh = False

    async def _write_page(self, conn: Tx, page: Page, *, alone: bool = False) -> None:
        """The page's objects, the NOTIFY of their changes and the slice's checkpoint: one
        statement (resync_write_page), one round trip.

        A page `alone` (not in a transaction) of a slice whose last page was all new objects
        is tried as a plain insert first: a cold resync then writes nearly every page without
        the upsert's conflict machinery. If a row is there after all the statement fails having
        changed nothing, and the page is written as an upsert.
        """
        w = self.writer
        res = page.resource
        s = page.slice
        args = (
            storable(page.data),
            w.account_id,
            self.api_version,
            page.version.bounds(),
            w.notify_channel,
            res.table,  # the slice's table too
            self.run_id,
            s.variant,
            s.no,
            *page.checkpoint,
        )
        rows: list[Row] | None = None
        if alone and s.fresh:
            try:
                rows = await conn.fetch("resync_insert_page", *args, table=res.table)
                metrics.resync_insert_pages.labels(res.table, "inserted").inc()
            except DatabaseDuplicate:
                metrics.resync_insert_pages.labels(res.table, "conflict").inc()
        if rows is None:
            rows = await conn.fetch("resync_write_page", *args, table=res.table)
        ops = {r["op"]: r["n"] for r in rows}
        s.fresh = bool(ops.get("insert")) and not ops.keys() - {"insert", "notifications"}
        w.count_rows(res, ops)

    async def _write_extras(self, conn: Tx, page: Page) -> None:
        """Children and rejected objects of a page, in the page's transaction."""
        w = self.writer
        # Children with the same table and version (the page's inline lists share its version)
        # are written together: two statements per child table, not two per parent.
        owned: dict[tuple[str, Version], dict[str, list[dict[str, Any]]]] = {}
        loose: dict[tuple[str, Version], list[dict[str, Any]]] = {}
        for c in page.children:
            key = (c.resource.table, c.version)
            if c.resource.owned and c.parent_id is not None:
                owned.setdefault(key, {})[c.parent_id] = c.objects
            elif c.objects:
                loose.setdefault(key, []).extend(c.objects)
        for (table, version), sets in owned.items():
            await w.replace_children_of_many(
                conn,
                BY_TABLE[table],
                sets,
                version=version,
                api_version=self.api_version,
                source=f"resync run {self.run_id}",
            )
        for (table, version), objects in loose.items():
            await w.upsert(
                conn,
                BY_TABLE[table],
                objects,
                version=version,
                api_version=self.api_version,
                source=f"resync run {self.run_id}",
            )
        await self._quarantine_rejected(conn, page)

    async def _quarantine_rejected(self, conn: Tx, page: Page) -> None:
        """Objects the lister could not accept (not of the type, no id), kept with the reason."""
        res = page.resource
        for bad in page.rejected:
            await self.quarantine.put(
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
        """One line per type every few seconds: objects, pages, rate, and the requests left
        and ETA at the rate budget (resync/eta.py)."""
        last: dict[str, int] = {}
        stamp = moved = time.monotonic()
        while True:
            await anyio.sleep(PROGRESS_INTERVAL)
            now = time.monotonic()
            elapsed, stamp = now - stamp, now
            if now - moved > STALL_AFTER:
                self.problems.report(
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
                self.problems.clear(STALL_PROBLEM)
                rate = (objects - last.get(table, 0)) / elapsed
                requests_left, eta = self.state.estimates.get(table, (None, None))
                last[table] = objects
                log.info(
                    "resync_progress",
                    table=table,
                    objects=objects,
                    pages=sum(s.pages for s in mine),
                    rate=round(rate),
                    slices_left=sum(1 for s in mine if not s.done),
                    requests_left=requests_left,
                    eta_seconds=None if eta is None else round(eta),
                    at_least=table in self.state.floors,
                )


def object_fault(exc: BaseException) -> bool:
    """Whether a failed write blames the data written (quarantine it) rather than the server."""
    return isinstance(exc, orjson.JSONEncodeError | DatabaseDataError)


async def write_or_quarantine(
    conn: Tx,
    writer: Writer,
    quarantine: Quarantine,
    res: Resource,
    objects: list[Any],
    *,
    version: Version,
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
                    conn,
                    res,
                    batch,
                    version=version,
                    api_version=api_version,
                    parent_id=parent_id,
                    source=source,
                )
        except (DatabaseError, orjson.JSONEncodeError) as exc:
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
        await writer.tombstone_missing_children(
            conn, res, parent_id, keep, version=version, source=source
        )
    return bad
