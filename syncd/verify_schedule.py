"""The daemon's periodic verify (`verify.interval`, off by default): `syncd verify`'s comparison
(syncd/verify.py) run by the leader, its result kept in `{state}.verify_runs` for `syncd status`
and exported as metrics (`syncd_verify_drift{table}`, the last clean time).

Inside the daemon it uses the daemon's own Stripe client, so its requests and the event stream's
draw on one rate limiter: the configured budget, never more. (A `syncd verify` process beside
the daemon has a token bucket of its own and takes half the rate by default, docs/verify.md.)

When: `verify.interval` seconds after the last run that ended with a result (clean, drift or
incomplete), read from the database, so a restart or a takeover keeps the rhythm instead of
verifying at every start. Never beside a full resync: a mirror being re-listed is not a state
worth judging, and both would spend the same budget. So a run waits while a resync is pending
or running, waits for the first full resync when the daemon is going to run one, and gives way
when one starts meanwhile (recorded as `interrupted`; it starts over once the resync is done).
A failed run is recorded, retried with backoff and reported as a non-blocking problem
(`verify_failing`): nothing a verify meets ends the daemon.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from syncd import metrics
from syncd.config import Config
from syncd.db import Database
from syncd.errors import SyncdError, one_error
from syncd.lifecycle import Backoff, Lifecycle
from syncd.logs import get_logger
from syncd.runtime import Runtime, State
from syncd.stripe_api import StripeAPI
from syncd.verify import Report, Verifier, resolve_scope, settle_seconds

log = get_logger(__name__)
FAILING_PROBLEM = "verify_failing"
# Ids named per drifted table in the log line of a run (the report of `syncd verify` has all).
LOGGED_IDS = 10


def outcome(report: Report) -> str:
    """`clean`, `drift` (drifted objects found) or `incomplete` (none found, but a table could
    not be verified): the status a run is recorded with."""
    if report.ok:
        return "clean"
    return "drift" if report.drifted else "incomplete"


class VerifyLoop:
    """Runs a verify every `verify.interval` on the leader, never beside a full resync."""

    # Seconds between looks at the resync runs, while waiting for one to end and while a
    # verify runs (a resync that starts meanwhile interrupts it within this long).
    watch_every = 2.0
    # Retries of a failed run: 10 s, doubling up to 15 min.
    backoff_base = 10.0
    backoff_cap = 900.0

    def __init__(
        self, cfg: Config, db: Database, api: StripeAPI, lifecycle: Lifecycle, state: State
    ):
        self.cfg = cfg
        self.db = db
        self.api = api
        self.lifecycle = lifecycle
        self.state = state
        self.problems = state.problems
        self._waiting: str | None = None  # why the loop waits (logged once per reason)

    async def run(self) -> None:
        backoff = Backoff(self.backoff_base, self.backoff_cap, jitter=(0.8, 1.2))
        restored = False
        while not self.lifecycle.stopping.is_set():
            started = time.monotonic()
            try:
                if not restored:
                    await self._restore_metrics()
                    restored = True
                delay = await self._step()
                if delay == 0.0:
                    backoff.reset()
            # Any error, a bug's too: an optional check must never end the daemon (the
            # leader's other loops go on); it is logged, recorded, reported and retried.
            except Exception as exc:
                if self.lifecycle.stopping.is_set():
                    log.info("verify_stopped", error=str(exc))
                    return
                error = one_error(exc)
                delay = backoff.next()
                log.error(
                    "verify_failed",
                    error=str(error),
                    retry_in=round(delay),
                    exc_info=not isinstance(error, SyncdError),
                )
                metrics.verify_runs.labels("failed").inc()
                await self._record_failure(started, error)
                self.problems.report(
                    FAILING_PROBLEM,
                    f"periodic verify failed (next try in {delay:.0f}s): {error}",
                    blocking=False,
                )
            if not await self.lifecycle.sleep(delay):
                return

    async def _step(self) -> float:
        """Run a verify if one is due and may run now; the seconds to wait before the next
        look (0 after a run: the next is due an interval after it)."""
        resyncs = await self.db.fetchrow("verify_resync_activity")
        assert resyncs is not None
        if resyncs["unfinished"]:
            self._wait("a full resync is pending or running")
            return self.watch_every
        if not resyncs["completed"] and self.cfg.sync.resync_on_empty:
            # The daemon is about to fill the mirror: judging it before is pointless.
            self._wait("the first full resync has not finished")
            return self.watch_every
        rows = await self.db.fetch("verify_last_runs")
        # How long ago the last result ended, by the database's clock (it recorded the end).
        age = next((float(r["age"]) for r in rows if r["result"]), None)
        if age is not None and age < self.cfg.verify.interval:
            return self.cfg.verify.interval - age
        self._waiting = None
        await self._verify(int(resyncs["last_run"]))
        return 0.0

    def _wait(self, reason: str) -> None:
        if reason != self._waiting:
            log.info("verify_waiting", reason=reason)
            self._waiting = reason

    async def _verify(self, last_resync: int) -> None:
        cfg = self.cfg
        started = time.monotonic()
        sample = cfg.verify.sample or None
        scope = resolve_scope(cfg, None)  # every mirrored table: cannot fail
        # The daemon's client (one rate limiter) and database; settle: the events run beside.
        verifier = Verifier(
            cfg,
            self.db,
            self.api,
            scope,
            sample=sample,
            repair=cfg.verify.repair,
            settle=settle_seconds(cfg),
        )
        log.info(
            "verify_started", tables=len(scope.tables), sample=sample, repair=cfg.verify.repair
        )
        report: Report | None = None
        interrupted: str | None = None
        try:
            async with anyio.create_task_group() as tg:

                async def verify() -> None:
                    nonlocal report
                    report = await verifier.run()
                    tg.cancel_scope.cancel()

                async def watch() -> None:
                    nonlocal interrupted
                    interrupted = await self._interruption(last_resync)
                    tg.cancel_scope.cancel()

                tg.start_soon(verify, name="verify")
                tg.start_soon(watch, name="verify_watch")
        except BaseExceptionGroup as group:
            # One error decides (syncd's classes), as `Verifier.run` itself raises them.
            inner = one_error(group)
            if inner is group:
                raise
            raise inner from group
        if report is not None and interrupted is None:
            # A resync that began and ended between two looks ran beside this verify too.
            resyncs = await self.db.fetchrow("verify_resync_activity")
            assert resyncs is not None
            if resyncs["unfinished"] or resyncs["last_run"] != last_resync:
                interrupted = "a full resync ran meanwhile"
        if report is None or interrupted is not None:
            reason = interrupted or "ended without a report"
            log.info(
                "verify_interrupted", reason=reason, seconds=round(time.monotonic() - started, 1)
            )
            metrics.verify_runs.labels("interrupted").inc()
            await self._record(started, "interrupted", error=reason)
            return
        await self._finish(started, report)

    async def _interruption(self, last_resync: int) -> str:
        """Wait until the verify must give way: a resync started, or the daemon is stopping."""
        while await self.lifecycle.sleep(self.watch_every):
            resyncs = await self.db.fetchrow("verify_resync_activity")
            assert resyncs is not None
            if resyncs["unfinished"] or resyncs["last_run"] != last_resync:
                return "a full resync started"
        return "the daemon is stopping"

    async def _finish(self, started: float, report: Report) -> None:
        status = outcome(report)
        drift = {name: len(t.drift) for name, t in report.tables.items() if not t.error}
        unverified = {name: t.error for name, t in report.tables.items() if t.error is not None}
        repaired = sum(len(t.repaired) for t in report.tables.values())
        finished = await self._record(
            started,
            status,
            drift=drift,
            unverified=unverified,
            drifted=report.drifted,
            repaired=repaired,
            requests=report.requests,
        )
        metrics.verify_runs.labels(status).inc()
        self._set_gauges(drift, finished if status == "clean" else None)
        self.state.succeeded("verify")
        self.problems.clear(FAILING_PROBLEM)
        summary: dict[str, Any] = {
            "status": status,
            "requests": report.requests,
            "seconds": round(report.seconds, 1),
        }
        if status == "clean":
            log.info("verify_clean", **summary)
            return
        # Which ids, so the operator can look without running `syncd verify` again.
        tables = {
            name: sorted(t.drift)[:LOGGED_IDS] for name, t in report.tables.items() if t.drift
        }
        log.warning(
            "verify_drift",
            drifted=report.drifted,
            repaired=repaired,
            tables=tables,
            unverified=unverified,
            **summary,
        )

    async def _record(
        self,
        started: float,
        status: str,
        *,
        drift: dict[str, int] | None = None,
        unverified: dict[str, str] | None = None,
        drifted: int = 0,
        repaired: int = 0,
        requests: int = 0,
        error: str | None = None,
    ) -> float:
        """One ended run in `{state}.verify_runs` (`started`: its `time.monotonic()` at the
        start); returns when it ended (unix time, the database's clock)."""
        cfg = self.cfg
        row = await self.db.fetchrow(
            "verify_record_run",
            time.monotonic() - started,
            status,
            drift or {},
            unverified or {},
            drifted,
            repaired,
            requests,
            cfg.verify.sample or None,
            cfg.verify.repair,
            error,
        )
        assert row is not None
        await self.db.execute("verify_prune_runs")
        return float(row["finished"])

    async def _record_failure(self, started: float, error: BaseException) -> None:
        try:
            await self._record(started, "failed", error=str(error))
        except SyncdError as exc:
            # The database is likely what failed: the log line and the problem say it.
            log.warning("verify_failure_not_recorded", error=str(exc))

    async def _restore_metrics(self) -> None:
        """The gauges as the last recorded runs left them: a new leader (after a restart or a
        takeover) exports what the last verify found, not nothing."""
        rows = await self.db.fetch("verify_last_runs")
        last = next((r for r in rows if r["result"]), None)
        if last is None:
            return
        clean = last["last_clean_at"]
        self._set_gauges(dict(last["drift"]), clean.timestamp() if clean is not None else None)

    @staticmethod
    def _set_gauges(drift: dict[str, int], clean_at: float | None) -> None:
        # Cleared first: a table no longer verified (excluded since) drops out.
        metrics.verify_drift.clear()
        for table, count in drift.items():
            metrics.verify_drift.labels(table).set(count)
        if clean_at is not None:
            metrics.verify_last_clean.set(clean_at)


def attach(runtime: Runtime) -> None:
    """Give the leader its verify loop when `verify.interval` is set (off by default)."""
    if runtime.cfg.verify.interval <= 0:
        return
    loop = VerifyLoop(runtime.cfg, runtime.db, runtime.api, runtime.lifecycle, runtime.state)
    runtime.add_loop("verify", loop.run)
