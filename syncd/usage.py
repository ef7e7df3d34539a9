"""Usage flush: rows of `{app}.usage_records` reported to Stripe exactly once.

A flush, in order (docs/usage.md explains why each step is safe to interrupt):
1. Check the configured meters (`GET /v1/billing/meters`): metrics whose meter is missing wait.
2. Recover: resend the unanswered requests of batches left `sending` by a flush that died (their
   advisory lock is free). The requests are the stored ones, byte for byte, so Stripe's
   identifier (meters) or Idempotency-Key (legacy) turns a second delivery into a no-op.
3. Rounds: claim pending rows (`FOR UPDATE SKIP LOCKED`), reject bad ones with a reason,
   aggregate the rest per (customer, metric, time bucket) and write the batch and every request
   it will send; commit; send with bounded concurrency; record Stripe's answers and the rows'
   outcome in one transaction.
Counting once does not depend on the locks (identifiers do that); the locks only keep two
flushes from sending the same request twice.
Connect (`stripe.accounts`): each request goes to the account that owns its customer
(`_accounts`), stored with the request so a resend goes there too; each such account's meters
are checked the first time a flush claims rows of it. What each row becomes (checked, grouped, its
request) is decided in `usage_grouping`; this module does the flush's database and Stripe work.
"""

from __future__ import annotations

import heapq
import math
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import count
from typing import Any

import anyio
import orjson

from syncd import metrics
from syncd.config import Config
from syncd.db import Database, Dedicated, Row, Tx
from syncd.errors import StripeError, StripePermissionDenied
from syncd.logs import get_logger
from syncd.ratelimit import limiter_for
from syncd.stripe_api import StripeAPI
from syncd.usage_grouping import (
    Event,
    Meter,
    classify,
    event_request,
    meter_value_problem,
    value_text,
)

log = get_logger(__name__)

# The names other modules import from here (what rows become lives in usage_grouping).
__all__ = ["FlushResult", "Meter", "UsageFlusher", "meter_value_problem", "summary", "value_text"]

# Answers recorded per transaction while sending goes on.
_MARK_CHUNK = 250


@dataclass
class FlushResult:
    """What one flush did; `describe()` is the line `syncd flush-usage` prints."""

    rows_reported: int = 0
    rows_failed: int = 0  # Stripe refused the event (reason in the row's error)
    rows_rejected: int = 0  # bad input, never sent
    rows_waiting: int = 0  # left pending: meter missing, customer not yet mirrored, future time
    events_sent: int = 0  # requests answered (a duplicate identifier counts: it was delivered)
    events_failed: int = 0
    events_unsent: int = 0  # left `sending` (retries ran out): resent by the next flush
    batches: int = 0
    batches_recovered: int = 0
    meters_missing: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        text = (
            f"usage flushed in {self.seconds:.2f}s: {self.rows_reported} rows reported, "
            f"{self.rows_failed} failed, {self.rows_rejected} rejected, "
            f"{self.rows_waiting} waiting; {self.events_sent} requests to Stripe "
            f"({self.events_failed} refused, {self.events_unsent} to resend); "
            f"{self.batches} new batches, {self.batches_recovered} recovered"
        )
        if self.meters_missing:
            text += f"; meters missing for: {', '.join(self.meters_missing)}"
        if self.error:
            text += f"; stopped: {self.error}"
        return text


@dataclass
class _Outbound:
    id: int
    identifier: str
    path: str
    base: str
    params: dict[str, Any]
    row_ids: list[int]
    account: str  # the Stripe account it goes to ('': the key's own, as configured)


