"""The event stream: incremental sync from Stripe's Events API, without webhooks.

Stripe lists events newest first, at one-second resolution, and an event can become visible
after later ones (SYNC_PITFALLS 1-3). So the stream never trusts list order:

* head poll (every `events.poll_interval`): the window `created >= cursor - 2 s` is drained page
  by page with `starting_after`; the daemon sorts the events itself and applies them per object
  (`syncd.apply`). The cursor then moves to the Stripe time the poll started at.
* overlap sweep (every `events.overlap_interval`, at start and after any failed poll): the
  `events.overlap` seconds below the head window (that is, below the cursor) are listed again,
  catching events that became visible late, also those that did while syncd was stopped.
* the ledger (`{state}.events_ledger`) records every event once, with its outcome; anything
  listed twice is skipped, so an event takes effect once. The ledger rows, the mirror writes and
  the cursor of a batch commit in one transaction: a crash anywhere repeats nothing and loses
  nothing.

The cursor is taken before the first full resync lists anything (a daemon startup step), so a
change made during the resync is streamed afterwards. A cursor older than
`events.max_cursor_age_days`, or one Stripe refuses as expired, restarts at now and asks for a
full resync in the same transaction (Stripe keeps events for 30 days only).
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import orjson
from anyio.streams.memory import MemoryObjectSendStream

from syncd import metrics
from syncd.apply import Applier, Event, Group
from syncd.config import Config
from syncd.db import Database, Tx
from syncd.errors import (
    CursorExpired,
    DatabaseDataError,
    DatabaseError,
    StripeError,
    SyncdError,
    one_error,
)
from syncd.lifecycle import Backoff, Lifecycle
from syncd.logs import get_logger
from syncd.registry import BY_TABLE, Resource, selected
from syncd.runtime import Runtime, State
from syncd.stripe_api import StripeAPI
from syncd.writer import Writer

log = get_logger(__name__)

# Seconds below the cursor that every head poll lists again. Our estimate of Stripe's clock is
# within one second of it (the Date header has one-second resolution); the ledger skips repeats.
HEAD_MARGIN = 2
# Events applied per transaction while draining a large window (bounded memory, big statements).
MAX_BATCH = 1000
# Batches of one window in flight at once: preparing one while the database writes another.
APPLY_CONCURRENCY = 2
PAGE = 100
DAY = 86400.0
WRITE_PROBLEM = "events_write"
PRUNE_EVERY = 3600.0
# Objects with overlapping versions fetched again per poll, at most.
SETTLE_BATCH = 100
# List pages walked per poll when a type's queued objects are settled by listing it all.
RELIST_PAGES = 10


@dataclass
class Relist:
    """A walk of a type's whole list that settles its queued objects: started when more of
    them are due than pages list the whole type, so one list costs fewer requests than one
    retrieve each (a renewal storm queues one customer per finalized invoice, and a retrieve
    endpoint allows 25 requests/s)."""

    resource: Resource
    due: float  # entries due before this Stripe time are settled by the walk's pages
    variant: int = 0
    after: str | None = None


class Pacer(Protocol):
    """Sets the pace of a stream's polls (Connect: an account without recent events is polled
    less often, `syncd.accounts.AccountPacer`), and hears how each went."""

    interval: float  # seconds between polls now
    wake: anyio.Event  # set: poll now (something hinted at activity)

    async def polled(self, result: PollResult) -> float:
        """A poll worked: the seconds until the next one."""

    async def failed(self, error: SyncdError) -> None:
        """A poll failed (it is retried with backoff)."""


@dataclass
class PollResult:
    listed: int = 0  # events listed
    fresh: int = 0  # events not in the ledger yet
    changed: int = 0  # mirror rows changed
    ignored: int = 0  # events recorded as ignored
    restarted: bool = False  # the cursor expired and was restarted (a full resync follows)


def _removal(tables: list[str], ids: list[str], due: float) -> Callable[[Tx], Awaitable[None]]:
    """Removes the refetch_queue entries of (tables, ids) due before `due`, in a transaction."""

    async def done(conn: Tx) -> None:
        await conn.execute("refetch_queue_done", tables, ids, due)

    return done


def _second_boundary(events: list[Event]) -> int:
    """Where newest-first `events` can be cut with no second on both sides (0: nowhere yet)."""
    last = events[-1].get("created")
    for i in range(len(events) - 1, 0, -1):
        if events[i - 1].get("created") != last:
            return i
    return 0


class EventStream:
    def __init__(
        self,
        cfg: Config,
        db: Database,
        api: StripeAPI,
        writer: Writer,
        *,
        resources: Sequence[Resource] | None = None,
        batch_size: int = MAX_BATCH,
        state: State | None = None,
    ):
        self.cfg = cfg
        self.batch_size = batch_size
        self.db = db
        self.api = api
        # The account whose cursor this stream moves (its writer's), and whose queued
        # refetches it settles (Connect; None: every one, as with one account).
        self.account = writer.account_id
        self.rows_of = writer.rows_of
        chosen = (
            resources if resources is not None else selected(cfg.sync.include, cfg.sync.exclude)
        )
        self.applier = Applier(cfg, db, api, writer, chosen)
        self._relisting: Relist | None = None
        self._unlistable: set[str] = set()  # types whose list Stripe refused to a relist
        # The daemon's state (problems, last successful poll); a stream of its own otherwise.
        self.state = state if state is not None else State()
        self.problems = self.state.problems
        self._last_age_warning = -math.inf
        # Connect: how often this account is polled, and what its polls tell (syncd.accounts).
        self.pacer: Pacer | None = None
        # Connect: what the platform's own events say about its accounts, recorded in the
        # transaction that records the events (syncd.accounts).
        self.on_commit: Callable[[Tx, list[Event]], Awaitable[None]] | None = None

    # ---- cursor ----------------------------------------------------------------------------

    async def cursor(self) -> float | None:
        row = await self.db.fetchrow("events_cursor_get", self.account)
        return None if row is None else float(row["position"])

    async def take_cursor(self) -> float:
        """Startup step: take the cursor now, before any full resync starts listing."""
        position = await self.cursor()
        if position is not None:
            return position
        # One request first, so the Stripe clock is synced from its Date header.
        await self.api.request("GET", "/v1/events", {"limit": 1})
        now = self.api.clock.now()
        await self.db.fetchval("events_cursor_take", self.account, now, "first_start")
        position = await self.cursor()
        assert position is not None
        log.info("events_cursor_taken", position=round(position, 3))
        return position

    async def take_cursor_at_start(self, lifecycle: Lifecycle) -> None:
        """The daemon's startup step: take the cursor, waiting out an unreachable Stripe/DB."""
        backoff = Backoff()
        while not lifecycle.stopping.is_set():
            try:
                await self.take_cursor()
                return
            except SyncdError as exc:
                await lifecycle.sleep(backoff.retry_in(exc, "events_cursor_not_taken"))

    async def restart_cursor(self, reason: str) -> None:
        """Start the cursor again at now and ask for a full resync, in one transaction."""
        now = self.api.clock.now()
        requested_by = f"{socket.gethostname()}:{os.getpid()}"

        async def tx(conn: Tx) -> None:
            await conn.execute("events_cursor_restart", self.account, now, reason)
            args = {"reason": reason}
            if self.rows_of is not None:
                args["account"] = self.rows_of  # Connect: this account's resync only
            await conn.fetchrow("submit_request", "resync", args, requested_by)

        await self.db.transact(tx)
        log.warning("events_cursor_restarted", reason=reason, position=round(now, 3))

    async def _too_old(self, position: float, now: float) -> bool:
        age = max(0.0, now - position)
        metrics.events_cursor_age_seconds.set(age)
        events = self.cfg.events
        if age > events.max_cursor_age_days * DAY:
            await self.restart_cursor("cursor_expired")
            return True
        if (
            age > events.warn_cursor_age_days * DAY
            and time.monotonic() - self._last_age_warning > 3600
        ):
            self._last_age_warning = time.monotonic()
            log.warning(
                "events_cursor_old",
                age_days=round(age / DAY, 2),
                resync_after_days=events.max_cursor_age_days,
            )
        return False

    # ---- polling ---------------------------------------------------------------------------

    async def poll_head(
        self, stop: anyio.Event | None = None, reach: float = HEAD_MARGIN
    ) -> PollResult:
        """Drain and apply the events since the cursor (less `reach` seconds); then advance it
        to this poll's start."""
        position = await self.cursor()
        if position is None:
            position = await self.take_cursor()
        started = self.api.clock.now()
        if await self._too_old(position, started):
            return PollResult(restarted=True)
        return await self._drain(math.floor(position - reach), None, started, stop)

    async def sweep(self, stop: anyio.Event | None = None) -> PollResult:
        """List the overlap window below the head window again, for events visible late.

        The window hangs from the cursor, not from now: after a stop or an outage longer than
        `events.overlap`, the events created just before the cursor that became visible while
        syncd was away are still listed (the head poll covers the rest, up to now)."""
        position = await self.cursor()
        if position is None:
            return PollResult()
        low = math.floor(position - self.cfg.events.overlap)
        high = math.floor(position) - HEAD_MARGIN
        if low >= high:
            return PollResult()
        return await self._drain(low, high, None, stop)

    async def _drain(
        self, low: int, high: int | None, advance_to: float | None, stop: anyio.Event | None
    ) -> PollResult:
        """List the window page by page while the previous batch is applied (one batch ahead).

        The cursor moves with the window's last batch only; a stop ends between batches.
        """
        result = PollResult()
        send, receive = anyio.create_memory_object_stream[tuple[list[Event], bool]](1)
        writers = anyio.Semaphore(APPLY_CONCURRENCY)

        async def apply(batch: list[Event]) -> None:
            try:
                await self._apply(batch, None, result)
            finally:
                writers.release()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._list_window, low, high, advance_to, stop, send, result)
                last_batch: list[Event] | None = None
                async with receive, anyio.create_task_group() as batches:
                    async for batch, last in receive:
                        if last:
                            last_batch = batch
                            break
                        await writers.acquire()
                        batches.start_soon(apply, batch)
                # The cursor moves with the last batch, after every earlier one has committed.
                if last_batch is not None:
                    await self._apply(last_batch, advance_to, result)
        except BaseExceptionGroup as errors:
            raise one_error(errors) from None
        return result

    async def _list_window(
        self,
        low: int,
        high: int | None,
        advance_to: float | None,
        stop: anyio.Event | None,
        send: MemoryObjectSendStream[tuple[list[Event], bool]],
        result: PollResult,
    ) -> None:
        created: dict[str, int] = {"gte": low}
        if high is not None:
            created["lt"] = high
        pending: list[Event] = []
        after: str | None = None
        first = True
        async with send:
            while True:
                params: dict[str, Any] = {"limit": PAGE, "created": created}
                if after:
                    params["starting_after"] = after
                try:
                    reply = await self.api.request("GET", "/v1/events", params)
                except CursorExpired:
                    await self.restart_cursor("cursor_expired")
                    result.restarted = True
                    return
                if first and advance_to is not None:
                    # The first answer may move the Stripe clock (after a long pause): check the
                    # cursor's age again before applying anything.
                    first = False
                    position = await self.cursor()
                    if position is not None and await self._too_old(position, reply.version.latest):
                        result.restarted = True
                        return
                page = reply.page()
                data = [e for e in page.get("data") or [] if isinstance(e, dict)]
                result.listed += len(data)
                pending.extend(data)
                more = bool(page.get("has_more")) and bool(data)
                if more:
                    after = str(data[-1].get("id"))
                if not more:
                    await send.send((pending, True))
                    pending = []
                elif len(pending) >= self.batch_size:
                    # Batches applied side by side never share a second: same-second events of
                    # one object meet in one batch, where a tie is seen (and refetched).
                    cut = _second_boundary(pending)
                    if cut:
                        await send.send((pending[:cut], False))
                        pending = pending[cut:]
                if not more or (stop is not None and stop.is_set()):
                    return  # a stop: between batches, the cursor stays where the ledger agrees

    async def _apply(self, events: list[Event], advance_to: float | None, out: PollResult) -> None:
        unique: dict[str, Event] = {}
        for event in events:
            event_id = event.get("id")
            if isinstance(event_id, str) and event_id:
                unique.setdefault(event_id, event)
            else:
                metrics.events_processed.labels("ignored", "no_event_id").inc()
                log.warning("event_without_id", type=event.get("type"))
        known = (
            {r["event_id"] for r in await self.db.fetch("events_ledger_known", list(unique))}
            if unique
            else set()
        )
        fresh = [e for eid, e in unique.items() if eid not in known]
        groups = await self.applier.prepare(fresh) if fresh else []
        try:
            changed = await self.db.transact(lambda conn: self._commit(conn, groups, advance_to))
        except (DatabaseDataError, orjson.JSONEncodeError) as exc:
            # An object's data was refused: find it, quarantine it, write the rest. Any other
            # error (privileges, disk, a read-only server, timeouts) is the server's: it goes
            # up to the loop, which retries the window with the cursor where it was.
            if not groups:
                raise
            changed = await self._commit_isolated(groups, advance_to, exc)
        except DatabaseError as exc:
            if exc.retryable and groups:
                # The server refuses (privileges, disk, a read-only server): /readyz answers
                # 503 and `syncd status` says so until a batch commits again.
                self.problems.report(
                    WRITE_PROBLEM,
                    f"event stream cannot commit (retrying, cursor held): {exc}",
                    blocking=True,
                )
            raise
        self.problems.clear(WRITE_PROBLEM)  # logs problem_cleared with how long it lasted
        self._account(groups, fresh, changed, out)

    async def _commit(self, conn: Tx, groups: list[Group], advance_to: float | None) -> int:
        changed = await self.applier.write(conn, groups) if groups else 0
        if self.on_commit is not None and groups:
            await self.on_commit(conn, [e for g in groups for e in g.events])
        if advance_to is not None:
            await conn.execute("events_cursor_advance", self.account, advance_to)
        return changed

    async def _told(self, conn: Tx, group: Group) -> None:
        if self.on_commit is not None:
            await self.on_commit(conn, group.events)

    async def _commit_isolated(
        self, groups: list[Group], advance_to: float | None, error: BaseException
    ) -> int:
        """A batch whose data the database refused: apply object by object; an object that
        cannot be stored is quarantined (its events recorded as `quarantined`), never dropped."""
        log.warning("events_batch_refused", error=str(error), objects=len(groups))
        changed = 0
        for group in groups:

            async def one(conn: Tx, group: Group = group) -> int:
                written = await self.applier.write(conn, [group])
                await self._told(conn, group)
                return written

            try:
                changed += await self.db.transact(one)
                continue
            except (DatabaseDataError, orjson.JSONEncodeError) as exc:
                refused: BaseException = exc
            if self.applier.without_related(group, refused):
                # What the change implied about other objects (a customer an invoice named)
                # was refused, not the object itself: write it without them. The others'
                # own events bring them, or quarantine them.
                try:
                    changed += await self.db.transact(one)
                    continue
                except (DatabaseDataError, orjson.JSONEncodeError) as exc:
                    refused = exc
            if self.applier.as_stub_tombstone(group):
                # A deletion needs none of the content the database refused: the tombstone
                # is written with the id alone.
                try:
                    changed += await self.db.transact(one)
                    continue
                except (DatabaseDataError, orjson.JSONEncodeError) as exc:
                    refused = exc

            async def keep(conn: Tx, group: Group = group, exc: BaseException = refused) -> None:
                await self.applier.quarantine_group(conn, group, exc)
                await self._told(conn, group)  # what the events say of accounts still counts

            await self.db.transact(keep)
        await self.db.transact(lambda conn: self._commit(conn, [], advance_to))
        return changed

    def _account(
        self, groups: list[Group], fresh: list[Event], changed: int, out: PollResult
    ) -> None:
        out.fresh += len(fresh)
        out.changed += changed
        if not groups:
            return
        now = self.api.clock.now()
        for group in groups:
            metrics.events_processed.labels(group.outcome, group.reason.split(":")[0]).inc(
                len(group.events)
            )
            if group.outcome == "ignored":
                out.ignored += len(group.events)
        for event in fresh:
            metrics.events_lag_seconds.observe(max(0.0, now - int(event.get("created") or 0)))
        log.info(
            "events_batch_applied",
            events=len(fresh),
            objects=sum(1 for g in groups if g.outcome == "applied"),
            ignored=sum(len(g.events) for g in groups if g.outcome == "ignored"),
            rows_changed=changed,
        )

    # ---- overlapping versions --------------------------------------------------------------

    async def settle_overlaps(self) -> int:
        """Fetch again the objects the writer found two overlapping versions of, with different
        content (refetch_queue, migration 0064), once Stripe's clock has certainly passed both:
        the new answer is newer than either. Written with the entries' removal in one
        transaction; returns how many objects were fetched."""
        due = self.api.clock.earliest()
        relisted = await self._relist(due)
        walking = self._relisting.resource.table if self._relisting is not None else ""
        rows = await self.db.fetch("refetch_queue_due", due, SETTLE_BATCH, walking, self.rows_of)
        if not rows:
            return relisted
        entries = [(r["table_name"], r["object_id"], r["parent_id"]) for r in rows]
        groups = self.applier.overlap_groups(entries)
        await self.applier.refetch(groups)
        for group in groups:
            metrics.overlap_refetches.labels(str(group.object_type)).inc()

        done = _removal([e[0] for e in entries], [e[1] for e in entries], due)
        await self._write_settled(groups, done)
        log.info("overlaps_settled", objects=len(groups), entries=len(entries))
        return relisted + len(groups)

    async def _write_settled(
        self, groups: list[Group], done: Callable[[Tx], Awaitable[None]]
    ) -> None:
        """Write fetched objects and remove their queue entries (`done`) in one transaction;
        an object whose data the database refuses is quarantined, never retried for ever."""

        async def tx(conn: Tx) -> None:
            await self.applier.write(conn, groups)
            await done(conn)

        try:
            await self.db.transact(tx)
        except (DatabaseDataError, orjson.JSONEncodeError) as exc:
            await self._commit_isolated(groups, None, exc)
            await self.db.transact(done)

    async def _relist(self, due: float) -> int:
        """Walk up to RELIST_PAGES pages of a crowded type's list (`Relist`); each page is
        written, and its objects' due entries removed, in one transaction. Objects the list
        does not show (deleted ones) stay queued and are retrieved one by one."""
        walk = self._relisting
        if walk is None:
            walk = self._relisting = await self._crowded(due)
            if walk is None:
                return 0
            log.info("refetch_queue_relist", table=walk.resource.table)
        res, written = walk.resource, 0
        assert res.list_path is not None
        for _ in range(RELIST_PAGES):
            params = {**res.list_variants[walk.variant], "limit": PAGE}
            if walk.after is not None:
                params["starting_after"] = walk.after
            try:
                reply = await self.api.request("GET", res.list_path, params)
            except StripeError as exc:
                if exc.retryable:
                    raise
                # Not readable as a list (a restricted key): its objects are retrieved one by
                # one from now on.
                log.warning("refetch_queue_relist_refused", table=res.table, error=str(exc))
                self._unlistable.add(res.table)
                self._relisting = None
                break
            page = reply.page()
            data = [o for o in page.get("data") or [] if isinstance(o, dict) and "id" in o]
            groups = [
                Group([], res.table, str(o["id"]), reason="relisted", change=change)
                for o in data
                if (change := self.applier.listed_change(res, o, reply.version)) is not None
            ]

            ids = [str(g.object_id) for g in groups]
            await self._write_settled(groups, _removal([res.table] * len(ids), ids, walk.due))
            written += len(groups)
            metrics.overlap_refetches.labels(res.table).inc(len(groups))
            if page.get("has_more") and data:
                walk.after = str(data[-1]["id"])
            elif walk.variant + 1 < len(res.list_variants):
                walk.variant, walk.after = walk.variant + 1, None
            else:
                self._relisting = None
                log.info("refetch_queue_relisted", table=res.table)
                break
        return written

    async def _crowded(self, due: float) -> Relist | None:
        """The first type with more due entries than pages list all of it, if any."""
        for row in await self.db.fetch("refetch_queue_due_tables", due, self.rows_of):
            res = BY_TABLE.get(row["table_name"])
            if res is None or res.table in self._unlistable or not self.applier.can_relist(res):
                continue
            # Listing it all costs a page per 100 live rows (per list variant): cheaper than
            # the due retrieves when there are fewer than that many rows.
            pages_for = row["n"] // len(res.list_variants)
            live = await self.db.fetchval(
                "mirror_live_count_upto", pages_for * PAGE, self.rows_of, table=res.table
            )
            if int(live) // PAGE + 1 < pages_for:
                return Relist(res, due)
        return None

    # ---- loops -----------------------------------------------------------------------------

    async def run(self, lifecycle: Lifecycle) -> None:
        """Head polls every poll_interval, sweeps every overlap_interval, until stopping; beside
        them, the queued objects are fetched again (`settle_loop`).

        Retryable errors (PostgreSQL or Stripe unavailable) are retried here with bounded,
        jittered backoff; anything else ends the daemon loudly.
        """
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.settle_loop, lifecycle)
            await self.poll_loop(lifecycle)
            tg.cancel_scope.cancel()

    async def settle_loop(self, lifecycle: Lifecycle) -> None:
        """`settle_overlaps` until stopping: at once again while there is more to do, else
        every poll_interval. A loop of its own, so that a storm's sweeps (hundreds of event
        pages) never hold back the customers its finalized invoices queued, nor they the
        polls: each waits only for its own endpoint's share of the budget."""
        backoff = Backoff()
        while True:
            try:
                fetched = await self.settle_overlaps()
                metrics.refetch_queue_objects.set(await self.db.fetchval("refetch_queue_size"))
            except SyncdError as exc:
                delay = backoff.retry_in(exc, "overlap_settle_failed")
            else:
                backoff.reset()
                more = self._relisting is not None or fetched >= SETTLE_BATCH
                # Connect: a quiet account's queue is looked at less often (a thousand accounts
                # would otherwise cost a thousand queries a second), at most a sweep apart.
                events = self.cfg.events
                pace = (
                    events.poll_interval
                    if self.pacer is None
                    else min(self.pacer.interval, events.overlap_interval)
                )
                delay = 0.0 if more else pace
            if not await lifecycle.sleep(delay):
                return

    async def poll_loop(self, lifecycle: Lifecycle) -> None:
        """Head polls every poll_interval, sweeps every overlap_interval, until stopping."""
        events = self.cfg.events
        backoff = Backoff()
        last_sweep = -math.inf  # sweep first: events that became visible while we were down
        sweep_took = 0.0
        pacer = self.pacer
        while not lifecycle.stopping.is_set():
            started = time.monotonic()
            try:
                if pacer is not None and pacer.interval >= events.overlap_interval:
                    # Polled as seldom as sweeps: each poll reaches back over the overlap
                    # window itself, one request where a quiet account's events fit a page.
                    result = await self.poll_head(lifecycle.stopping, reach=events.overlap)
                    last_sweep = started
                else:
                    # A sweep re-lists `overlap` seconds of events: after a storm (40,000
                    # events of 5,000 renewals are 400 pages) it takes long, and the head polls
                    # wait for it. So it takes at most a quarter of the loop's time.
                    if started - last_sweep >= max(events.overlap_interval, 4 * sweep_took):
                        await self.sweep(lifecycle.stopping)
                        last_sweep, sweep_took = started, time.monotonic() - started
                    result = await self.poll_head(lifecycle.stopping)
            except SyncdError as exc:
                if pacer is not None:
                    await pacer.failed(exc)
                delay = backoff.retry_in(exc, "events_poll_failed")
                last_sweep = -math.inf  # a gap in polling: sweep first once it works again
            else:
                backoff.reset()
                self.state.succeeded("events")
                interval = events.poll_interval if pacer is None else await pacer.polled(result)
                delay = max(0.0, interval - (time.monotonic() - started))
            if not await lifecycle.sleep(delay, None if pacer is None else pacer.wake):
                return

    async def prune_ledger(self) -> None:
        status = await self.db.execute("events_ledger_prune", self.cfg.events.ledger_retention_days)
        log.info("events_ledger_pruned", rows=int(status.split()[-1]))

    async def prune_loop(self, lifecycle: Lifecycle) -> None:
        """Prune the ledger now and then hourly, until stopping (`Lifecycle.repeat`)."""
        await lifecycle.repeat(PRUNE_EVERY, self.prune_ledger, "events_ledger_prune_failed")


def attach(runtime: Runtime) -> None:
    """Give the daemon the event stream: taking the cursor as a startup step (before a first
    full resync can start listing), the stream's loop and the ledger pruner. With the stream
    off, the settle loop still runs: resyncs and `syncd verify --repair` queue objects too."""
    stream = EventStream(runtime.cfg, runtime.db, runtime.api, runtime.writer, state=runtime.state)
    if not runtime.cfg.events.enabled:
        runtime.add_loop("refetch_queue", lambda: stream.settle_loop(runtime.lifecycle))
        return
    runtime.startup.append(lambda: stream.take_cursor_at_start(runtime.lifecycle))
    runtime.add_loop("events", lambda: stream.run(runtime.lifecycle))
    runtime.add_loop("events_ledger_pruner", lambda: stream.prune_loop(runtime.lifecycle))
