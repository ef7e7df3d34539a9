"""When full resyncs run, and `syncd resync`: the daemon's resync loop and the operator's command.

The loop runs a resync on first start (no completed resync yet), resumes an interrupted run,
serves `resync` requests (from `syncd resync`, SIGHUP or the event stream's expired cursor) and
re-lists every `sync.reconcile_interval` for changes Stripe emits no event for. A failed run is
retried with backoff (5 s to 10 min); each failure is recorded on the run (attempts, last error,
next try).

The command files a request through the database, so it works from any container, and with
`--wait` follows it and never hangs silently: it says within seconds that no daemon is there to
run it (no live leader heartbeat), prints each failed attempt as it happens, exits non-zero when
the run ends with problems or fails, or when `--timeout` passes, and waits out a database
restart. `--direct` runs the resync in the calling process instead.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO, TypeVar

import anyio

from syncd import control, metrics, migrations
from syncd.apply import IMPLIED
from syncd.config import Config
from syncd.db import Database, Row
from syncd.errors import ConfigError, DatabaseUnavailable, SyncdError
from syncd.lifecycle import Backoff, Lifecycle
from syncd.logs import get_logger
from syncd.problems import Problems
from syncd.redaction import scrub
from syncd.registry import BY_TABLE
from syncd.resync import PROGRESS_INTERVAL, Resync, has_completed_resync
from syncd.resync.eta import left_text
from syncd.runtime import Runtime
from syncd.stripe_api import StripeAPI
from syncd.writer import Writer

log = get_logger(__name__)
T = TypeVar("T")
FAILING_PROBLEM = "resync_failing"


# ---- the daemon's resync loop --------------------------------------------------------------


class ResyncLoop:
    """Runs resyncs in the daemon: first start, interrupted runs, requests, SIGHUP, reconcile."""

    def __init__(
        self,
        cfg: Config,
        db: Database,
        api: StripeAPI,
        writer: Writer,
        lifecycle: Lifecycle,
        problems: Problems | None = None,
    ):
        self.cfg = cfg
        self.db = db
        self.lifecycle = lifecycle
        self.problems = problems if problems is not None else Problems()
        self.resync = Resync(cfg, db, api, writer, lifecycle, self.problems)
        self.account = writer.run_key  # whose runs this loop does
        self._wake = anyio.Event()
        self._sighup = False
        self._current: int | None = None  # the run being tried (its failures are recorded)
        self._backing_off = False

    def on_sighup(self) -> None:
        self._sighup = True
        self._wake.set()

    def wake(self, *, now: bool = False) -> None:
        """Look for a run to do (Connect: one was filed for this loop's account). A failed
        run's backoff is kept, unless `now` (the account connected again)."""
        if now or not self._backing_off:
            self._wake.set()

    async def handle_request(self, args: dict[str, Any]) -> dict[str, Any]:
        tables = args.get("tables") or None
        reason = str(args.get("reason") or "request")
        run_id = await self.resync.enqueue(tables, reason)
        self._wake.set()
        return {"run_id": run_id}

    async def run(self) -> None:
        first = True
        backoff = Backoff(5.0, 600.0, jitter=(0.8, 1.2))
        while not self.lifecycle.stopping.is_set():
            self._wake = anyio.Event()
            self._current = None
            try:
                if self._sighup:
                    self._sighup = False
                    await self.resync.enqueue(None, "sighup")
                ran = await self._run_unfinished()
                empty = first and not ran and self.cfg.sync.resync_on_empty
                if empty and not await has_completed_resync(self.db, self.account):
                    await self._run(None, "first_start")
                if first:
                    await self._backfill_new_types()
                first = False
                wait = await self._reconcile_due()
                if wait is not None and wait <= 0:
                    await self._run(None, "reconcile")
                    continue
                backoff.reset()
                self.problems.clear(FAILING_PROBLEM)
            except SyncdError as exc:
                if self.lifecycle.stopping.is_set():
                    # A stop cut the run short (a Stripe backoff ended): not a failed attempt.
                    log.info("resync_stopped", run_id=self._current, error=str(exc))
                    return
                again = backoff.attempt > 0  # failed again: not a one-off
                delay = backoff.next()
                log.error(
                    "resync_failed", run_id=self._current, error=str(exc), retry_in=round(delay)
                )
                metrics.resync_runs.labels("failed").inc()
                await self._record_failure(exc, delay)
                if again:
                    self.problems.report(
                        FAILING_PROBLEM,
                        f"resync run {self._current} keeps failing (next try in {delay:.0f}s): "
                        f"{exc}",
                        blocking=False,
                    )
                self._backing_off = True
                try:
                    slept = await self.lifecycle.sleep(delay, self._wake)
                finally:
                    self._backing_off = False
                if not slept:
                    return
                continue
            if not await self.lifecycle.sleep(wait if wait is not None else 3600.0, self._wake):
                return

    async def _backfill_new_types(self) -> None:
        """Types selected now that no finished resync covered (added to `sync.include`, or no
        longer excluded, since): resync them, and only them, at start."""
        if not await has_completed_resync(self.db, self.account):
            return  # the first full resync covers everything
        covered = {r["table_name"] for r in await self.db.fetch("resync_covered", self.account)}
        chosen = self.resync.mirrored_tables()
        if not covered and not self.resync.writer.connect:
            # Upgraded from a version that did not record coverage: what is selected now is
            # the baseline (it was mirrored by the resyncs before).
            await self.db.execute("resync_cover", None, chosen, self.account)
            return
        new = backfill_of(set(chosen) - covered, chosen)
        if new:
            log.info("resync_new_types", tables=new)
            await self._run(new, "selection_changed")

    async def _run(self, tables: Sequence[str] | None, reason: str) -> None:
        """Run (or resume) the run of this scope, known by id first so a failure is recorded."""
        self._current = await self.resync.enqueue(tables, reason)
        await self.resync.run(tables, reason=reason)

    async def _record_failure(self, exc: SyncdError, retry_in: float) -> None:
        if self._current is None:
            return  # no run was being tried (the database failed before one started)
        try:
            await self.db.execute("resync_record_failure", self._current, str(exc), retry_in)
        except SyncdError as err:
            log.warning("resync_failure_not_recorded", run_id=self._current, error=str(err))

    async def _run_unfinished(self) -> bool:
        ran = False
        while True:
            rows = await self.db.fetch("resync_unfinished_runs", self.account)
            if not rows:
                return ran
            row = rows[0]
            self._current = int(row["run_id"])
            await self.resync.run(row["tables"], reason=row["reason"])
            ran = True

    async def _reconcile_due(self) -> float | None:
        """Seconds until the next periodic full resync (None: never)."""
        interval = self.cfg.sync.reconcile_interval
        if interval <= 0:
            return None
        last = await self.db.fetchval("resync_last_completed", self.account)
        if last is None:
            return None  # no complete resync yet: the first one is not periodic
        return float(last) + interval - time.time()


def attach(runtime: Runtime) -> None:
    """Wire the resync into the daemon: its loop, the `resync` request and SIGHUP."""
    loop = ResyncLoop(
        runtime.cfg, runtime.db, runtime.api, runtime.writer, runtime.lifecycle, runtime.problems
    )
    runtime.add_loop("resync", loop.run)
    runtime.control.register("resync", loop.handle_request)
    runtime.lifecycle.on_signal(signal.SIGHUP, loop.on_sighup)


def backfill_of(new: Iterable[str], chosen: Sequence[str]) -> list[str]:
    """What a resync re-lists when types `new` become selected: those, and the selected types
    that embed them (apply.IMPLIED: a subscription item embeds its price). While a type was not
    mirrored its events were ignored, so its changes did not reach the objects embedding it."""
    out = set(new)
    out |= {c.table for t in new for c in IMPLIED.get(t, []) if c.table in chosen}
    return sorted(out)


# ---- `syncd resync` ------------------------------------------------------------------------

# `--wait` gives up on a daemon after this long without a live leader heartbeat.
NO_DAEMON_GRACE = 5.0
_UNFINISHED = ("pending", "running")


async def request(
    db: Database,
    tables: Sequence[str] | None,
    *,
    wait: bool,
    out: TextIO,
    account: str | None = None,
    timeout: float = 0.0,  # noqa: ASYNC109 (a CLI option, applied with move_on_after below)
    poll: float = 0.5,
    live_after: float = 15.0,
) -> int:
    """Ask the running daemon for a resync (from anywhere); with `wait`, follow it to the end.

    `live_after`: seconds without a heartbeat after which a replica counts as gone."""
    args: dict[str, Any] = {"tables": list(tables) if tables else None, "reason": "cli"}
    if account:
        args["account"] = account
    request_id = await control.submit(db, "resync", args)
    follow = _Follow(db, out, live_after=live_after, poll=poll)
    if not wait:
        print(f"resync requested (request {request_id})", file=out)
        if not await follow.leader():
            print(
                "note: no syncd daemon is running (no live leader heartbeat); the resync starts "
                "when `syncd run` does. `syncd resync --direct` runs it in this process.",
                file=out,
            )
        return 0
    with anyio.move_on_after(timeout or math.inf):
        row = await follow.taken(request_id)
        if row is None:
            return 1
        if row["status"] != "done":
            follow.say(f"resync request {request_id} failed: {row['error']}")
            return 1
        result = row["result"]
        # Connect: one run per account, followed in turn; the worst outcome decides.
        run_ids = result.get("run_ids") or [result["run_id"]]
        code = 0
        for run_id in run_ids:
            code = max(code, await follow.watch(int(run_id)))
        return code
    follow.say(f"gave up waiting after {timeout:g}s (--timeout): {follow.where}")
    return 1


class _Follow:
    """`syncd resync --wait`: a request, then its run, through database restarts; never
    silent when no daemon is there to do the work."""

    def __init__(self, db: Database, out: TextIO, *, live_after: float, poll: float):
        self.db = db
        self.out = out
        self.live_after = live_after
        self.poll = poll
        self.tty = out.isatty()
        self.where = "the request was not taken"
        self._bar = False  # a progress bar holds the current terminal line
        self._down: float | None = None  # monotonic time the database went away
        self._alone: float | None = None  # since when no live leader was seen
        self._patience = NO_DAEMON_GRACE

    def say(self, line: str) -> None:
        self._end_bar()
        print(line, file=self.out, flush=True)

    def _end_bar(self) -> None:
        if self._bar:
            print(file=self.out)
            self._bar = False

    async def _db(self, fn: Callable[[], Awaitable[T]]) -> T:
        """`fn`, tried again while the database is unreachable (a restart), with a message."""
        delay = 0.5
        while True:
            try:
                result = await fn()
            except DatabaseUnavailable as exc:
                if self._down is None:
                    self._down = time.monotonic()
                    self.say(f"database unavailable, still waiting: {scrub(str(exc))}")
                self._alone = None  # heartbeats cannot be read meanwhile
                await anyio.sleep(delay)
                delay = min(5.0, delay * 2)
                continue
            if self._down is not None:
                self.say(f"database back after {time.monotonic() - self._down:.0f}s")
                self._down = None
                # The daemon lost the database too: give its heartbeat time to come back.
                self._patience = max(NO_DAEMON_GRACE, self.live_after)
            return result

    async def leader(self) -> str | None:
        """The live leader's instance id, if any."""
        rows = await self._db(lambda: self.db.fetch("status_instances", self.live_after))
        return next((r["instance_id"] for r in rows if r["alive"] and r["role"] == "leader"), None)

    async def _no_daemon(self) -> bool:
        """True once no live leader has been seen for a while (`NO_DAEMON_GRACE`)."""
        if await self.leader() is not None:
            self._alone = None
            self._patience = NO_DAEMON_GRACE
            return False
        now = time.monotonic()
        if self._alone is None:
            self._alone = now
        return now - self._alone >= self._patience

    async def taken(self, request_id: int) -> Row | None:
        """The request once a daemon answered it; None when no daemon is there (said so)."""
        while True:
            row = await self._db(lambda: self.db.fetchrow("get_request", request_id))
            if row is None:
                raise SyncdError(f"request {request_id} not found")
            if row["status"] in ("done", "failed"):
                return row
            self.where = f"resync request {request_id} is still {row['status']}"
            if row["status"] == "pending" and await self._no_daemon():
                withdrawn = await self._db(
                    lambda: self.db.fetchval("resync_withdraw_request", request_id)
                )
                if withdrawn is not None:
                    self.say(
                        f"no syncd daemon is running (no live leader heartbeat for "
                        f"{self._patience:g}s): nobody took resync request {request_id}, so it "
                        "was withdrawn. Start `syncd run`, or run the resync in this process "
                        "with `syncd resync --direct`."
                    )
                    return None
                continue  # a daemon took it just now
            await anyio.sleep(self.poll)

    async def watch(self, run_id: int) -> int:
        """Progress (a bar on a terminal, a line every few seconds otherwise) and each failed
        attempt as it happens; 0 when the run is done, 1 otherwise."""
        started = time.monotonic()
        last_line = 0.0
        last_estimate: Any = None
        attempts = 0
        while True:
            run = await self._db(lambda: self.db.fetchrow("resync_watch_run", run_id))
            if run is None:
                self.say(f"resync run {run_id} not found")
                return 1
            rows = await self._db(lambda: self.db.fetch("resync_progress", run_id))
            status = run["status"]
            self.where = f"resync {run_id} is still {status} (see `syncd status`)"
            if run["attempts"] > attempts and status in _UNFINISHED:
                attempts = run["attempts"]
                self.say(_failure_line(run_id, run))
            total = len(rows)
            finished = sum(1 for r in rows if r["status"] in ("swept", "unavailable"))
            objects = sum(r["objects"] for r in rows)
            elapsed = max(1e-6, time.monotonic() - started)
            line = (
                f"resync {run_id}: {finished}/{total or '?'} types, {objects:,} objects, "
                f"{objects / elapsed:,.0f}/s, {status}"
            )
            # The running resync's estimate from the rate budget (resync/eta.py), per type.
            estimated = [r for r in rows if r["eta_seconds"] is not None]
            if estimated and status == "running":
                left = sum(r["requests_left"] for r in estimated)
                eta = max(r["eta_seconds"] for r in estimated)
                line += f", {left_text(left, eta, any(r['left_at_least'] for r in estimated))}"
            if self.tty:
                width = 30
                filled = int(width * finished / total) if total else 0
                bar = f"[{'#' * filled}{'-' * (width - filled)}]"
                print(f"\r{bar} {line}   ", end="", file=self.out, flush=True)
                self._bar = True
            elif time.monotonic() - last_line >= PROGRESS_INTERVAL or status not in _UNFINISHED:
                self.say(line)
                last_line = time.monotonic()
            newest = max((r["progress_at"] for r in estimated), default=None)
            if status == "running" and newest is not None and newest != last_estimate:
                last_estimate = newest  # each estimate once: they come every few seconds
                for r in estimated:
                    if r["requests_left"]:
                        self.say(_estimate_line(r))
            if status not in _UNFINISHED:
                self._end_bar()
                return report(self.out, run_id, status, run["error"], rows)
            if await self._no_daemon():
                self.say(
                    f"no syncd daemon is running (no live leader heartbeat for "
                    f"{self._patience:g}s): resync {run_id} is {status} and goes on when "
                    "`syncd run` starts again; `syncd resync --direct` runs it in this process."
                )
                return 1
            await anyio.sleep(self.poll)


def _estimate_line(r: Row) -> str:
    """A type still in progress: what it has done, requests left and its ETA."""
    res = BY_TABLE.get(r["table_name"])
    walk = res is not None and res.list_path is None  # per parent: `objects` counts parents
    done = f"{r['objects']:,} parents done" if walk else f"{r['objects']:,} objects"
    left = left_text(r["requests_left"], r["eta_seconds"], r["left_at_least"])
    return f"  {r['table_name']:<28} {done}, {left}"


def _failure_line(run_id: int, run: Row) -> str:
    again = ""
    if run["next_try_in"] is not None:
        again = f" (the daemon tries again in {max(0.0, run['next_try_in']):.0f}s)"
    return f"resync {run_id}: attempt {run['attempts']} failed{again}: {run['error']}"


def report(out: TextIO, run_id: int, status: str, error: str | None, rows: Sequence[Row]) -> int:
    """A finished run, table by table; 0 when it is done, 1 otherwise (naming the problems)."""
    for r in rows:
        note = f" ({r['error']})" if r["error"] else ""
        print(
            f"  {r['table_name']:<28} {r['objects']:>10,} objects "
            f"{r['tombstoned']:>6,} tombstoned  {r['status']}{note}",
            file=out,
        )
    if status == "done":
        return 0
    if status == "done_with_problems":
        problems = [(r["table_name"], r["error"]) for r in rows if r["error"]]
        print(f"resync {run_id} done with problems: not everything was mirrored", file=out)
        for table, problem in problems:
            print(f"  {table}: {problem}", file=out)
        if not problems and error:
            print(f"  {error}", file=out)
    else:
        print(f"resync {run_id} {status}: {error or ''}", file=out)
    out.flush()
    return 1


async def run_direct(
    cfg: Config,
    tables: Sequence[str] | None,
    out: TextIO,
    *,
    live_after: float,
    settings: Mapping[str, str],
) -> int:
    """`syncd resync --direct`: the resync in this process (when no daemon runs); 0 when done.

    `settings`: the daemon's session settings (the customers' user id trigger reads one)."""
    async with (
        Database.connect(cfg.database, min_size=1, settings=settings) as db,
        StripeAPI(cfg) as api,
    ):
        if await migrations.pending(db):
            raise ConfigError("database: migrations pending: run `syncd migrate` first")
        rows = await db.fetch("status_instances", live_after)
        leader = next(
            (r["instance_id"] for r in rows if r["alive"] and r["role"] == "leader"), None
        )
        if leader is not None:
            print(
                f"a syncd daemon is running ({leader}) and runs resyncs itself: ask it with "
                "`syncd resync --wait` (--direct is for when no daemon runs)",
                file=out,
            )
            return 1
        writer = Writer(db, account_id=cfg.stripe.account, notify_channel=cfg.events.notify_channel)
        if cfg.events.enabled:
            # As the daemon does first: the events cursor is taken before the resync lists, so
            # a daemon started later streams every change made since (invariant 7).
            from syncd.events import EventStream

            await EventStream(cfg, db, api, writer).take_cursor()
        resync = Resync(cfg, db, api, writer)
        run_id = await resync.enqueue(tables, "cli_direct")
        print(f"resync {run_id} running in this process", file=out, flush=True)
        try:
            await resync.run(tables, reason="cli_direct")
        except SyncdError as exc:
            # When the database is what failed, the message below says what matters.
            with anyio.CancelScope(shield=True), contextlib.suppress(SyncdError):
                await db.execute("resync_record_failure", run_id, str(exc), 0.0)
            print(
                f"resync {run_id} failed: {scrub(str(exc))}\n"
                "it resumes where it stopped: run `syncd resync --direct` again, or start "
                "`syncd run`",
                file=out,
            )
            return 1
        run = await db.fetchrow("resync_watch_run", run_id)
        progress = await db.fetch("resync_progress", run_id)
    assert run is not None
    return report(out, run_id, run["status"], run["error"], progress)