class _Lanes:
    """A batch's requests queued per key (meter, customer), handed out so that a key never has
    two in flight (Stripe answers 429 to a second meter event of the same customer and meter).

    Of the keys with nothing in flight, the one with the most requests left goes first: a key's
    requests go one after another, so the longest chain bounds the batch and must start at
    once and never wait (taken round-robin, a few customers with many minutes of usage were
    left for last and then went one request at a time). Keys of equal length go round-robin.
    """

    def __init__(
        self, outbound: list[_Outbound], key: Callable[[_Outbound], tuple[str, str]]
    ) -> None:
        self._queues: dict[tuple[str, str], deque[_Outbound]] = defaultdict(deque)
        for ob in outbound:
            self._queues[key(ob)].append(ob)
        self._order = count()
        self._ready = [(-len(q), next(self._order), k) for k, q in self._queues.items()]
        heapq.heapify(self._ready)
        self._busy = 0
        self._changed = anyio.Event()

    def take(self) -> tuple[tuple[str, str], _Outbound] | None:
        """The next request that may go now (its key is then busy until `done`), or None."""
        if not self._ready:
            return None
        _, _, key = heapq.heappop(self._ready)
        self._busy += 1
        return key, self._queues[key].popleft()

    def done(self, key: tuple[str, str]) -> None:
        """The request of `key` was answered (or abandoned): the key's next one may go."""
        self._busy -= 1
        left = len(self._queues[key])
        if left:
            heapq.heappush(self._ready, (-left, next(self._order), key))
        self._changed.set()
        self._changed = anyio.Event()

    @property
    def finished(self) -> bool:
        """Nothing may go now and nothing is in flight: no request will become ready."""
        return not self._ready and not self._busy

    async def changed(self) -> None:
        """Wait until a request is answered (a key may have become free)."""
        await self._changed.wait()


@dataclass(frozen=True)
class _Answer:
    outbound: _Outbound
    error: str | None  # None: delivered


class _Held(Exception):
    """Connect: a connected account refuses the key (disconnected): its requests wait."""


class _Stop(Exception):
    """Sending must stop (retries ran out, or the key was refused); unsent events stay."""


