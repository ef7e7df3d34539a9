"""Connect (docs/connect.md): a platform and its connected accounts, each synced on its own.

With `stripe.accounts` set, the daemon's account work is not the leader's alone:

* `Directory` (the leader) keeps `{state}.accounts`: the platform's own account (its id from
  `GET /v1/account`), the configured ones, or under `all` every connected account, listed with
  `GET /v1/accounts` every `stripe.accounts_refresh_interval` and at once when the platform's
  events say one connected or disconnected. An account that disconnects stops being synced; its
  rows stay, their account_id naming it, the account `deauthorized`.
* `Replica` (every replica) leases its share of the active accounts (`syncd.leases`) and runs,
  per account, what one account's daemon runs: its own events cursor, poll and settle loops,
  and resync loop (runs, checkpoints and coverage of its own), every request carrying its
  `Stripe-Account` header and every row its account_id (the platform's own id for its own).
* `AccountPacer` polls an account with recent events every `events.poll_interval` and backs a
  quiet one off, up to `events.quiet_poll_interval` (or longer, when the replica's quiet polls
  would take more than half its budget); a hint (an event of the platform's about it, a resync
  asked for) brings it back at once.

The budget: under `stripe.connect_limits = "shared"` (the stricter reading: requests for
connected accounts count against the platform's limit) the replicas split the platform's
budget evenly; under `"account"` each account has the whole budget of its own.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup

from syncd import metrics
from syncd.config import Config
from syncd.control import submit
from syncd.db import Tx
from syncd.errors import StripePermissionDenied, SyncdError, one_error
from syncd.events import EventStream, PollResult
from syncd.leases import Leases
from syncd.lifecycle import Backoff
from syncd.logs import bind_context, get_logger
from syncd.problems import Problems
from syncd.ratelimit import limiter_for
from syncd.redaction import scrub
from syncd.resync import Resync
from syncd.resync_schedule import ResyncLoop
from syncd.runtime import Runtime, State
from syncd.stripe_api import StripeAPI
from syncd.writer import Writer

log = get_logger(__name__)

# At most this share of a replica's budget goes to polling its quiet accounts.
QUIET_SHARE = 0.5
# An account's status row is rewritten at least this often while nothing changes.
RECORD_EVERY = 10.0
# Platform event types about a connected account's link to the platform.
DEAUTHORIZED = "account.application.deauthorized"
AUTHORIZED = "account.application.authorized"
PROBLEM = "accounts"
FAILING = "accounts_failing"


def resyncs_at_once(cfg: Config) -> int:
    """Full resyncs one replica runs at once: a thousand accounts' first resyncs take turns.
    Each holds `sync.writers` pooled connections for its listing and one for its bookkeeping,
    and two stay for the polls: more at once would wait for connections, not go faster."""
    return max(1, (cfg.database.pool_max_size - 2) // (cfg.sync.writers + 1))


async def platform_account(api: StripeAPI) -> str:
    """The API key's own account id (`GET /v1/account`)."""
    account_id = (await api.get("/v1/account")).get("id")
    if not isinstance(account_id, str) or not account_id.startswith("acct_"):
        raise SyncdError(f"GET /v1/account answered no account id ({account_id!r})")
    return account_id


# Platform objects that name a connected account, and the field that does: a fee taken from
# a charge on it, a transfer to it.
NAMES_ACCOUNT = {"account": "id", "application_fee": "account", "transfer": "destination"}


def _about(event: dict[str, Any]) -> str | None:
    """The connected account a platform event is about: its `account` (Stripe sets it on the
    events of Connect), else the account its object names."""
    account = event.get("account")
    if isinstance(account, str) and account:
        return account
    obj = (event.get("data") or {}).get("object") or {}
    found = obj.get(NAMES_ACCOUNT.get(str(obj.get("object")), ""))
    if isinstance(found, dict):  # expanded
        found = found.get("id")
    return found if isinstance(found, str) and found.startswith("acct_") else None


class Directory:
    """The leader's part: which accounts to sync (`{state}.accounts`)."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.cfg, self.db, self.api = runtime.cfg, runtime.db, runtime.api
        self.everything = self.cfg.stripe.accounts == ["all"]
        self.platform: str | None = None
        self._wake = anyio.Event()

    async def refresh(self) -> list[str]:
        """Bring `{state}.accounts` up to date; the active accounts."""
        if self.platform is None:
            self.platform = await platform_account(self.api)
            # The key's own rows from before stripe.accounts (account_id '') are the platform's.
            moved = await self.db.fetchval("accounts_adopt_own_rows", self.platform)
            if moved:
                log.info("accounts_own_rows_adopted", platform=self.platform, rows=moved)
        if self.everything:
            ids = [self.platform, *await self._connected()]
            source, retired_as = "discovered", "deauthorized"
        else:
            ids, source, retired_as = list(self.cfg.stripe.accounts), "configured", "unlisted"
        await self.db.execute("accounts_add", ids, source, self.platform)
        for row in await self.db.fetch("accounts_retire", ids, retired_as):
            log.warning("account_not_synced", account=row["account_id"], status=retired_as)
        return ids

    async def _connected(self) -> list[str]:
        found: list[str] = []
        params: dict[str, Any] = {"limit": 100}
        while True:
            page = await self.api.get_page("/v1/accounts", params)
            found += [a["id"] for a in page["data"] if isinstance(a, dict) and "id" in a]
            if not page["has_more"] or not page["data"]:
                return found
            params = {"limit": 100, "starting_after": found[-1]}

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Refresh now and every accounts_refresh_interval (sooner when woken), until stopping."""
        lifecycle = self.runtime.lifecycle
        backoff = Backoff()
        while not lifecycle.stopping.is_set():
            self._wake = anyio.Event()
            try:
                ids = await self.refresh()
            except SyncdError as exc:
                delay = backoff.retry_in(exc, "accounts_refresh_failed")
                self.runtime.problems.report(PROBLEM, f"accounts not listed: {exc}", blocking=False)
            else:
                backoff.reset()
                self.runtime.problems.clear(PROBLEM)
                self.runtime.state.succeeded("accounts")
                log.debug("accounts_refreshed", accounts=len(ids))
                delay = self.cfg.stripe.accounts_refresh_interval
            await lifecycle.sleep(delay, self._wake)

    async def handle_resync(self, args: dict[str, Any]) -> dict[str, Any]:
        """`syncd resync [--account acct_...]`, SIGHUP, an expired cursor: a run per account
        (every active one when none is named), done by the replica that leases it."""
        account = args.get("account")
        tables = args.get("tables") or None
        reason = str(args.get("reason") or "request")
        rows = await self.db.fetch("accounts_active")
        active = [r["account_id"] for r in rows]
        if account:
            if account not in active:
                raise SyncdError(f"resync: account {account} is not synced (syncd status)")
            active = [account]
        run_ids = []
        for acct in active:
            writer = Writer(self.db, account_id=acct, connect=True)
            run_ids.append(
                await Resync(self.cfg, self.db, self.api, writer).enqueue(tables, reason)
            )
        await self.db.execute("accounts_hint", active)
        return {"run_id": run_ids[0] if len(run_ids) == 1 else None, "run_ids": run_ids}

    async def platform_events(
        self, conn: Tx, events: list[dict[str, Any]], *, platform: str
    ) -> None:
        """The platform's own events, in the transaction that records them (on whichever
        replica leases the platform): an account that disconnected stops being synced, one that
        connected starts (under `all`), and any other event about an account has its replica
        poll it now."""
        hinted: set[str] = set()
        for event in events:
            account = _about(event)
            if account is None or account == platform:
                continue
            kind = event.get("type")
            if kind == DEAUTHORIZED:
                await conn.execute("accounts_set_status", account, "deauthorized")
                log.warning("account_deauthorized", account=account)
            elif kind == AUTHORIZED and self.everything:
                await conn.execute("accounts_add", [account], "discovered", platform)
                log.info("account_authorized", account=account)
                hinted.add(account)  # a replica still holding it retries its resync now
            else:
                hinted.add(account)
        if hinted:
            await conn.execute("accounts_hint", sorted(hinted))