class UsageFlusher:
    def __init__(
        self,
        cfg: Config,
        db: Database,
        api: StripeAPI,
        *,
        instance: str = "",
        stopping: anyio.Event | None = None,
        read_api: StripeAPI | None = None,
    ):
        self.cfg = cfg
        self.usage = cfg.usage
        self.db = db
        self.api = api
        # Listing meters may need another key than sending events (a restricted usage key).
        self.read_api = read_api or api
        self.instance = instance
        self.stopping = stopping
        # Per account ('': the key's own): the metrics whose meter was found, this flush.
        self._meters: dict[str, dict[str, Meter]] = {}
        # Connect: (send, read) clients per connected account, kept so that an account's
        # budget (`stripe.connect_limits = "account"`) lasts from one flush to the next.
        self._clients: dict[str, tuple[StripeAPI, StripeAPI]] = {}
        # Connect: accounts that refused the key this flush (their requests stay unsent).
        self._held: set[str] = set()

    # -- the flush ------------------------------------------------------------------------------

    async def flush(self) -> FlushResult:
        started = time.monotonic()
        result = FlushResult()
        if self.usage.target == "meters" and not self.usage.meters:
            # Not configured: rejecting every row as "unknown metric" would punish the apps.
            # Rows waiting for a meter are a problem to tell; none, in an account that does not
            # report usage, is not (a warning every flush would be noise).
            result.error = "usage.meters is empty: nothing can be reported (rows stay pending)"
            waiting = await self.db.fetchval("usage_has_pending")
            (log.warning if waiting else log.debug)("usage_not_configured", error=result.error)
            return result
        lock_conn = await self.db.dedicated_connection()
        try:
            self._meters, self._held = {}, set()
            if self.usage.target == "meters":
                self._meters[""] = await self.check_meters(result)
            try:
                await self._recover(lock_conn, result)
                last_id = 0
                while not self._stopping():
                    claimed, last_id, outbound = await self._claim(lock_conn, last_id, result)
                    if outbound is not None:
                        await self._send(lock_conn, *outbound, result)
                    if claimed < self.usage.batch_size:
                        break
            except _Stop as stop:
                result.error = str(stop)
            await self.db.execute("usage_prune_batches", self.usage.retention_days * 86400)
        finally:
            await lock_conn.close()
        result.seconds = round(time.monotonic() - started, 3)
        metrics.usage_flush_seconds.observe(result.seconds)
        log.info("usage_flushed", **result.as_dict())
        return result

    @staticmethod
    async def _lock(lock_conn: Dedicated, batch_id: int) -> bool:
        """Lock a batch on the flush's dedicated connection (outside the pool, which would drop
        session locks); False when another flush holds it."""
        return bool(await lock_conn.fetchval("usage_lock_batch", batch_id))

    @staticmethod
    async def _unlock(lock_conn: Dedicated, batch_id: int) -> None:
        await lock_conn.fetchval("usage_unlock_batch", batch_id)

    def _stopping(self) -> bool:
        return self.stopping is not None and self.stopping.is_set()

    # -- accounts (Connect) ---------------------------------------------------------------------

    def _api(self, account: str, *, read: bool = False) -> StripeAPI:
        """The client for requests to `account` ('': the key's own, the client as configured):
        a connected account's sends `Stripe-Account: account`, under a budget of its own when
        `stripe.connect_limits = "account"`, else under the shared one."""
        if not account:
            return self.read_api if read else self.api
        clients = self._clients.get(account)
        if clients is None:
            own = self.cfg.stripe.connect_limits == "account"
            limiter = limiter_for(self.cfg) if own else None
            clients = self._clients[account] = (
                self.api.for_account(account, limiter),
                self.read_api.for_account(account, limiter),
            )
        return clients[1] if read else clients[0]

    async def _accounts(self, conn: Tx, rows: Sequence[Row]) -> dict[str, str]:
        """The one place that decides where usage goes: customer -> the connected account that
        owns it (`{mirror}.customers.account_id`); a customer absent from the answer (the
        platform's own, or not mirrored) is reported to the key's own account. Without
        `stripe.accounts` every customer is the key's own, as before Connect."""
        if not self.cfg.stripe.accounts:
            return {}
        customers = sorted({r["customer_id"] for r in rows if r["customer_id"]})
        found = await conn.fetch("usage_customer_accounts", customers)
        return {r["id"]: r["account_id"] for r in found}

    # -- meters ---------------------------------------------------------------------------------

    async def check_meters(self, result: FlushResult, account: str = "") -> dict[str, Meter]:
        """Active meters of the configured metrics in `account` ('': the key's own); missing
        ones logged and recorded."""
        try:
            active = await self._active_meters(account)
        except StripePermissionDenied as exc:
            # A key that may write meter events but not read meters: assume the configured
            # meters exist with Stripe's default payload keys; Stripe refuses events otherwise.
            log.warning("usage_meter_check_denied", error=str(exc), account=account)
            active = {
                name: Meter("", name, "stripe_customer_id", "value")
                for name in self.usage.meters.values()
            }
        found: dict[str, Meter] = {}
        for metric, event_name in sorted(self.usage.meters.items()):
            meter = active.get(event_name)
            problem = None
            if meter is None:
                problem = f"no active Stripe meter with event_name {event_name!r}"
                result.meters_missing.append(f"{metric} in {account}" if account else metric)
                log.warning(
                    "usage_meter_missing", metric=metric, event_name=event_name, account=account
                )
            else:
                found[metric] = meter
            meter_id = meter.id or None if meter else None
            await self.db.execute(
                "usage_save_meter", metric, event_name, meter_id, problem, account
            )
        await self.db.execute("usage_forget_meters", sorted(self.usage.meters))
        return found

    async def _active_meters(self, account: str) -> dict[str, Meter]:
        active: dict[str, Meter] = {}
        params: dict[str, Any] = {"status": "active", "limit": 100}
        api = self._api(account, read=True)
        while True:
            page = await api.get("/v1/billing/meters", params)
            for m in page.get("data", []):
                if m.get("status") != "active":
                    continue
                active[m["event_name"]] = Meter(
                    m["id"],
                    m["event_name"],
                    (m.get("customer_mapping") or {}).get("event_payload_key")
                    or "stripe_customer_id",
                    (m.get("value_settings") or {}).get("event_payload_key") or "value",
                )
            if not page.get("has_more") or not page.get("data"):
                break
            params = {**params, "starting_after": page["data"][-1]["id"]}
        return active

    # -- claiming -------------------------------------------------------------------------------

    async def _claim(
        self, lock_conn: Dedicated, last_id: int, result: FlushResult
    ) -> tuple[int, int, tuple[int, list[_Outbound]] | None]:
        """One round: claim, classify, write the batch; returns (claimed, last id, batch)."""

        async def tx(conn: Tx) -> tuple[int, int, Any]:
            await conn.execute("usage_tx_settings")
            rows = await conn.fetch("usage_claim", last_id, self.usage.batch_size)
            if not rows:
                return 0, last_id, None
            items = await self._metered_items(conn, rows)
            accounts = await self._accounts(conn, rows)
            if self.usage.target == "meters":
                # A connected account's meters are its own: checked once per flush, when its
                # rows are first claimed (the rows stay locked meanwhile; others skip them).
                for account in sorted(set(accounts.values()) - self._meters.keys()):
                    self._meters[account] = await self.check_meters(result, account)
            events, rejected, waiting = classify(self.cfg, rows, self._meters, items, accounts)
            result.rows_waiting += waiting
            if rejected:
                await conn.execute(
                    "usage_rows_rejected",
                    [r[0] for r in rejected],
                    [r[1] for r in rejected],
                )
                result.rows_rejected += len(rejected)
                metrics.usage_rows.labels("rejected").inc(len(rejected))
                log.warning("usage_rows_rejected", rows=len(rejected), first_reason=rejected[0][1])
            batch = None
            if events:
                batch = await self._write_batch(conn, lock_conn, events)
            return len(rows), max(r["id"] for r in rows), batch

        return await self.db.transact(tx)

    async def _metered_items(
        self, conn: Tx, rows: Sequence[Row]
    ) -> dict[str, list[tuple[str, str | None]]]:
        if self.usage.target != "legacy":
            return {}
        subs = sorted({r["subscription_id"] for r in rows if r["subscription_id"]})
        items: dict[str, list[tuple[str, str | None]]] = {}
        for r in await conn.fetch("usage_metered_items", subs):
            items.setdefault(r["subscription_id"], []).append((r["id"], r["lookup_key"]))
        return items

    async def _write_batch(
        self, conn: Tx, lock_conn: Dedicated, events: list[Event]
    ) -> tuple[int, list[_Outbound]]:
        nonce = uuid.uuid4().hex[:12]
        rows = sum(len(e.row_ids) for e in events)
        batch_id: int = await conn.fetchval(
            "usage_insert_batch", nonce, self.usage.target, self.instance, rows
        )
        # Locked before the batch is visible (commit), so no other flush can think it orphaned.
        await self._lock(lock_conn, batch_id)
        # The identifier is fixed here, before anything is sent, and never changes: a resend
        # after a crash carries the same one, and Stripe counts it once.
        requests = [
            (
                f"syncd_{batch_id}_{nonce}_{n}",
                *event_request(e, f"syncd_{batch_id}_{nonce}_{n}", self._meters.get(e.account, {})),
            )
            for n, e in enumerate(events)
        ]
        inserted = await conn.fetch(
            "usage_insert_events",
            batch_id,
            [r[0] for r in requests],
            [e.customer_id for e in events],
            [e.metric for e in events],
            [e.event_name for e in events],
            [e.item for e in events],
            [e.value for e in events],
            [e.ts for e in events],
            [r[1] for r in requests],
            [r[2] for r in requests],
            [orjson.dumps(r[3]).decode() for r in requests],
            ["{" + ",".join(map(str, e.row_ids)) + "}" for e in events],
            [e.account for e in events],
        )
        ids = {r["identifier"]: r["id"] for r in inserted}
        row_ids: list[int] = []
        event_ids: list[int] = []
        customers: list[str] = []
        outbound: list[_Outbound] = []
        for e, (identifier, path, base, params) in zip(events, requests, strict=True):
            event_id = ids[identifier]
            row_ids.extend(e.row_ids)
            event_ids.extend([event_id] * len(e.row_ids))
            customers.extend([e.customer_id] * len(e.row_ids))
            outbound.append(
                _Outbound(event_id, identifier, path, base, params, e.row_ids, e.account)
            )
        await conn.execute("usage_rows_sending", batch_id, row_ids, event_ids, customers)
        log.info("usage_batch_written", batch_id=batch_id, rows=rows, events=len(events))
        return batch_id, outbound

    # -- sending --------------------------------------------------------------------------------

    async def _recover(self, lock_conn: Dedicated, result: FlushResult) -> None:
        for row in await self.db.fetch("usage_sending_batches"):
            batch_id = row["id"]
            if not await self._lock(lock_conn, batch_id):
                continue  # another flush is sending it right now
            if await self.db.fetchval("usage_batch_status", batch_id) != "sending":
                await self._unlock(lock_conn, batch_id)
                continue  # finished between our look and our lock
            pending = [
                _Outbound(
                    r["id"],
                    r["identifier"],
                    r["path"],
                    r["base"],
                    orjson.loads(r["params"]),
                    list(r["row_ids"]),
                    r["account_id"],  # the account it was meant for, whatever the mirror says now
                )
                for r in await self.db.fetch("usage_batch_events", batch_id)
            ]
            log.info("usage_batch_recovering", batch_id=batch_id, events=len(pending))
            result.batches_recovered += 1
            await self._send(lock_conn, batch_id, pending, result, recovered=True)

    async def _send(
        self,
        lock_conn: Dedicated,
        batch_id: int,
        outbound: list[_Outbound],
        result: FlushResult,
        *,
        recovered: bool = False,
    ) -> None:
        """Send a batch's requests, recording answers as they come (in chunks, while sending
        goes on); raise _Stop if sending must stop."""
        if not recovered:
            result.batches += 1
        stop: list[str] = []
        # Stripe takes one meter-event request at a time per customer and meter (more get 429):
        # requests of one key are never in flight together, the longest chains first.
        lanes = _Lanes(outbound, self._one_at_a_time)
        answered, answers = anyio.create_memory_object_stream[_Answer](max_buffer_size=math.inf)
        started = time.monotonic()
        counts = {"sent": 0, "refused": 0}

        async def worker() -> None:
            while not (stop or self._stopping()):  # unsent requests stay for the next flush
                taken = lanes.take()
                if taken is None:
                    if lanes.finished:
                        return
                    await lanes.changed()  # every free key is taken: wait for an answer
                    continue
                key, ob = taken
                try:
                    if ob.account in self._held:
                        continue  # unsent: sent again by a later flush
                    error = await self._send_one(ob)
                except _Held:
                    continue
                except _Stop as exc:
                    stop.append(str(exc))
                    return
                finally:
                    lanes.done(key)
                answered.send_nowait(_Answer(ob, error))

        async def senders() -> None:
            async with answered, anyio.create_task_group() as tg:
                for _ in range(min(self.usage.concurrency, len(outbound))):
                    tg.start_soon(worker)

        async def recorder() -> None:
            chunk: list[_Answer] = []
            async with answers:
                async for answer in answers:
                    chunk.append(answer)
                    if len(chunk) >= _MARK_CHUNK:
                        await self._mark(chunk, result, counts)
                        chunk = []
            if chunk:
                await self._mark(chunk, result, counts)

        async with anyio.create_task_group() as tg:
            tg.start_soon(recorder)
            tg.start_soon(senders)
        unsent = len(outbound) - counts["sent"]
        result.events_unsent += unsent
        if unsent:
            metrics.usage_events.labels("unsent").inc(unsent)
        await self.db.execute("usage_finish_batch", batch_id)
        await self._unlock(lock_conn, batch_id)
        log.info(
            "usage_batch_sent",
            batch_id=batch_id,
            events=counts["sent"],
            refused=counts["refused"],
            unsent=unsent,
            recovered=recovered,
            seconds=round(time.monotonic() - started, 3),
        )
        if stop:
            raise _Stop(stop[0])

    async def _mark(
        self, chunk: list[_Answer], result: FlushResult, counts: dict[str, int]
    ) -> None:
        """Record Stripe's answers and the rows' outcome in one transaction."""
        ok = [a.outbound for a in chunk if a.error is None]
        bad = [a for a in chunk if a.error is not None]

        async def tx(conn: Tx) -> tuple[int, int]:
            await conn.execute("usage_async_commit")
            reported = failed = 0
            if ok:
                row = await conn.fetchrow(
                    "usage_mark_reported",
                    [o.id for o in ok],
                    [i for o in ok for i in o.row_ids],
                )
                reported = row["rows"] if row is not None else 0
            if bad:
                row = await conn.fetchrow(
                    "usage_mark_failed",
                    [a.outbound.id for a in bad],
                    [a.error for a in bad],
                    [i for a in bad for i in a.outbound.row_ids],
                    [a.error for a in bad for _ in a.outbound.row_ids],
                )
                failed = row["rows"] if row is not None else 0
            return reported, failed

        reported, failed = await self.db.transact(tx)
        counts["sent"] += len(chunk)
        counts["refused"] += len(bad)
        result.events_sent += len(chunk)
        result.events_failed += len(bad)
        result.rows_reported += reported
        result.rows_failed += failed
        metrics.usage_rows.labels("reported").inc(reported)
        metrics.usage_rows.labels("failed").inc(failed)

    def _one_at_a_time(self, ob: _Outbound) -> tuple[str, str]:
        """The (meter, customer) of a meter event; a legacy usage record's subscription item."""
        event_name, payload = ob.params.get("event_name"), ob.params.get("payload")
        if not isinstance(event_name, str) or not isinstance(payload, dict):
            return (ob.path, "")
        meters = self._meters.get(ob.account, {}).values()
        meter = next((m for m in meters if m.event_name == event_name), None)
        key = meter.customer_key if meter is not None else "stripe_customer_id"
        return (event_name, str(payload.get(key, "")))

    async def _send_one(self, ob: _Outbound) -> str | None:
        """Send one request: None when delivered, Stripe's reason when refused for good."""
        try:
            await self._api(ob.account).request(
                "POST", ob.path, ob.params, idempotency_key=ob.identifier, base=ob.base
            )
        except StripeError as exc:
            message = str(exc)
            if exc.status == 400 and "already exists" in message and "identifier" in message:
                # Delivered by an earlier attempt that died before recording the answer.
                metrics.usage_events.labels("duplicate").inc()
                return None
            if ob.account and exc.status in (401, 403):
                # One connected account refuses the key (it disconnected): its requests wait,
                # unsent, for a later flush (it may connect again); the others go on.
                if ob.account not in self._held:
                    self._held.add(ob.account)
                    log.warning("usage_account_refused", account=ob.account, error=message)
                raise _Held(message) from exc
            if (
                exc.retryable
                or exc.status in (None, 401, 403)
                or (exc.status == 404 and not exc.code)
            ):
                # Retries ran out, the key is refused, or the endpoint is unknown (a 404 without
                # resource_missing: wrong address or API version): nothing is wrong with the rows.
                raise _Stop(message) from exc
            metrics.usage_events.labels("failed").inc()
            log.warning("usage_event_refused", identifier=ob.identifier, error=message)
            return f"stripe: {message}"
        metrics.usage_events.labels("reported").inc()
        return None


async def summary(db: Database, errors: int = 10) -> dict[str, Any]:
    """Counts by status, the oldest unreported row, meter problems, the latest failures."""
    row = await db.fetchrow("usage_summary", errors)
    assert row is not None
    return dict(row)