class AccountPacer:
    """How often one account is polled (events.Pacer), and its status row."""

    def __init__(self, replica: Replica, account_id: str):
        self.replica = replica
        self.account_id = account_id
        self.base = replica.cfg.events.poll_interval
        self.interval = self.base
        self.wake = anyio.Event()
        self._recorded = -float("inf")
        self.failing = False  # its last poll failed

    def hint(self) -> None:
        self.interval = self.base
        self.wake.set()

    async def polled(self, result: PollResult) -> float:
        if self.wake.is_set():
            self.wake = anyio.Event()
        active = result.fresh > 0
        metrics.account_polls.labels("active" if self.interval <= self.base else "quiet").inc()
        previous = self.interval
        if active:
            self.interval = self.base
        else:
            self.interval = min(self.replica.quiet_ceiling(), max(self.base, self.interval * 2))
        now = time.monotonic()
        if (
            active
            or self.failing
            or previous != self.interval
            or now - self._recorded > RECORD_EVERY
        ):
            self._recorded, self.failing = now, False
            await self.replica.db.execute("accounts_polled", self.account_id, active, self.interval)
        return self.interval

    async def failed(self, error: SyncdError) -> None:
        if isinstance(error, StripePermissionDenied) and error.code == "account_invalid":
            # Disconnected or deleted: no replica syncs it any more; its rows stay.
            await self.replica.db.fetch("accounts_set_status", self.account_id, "deauthorized")
            log.warning("account_deauthorized", account=self.account_id, error=str(error))
        now = time.monotonic()
        if not self.failing or now - self._recorded > RECORD_EVERY:
            self._recorded, self.failing = now, True
            await self.replica.db.execute("accounts_failed", self.account_id, scrub(str(error)))


@dataclass
class _Running:
    scope: anyio.CancelScope
    done: anyio.Event = field(default_factory=anyio.Event)
    pacer: AccountPacer | None = None
    resync: ResyncLoop | None = None


class Replica:
    """Every replica's part: lease accounts, run each leased account's loops."""

    def __init__(self, runtime: Runtime, directory: Directory):
        self.runtime = runtime
        self.cfg, self.db, self.api = runtime.cfg, runtime.db, runtime.api
        self.directory = directory
        self.lifecycle = runtime.lifecycle
        self.platform: str | None = None
        self.running: dict[str, _Running] = {}
        self.resync_gate = anyio.Semaphore(resyncs_at_once(self.cfg))
        self.shared = self.cfg.stripe.connect_limits == "shared"
        self._tg: TaskGroup | None = None
        self._sighup = False

    def on_sighup(self) -> None:
        """SIGHUP to any replica: a full resync of every account (the leader files the runs)."""
        self._sighup = True

    def quiet_ceiling(self) -> float:
        """The longest a quiet account waits between polls: the configured ceiling, or longer
        when this replica's quiet polls would take more than QUIET_SHARE of its budget."""
        ceiling = self.cfg.events.quiet_poll_interval
        if self.shared:
            # Every poll is a GET /v1/events: the endpoint's limit binds before the global one.
            limiter = self.api.limiter
            rate = min(limiter.rate, limiter.endpoint_rate) * limiter.schedule.fraction
            ceiling = max(ceiling, len(self.running) / (QUIET_SHARE * rate))
        return ceiling

    def _share(self, replicas: int) -> None:
        if self.shared:
            self.api.limiter.share(1.0 / replicas)

    async def run(self) -> None:
        backoff = Backoff()
        while self.platform is None and not self.lifecycle.stopping.is_set():
            try:
                self.platform = await platform_account(self.api)
            except SyncdError as exc:
                await self.lifecycle.sleep(backoff.retry_in(exc, "platform_account_failed"))
        if self.platform is None:
            return
        leases = Leases(
            self.db,
            self.lifecycle,
            self.runtime.instance_id,
            interval=self.cfg.daemon.lease_interval,
            start=self._start,
            stop=self._stop,
            replicas_changed=self._share,
            problems=self.runtime.problems,
        )
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._hints, name="account_hints")
            await leases.run()
            tg.cancel_scope.cancel()

    async def _hints(self) -> None:
        """Each lease interval: poll now the accounts something hinted at, and wake the resync
        loops of accounts with a run waiting."""
        since: Any = None  # the database's time of the last round (hints after it are new)
        while not self.lifecycle.stopping.is_set():
            await self.lifecycle.sleep(self.cfg.daemon.lease_interval)
            try:
                if self._sighup:
                    self._sighup = False
                    await submit(self.db, "resync", {"reason": "sighup"})
                now = await self.db.fetchval("lease_now")
                held: list[str] = list(self.running) if since is not None else []
                for row in await self.db.fetch("accounts_hinted", held, since or now):
                    run = self.running.get(row["account_id"])
                    if run is not None and run.pacer is not None:
                        run.pacer.hint()
                    if run is not None and run.resync is not None:
                        run.resync.wake(now=True)
                for row in await self.db.fetch("resync_accounts_waiting"):
                    run = self.running.get(row["account_id"])
                    if run is not None and run.resync is not None:
                        run.resync.wake()
                since = now
                failing = sum(1 for r in self.running.values() if r.pacer and r.pacer.failing)
                metrics.accounts_failing.set(failing)
                if failing:
                    self.runtime.problems.report(
                        FAILING,
                        f"{failing} of {len(self.running)} accounts failing here"
                        " (syncd status lists them)",
                        blocking=False,
                    )
                else:
                    self.runtime.problems.clear(FAILING)
            except SyncdError as exc:
                log.warning("account_hints_failed", error=str(exc))

    async def _start(self, account_id: str) -> None:
        assert self._tg is not None
        running = _Running(anyio.CancelScope())
        self.running[account_id] = running
        self._tg.start_soon(self._work, account_id, running, name=f"account:{account_id}")

    async def _stop(self, account_id: str) -> None:
        running = self.running.pop(account_id, None)
        if running is not None:
            running.scope.cancel()
            await running.done.wait()

    async def _work(self, account_id: str, running: _Running) -> None:
        """One account's loops, until its lease is given up (its scope cancelled) or a stop.
        An error that is not retried (a key without access to it) stops this account only,
        recorded on its row, and its loops start again later (5 s, doubling to 10 min)."""
        backoff = Backoff(5.0, 600.0, jitter=(0.8, 1.2))
        try:
            with running.scope, bind_context(account=account_id):
                while not self.lifecycle.stopping.is_set():
                    try:
                        await self._loops(account_id, running)
                        return
                    except Exception as exc:
                        error = one_error(exc)
                        if not isinstance(error, SyncdError):
                            raise
                        delay = backoff.next()
                        # Disconnected: expected, and its lease goes within a round.
                        gone = isinstance(error, StripePermissionDenied) and (
                            error.code == "account_invalid"
                        )
                        (log.warning if gone else log.error)(
                            "account_sync_failed",
                            account=account_id,
                            error=str(error),
                            retry_in=round(delay),
                        )
                        with contextlib.suppress(SyncdError):
                            await self.db.execute("accounts_failed", account_id, scrub(str(error)))
                        await self.lifecycle.sleep(delay)
        finally:
            running.done.set()

    async def _loops(self, account_id: str, running: _Running) -> None:
        """What one account's daemon would run: take its cursor, then its poll and settle
        loops and its resync loop, with its Stripe-Account header and account_id."""
        cfg, db = self.cfg, self.db
        platform = account_id == self.platform
        limiter = None if self.shared or platform else limiter_for(cfg)
        api = self.api.for_account(None if platform else account_id, limiter)
        writer = Writer(
            db, account_id=account_id, notify_channel=cfg.events.notify_channel, connect=True
        )
        stream = EventStream(cfg, db, api, writer, state=State())
        pacer = AccountPacer(self, account_id)
        # Taken over (or a restart): at the pace it had. A thousand accounts starting at once
        # at `poll_interval` would queue the events endpoint for minutes.
        pace = await db.fetchval("accounts_pace", account_id)
        if pace is not None:
            pacer.interval = min(max(float(pace), pacer.base), self.quiet_ceiling())
        stream.pacer = running.pacer = pacer
        # An active account's requests go first at their endpoint: a thousand quiet accounts'
        # polls share GET /v1/events with it, and its changes are the ones awaited.
        api.urgent = lambda: pacer.interval <= pacer.base
        if platform:
            stream.on_commit = functools.partial(
                self.directory.platform_events, platform=account_id
            )
        loop = ResyncLoop(cfg, db, api, writer, self.lifecycle, Problems())
        loop.resync.gate = self.resync_gate
        running.resync = loop
        if cfg.events.enabled:
            await stream.take_cursor_at_start(self.lifecycle)
        async with anyio.create_task_group() as tg:
            if cfg.events.enabled:
                tg.start_soon(stream.run, self.lifecycle)
            else:
                tg.start_soon(stream.settle_loop, self.lifecycle)
            tg.start_soon(loop.run)


def attach(runtime: Runtime) -> None:
    """Connect mode: the leader keeps the accounts and takes resync requests; every replica
    leases and syncs its share; the ledger pruner stays the leader's."""
    directory = Directory(runtime)
    replica = Replica(runtime, directory)
    runtime.add_loop("accounts", directory.run)
    runtime.control.register("resync", directory.handle_resync)

    runtime.lifecycle.on_signal(signal.SIGHUP, replica.on_sighup)
    stream = EventStream(runtime.cfg, runtime.db, runtime.api, runtime.writer, state=runtime.state)
    runtime.add_loop("events_ledger_pruner", lambda: stream.prune_loop(runtime.lifecycle))
    runtime.replica_loops.append(("accounts_leased", replica.run))
