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
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, Inexact, localcontext
from typing import Any

import anyio
import asyncpg
import orjson

from syncd import metrics
from syncd.config import Config
from syncd.db import Database, translate
from syncd.errors import StripeError, StripePermissionDenied
from syncd.logs import get_logger
from syncd.stripe_api import StripeAPI

log = get_logger(__name__)

METER_EVENTS_PATH = "/v1/billing/meter_events"
# Stripe accepts meter events at most this far in the future; rows further ahead are bad input
# beyond FUTURE_REJECT, and wait until they are due in between.
FUTURE_LIMIT = 300
FUTURE_REJECT = 3600
# Answers recorded per transaction while sending goes on.
_MARK_CHUNK = 250
# Stripe keeps meter event values as doubles: it refuses (API 2026-04-22 and later) or rounds
# (earlier versions) a value with more significant digits than this.
METER_VALUE_DIGITS = 15
# Sums of quantities are exact: Python's default decimal context rounds to 28 significant digits
# without a word. This one never rounds (additions of numerics PostgreSQL can hold fit many times
# over), and would raise rather than round if it ever had to.
EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[Inexact])


@dataclass(frozen=True)
class Meter:
    id: str
    event_name: str
    customer_key: str
    value_key: str


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
class _Event:
    """One request to Stripe, being assembled from rows."""

    customer_id: str
    metric: str
    event_name: str | None
    item: str | None
    ts: int
    value: Decimal = Decimal(0)
    row_ids: list[int] = field(default_factory=list)


@dataclass
class _Outbound:
    id: int
    identifier: str
    path: str
    base: str
    params: dict[str, Any]
    row_ids: list[int]


@dataclass(frozen=True)
class _Answer:
    outbound: _Outbound
    error: str | None  # None: delivered


class _Stop(Exception):
    """Sending must stop (retries ran out, or the key was refused); unsent events stay."""


def value_text(value: Decimal) -> str:
    """A decimal as Stripe wants it in a meter payload: plain digits, no exponent, exact."""
    text = format(value.normalize(EXACT), "f")
    return text if text != "-0" else "0"


def meter_value_problem(value: Decimal) -> str | None:
    """Why Stripe cannot take this meter value exactly, or None when it can."""
    if not value.is_finite():
        return "is not a finite number"
    shape = value.as_tuple()
    if len(shape.digits) <= METER_VALUE_DIGITS and -290 < int(shape.exponent) < 290:
        # The common case, without arithmetic: 15 digits well inside a double's normal range
        # come back from a double unchanged.
        return None
    digits = len(value.normalize(EXACT).as_tuple().digits)
    if digits > METER_VALUE_DIGITS:
        return f"has {digits} significant digits, Stripe meter values at most {METER_VALUE_DIGITS}"
    if value and Decimal(repr(float(value))) != value:
        return "is out of the range of Stripe meter values (double precision)"
    return None


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
        self._meters: dict[str, Meter] = {}

    # -- the flush ------------------------------------------------------------------------------

    async def flush(self) -> FlushResult:
        started = time.monotonic()
        result = FlushResult()
        if self.usage.target == "meters" and not self.usage.meters:
            # Not configured: rejecting every row as "unknown metric" would punish the apps.
            result.error = "usage.meters is empty: nothing can be reported (rows stay pending)"
            log.warning("usage_not_configured", error=result.error)
            return result
        lock_conn = await self.db.dedicated_connection()
        try:
            meters: dict[str, Meter] = {}
            if self.usage.target == "meters":
                meters = await self.check_meters(result)
            self._meters = meters
            try:
                await self._recover(lock_conn, result)
                last_id = 0
                while not self._stopping():
                    claimed, last_id, outbound = await self._claim(
                        lock_conn, meters, last_id, result
                    )
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

    async def _lock(self, conn: asyncpg.Connection, query: str, batch_id: int) -> bool:
        """(Un)lock a batch on the flush's dedicated connection (outside the pool, which would
        drop session locks), with driver errors translated like the rest of the database layer."""
        try:
            return bool(await conn.fetchval(self.db.sql(query), batch_id))
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise translate(exc, self.db.dsn) from exc

    def _stopping(self) -> bool:
        return self.stopping is not None and self.stopping.is_set()

    # -- meters ---------------------------------------------------------------------------------

    async def check_meters(self, result: FlushResult) -> dict[str, Meter]:
        """Active meters of the configured metrics; missing ones logged and recorded."""
        try:
            active = await self._active_meters()
        except StripePermissionDenied as exc:
            # A key that may write meter events but not read meters: assume the configured
            # meters exist with Stripe's default payload keys; Stripe refuses events otherwise.
            log.warning("usage_meter_check_denied", error=str(exc))
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
                result.meters_missing.append(metric)
                log.warning("usage_meter_missing", metric=metric, event_name=event_name)
            else:
                found[metric] = meter
            await self.db.execute(
                "usage_save_meter", metric, event_name, meter.id or None if meter else None, problem
            )
        await self.db.execute("usage_forget_meters", sorted(self.usage.meters))
        return found

    async def _active_meters(self) -> dict[str, Meter]:
        active: dict[str, Meter] = {}
        params: dict[str, Any] = {"status": "active", "limit": 100}
        while True:
            page = await self.read_api.get("/v1/billing/meters", params)
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
        self,
        lock_conn: asyncpg.Connection,
        meters: Mapping[str, Meter],
        last_id: int,
        result: FlushResult,
    ) -> tuple[int, int, tuple[int, list[_Outbound]] | None]:
        """One round: claim, classify, write the batch; returns (claimed, last id, batch)."""

        async def tx(conn: asyncpg.Connection) -> tuple[int, int, Any]:
            await conn.execute(self.db.sql("usage_tx_settings"))
            rows = await conn.fetch(self.db.sql("usage_claim"), last_id, self.usage.batch_size)
            if not rows:
                return 0, last_id, None
            items = await self._metered_items(conn, rows)
            events, rejected, waiting = self._classify(rows, meters, items)
            result.rows_waiting += waiting
            if rejected:
                await conn.execute(
                    self.db.sql("usage_rows_rejected"),
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

        return await self.db.run(tx)

    async def _metered_items(
        self, conn: asyncpg.Connection, rows: Sequence[asyncpg.Record]
    ) -> dict[str, list[tuple[str, str | None]]]:
        if self.usage.target != "legacy":
            return {}
        subs = sorted({r["subscription_id"] for r in rows if r["subscription_id"]})
        items: dict[str, list[tuple[str, str | None]]] = {}
        for r in await conn.fetch(self.db.sql("usage_metered_items"), subs):
            items.setdefault(r["subscription_id"], []).append((r["id"], r["lookup_key"]))
        return items

    def _classify(
        self,
        rows: Sequence[asyncpg.Record],
        meters: Mapping[str, Meter],
        items: Mapping[str, list[tuple[str, str | None]]],
    ) -> tuple[list[_Event], list[tuple[int, str]], int]:
        """Group good rows into events; bad ones get a reason; others wait for a later flush.
        Totals are exact; an event whose total Stripe cannot take exactly fails its rows."""
        events: dict[tuple[str, str, int], _Event] = {}
        rejected: list[tuple[int, str]] = []
        with localcontext(EXACT):
            waiting = self._group(rows, meters, items, events, rejected)
        good: list[_Event] = []
        for event in events.values():
            reason = self._unsendable(event)
            if reason is not None:
                rejected.extend((row_id, reason) for row_id in event.row_ids)
            else:
                good.append(event)
        return good, rejected, waiting

    def _group(
        self,
        rows: Sequence[asyncpg.Record],
        meters: Mapping[str, Meter],
        items: Mapping[str, list[tuple[str, str | None]]],
        events: dict[tuple[str, str, int], _Event],
        rejected: list[tuple[int, str]],
    ) -> int:
        """Add the rows to their events (exactly: run in the EXACT context); returns how many
        rows wait for a later flush."""
        bucket = self.usage.bucket_seconds
        legacy = self.usage.target == "legacy"
        grace = self.usage.unresolved_grace
        waiting = 0
        for r in rows:
            row_id, metric, ts, now = r["id"], r["metric"], r["ts"], r["now"]
            customer = r["customer_id"]
            if not legacy and metric not in self.usage.meters:
                rejected.append(
                    (row_id, f"rejected: unknown metric {metric!r} (not in usage.meters)")
                )
                continue
            if ts > now + FUTURE_REJECT:
                rejected.append((row_id, "rejected: timestamp more than an hour in the future"))
                continue
            if ts > now + FUTURE_LIMIT:
                waiting += 1  # due soon: Stripe takes it once it is within 5 minutes
                continue
            if not legacy and metric not in meters:
                waiting += 1  # the meter is missing in Stripe: see usage_meters / syncd status
                continue
            problem = None if legacy else meter_value_problem(r["quantity"])
            if problem is not None:
                rejected.append((row_id, f"rejected: quantity {r['quantity']} {problem}"))
                continue
            if customer is None:
                if r["age"] < grace:
                    waiting += 1  # the mirror may not have the subscription or customer yet
                else:
                    rejected.append((row_id, _unresolved_reason(r, self.cfg)))
                continue
            item = None
            if legacy:
                item, reason = _legacy_item(r["subscription_id"], metric, items)
                if item is None:
                    # No item yet may be mirror lag: wait out the grace, unless it cannot help.
                    if r["age"] >= grace or r["subscription_id"] is None:
                        rejected.append((row_id, reason or "rejected: no metered item"))
                    else:
                        waiting += 1
                    continue
            start = ts - ts % bucket
            key = (item or customer, metric, start)
            event = events.get(key)
            if event is None:
                event_name = None if legacy else meters[metric].event_name
                event = events[key] = _Event(customer, metric, event_name, item, start)
            event.value += r["quantity"]
            event.row_ids.append(row_id)
        return waiting

    def _unsendable(self, event: _Event) -> str | None:
        """Why an event's exact total cannot be sent to Stripe (its rows then fail), or None."""
        if self.usage.target == "legacy":
            if event.value != event.value.to_integral_value():
                return f"rejected: legacy usage records take whole quantities, got {event.value}"
            return None
        problem = meter_value_problem(event.value)
        if problem is None:
            return None
        return (
            f"rejected: the total {value_text(event.value)} of {len(event.row_ids)} rows"
            f" (customer {event.customer_id}, {event.metric}, bucket {event.ts}) {problem};"
            " it cannot be sent exactly"
        )

    async def _write_batch(
        self, conn: asyncpg.Connection, lock_conn: asyncpg.Connection, events: list[_Event]
    ) -> tuple[int, list[_Outbound]]:
        nonce = uuid.uuid4().hex[:12]
        rows = sum(len(e.row_ids) for e in events)
        batch_id: int = await conn.fetchval(
            self.db.sql("usage_insert_batch"), nonce, self.usage.target, self.instance, rows
        )
        # Locked before the batch is visible (commit), so no other flush can think it orphaned.
        await self._lock(lock_conn, "usage_lock_batch", batch_id)
        # The identifier is fixed here, before anything is sent, and never changes: a resend
        # after a crash carries the same one, and Stripe counts it once.
        requests = [
            (f"syncd_{batch_id}_{nonce}_{n}", *self._request(e, f"syncd_{batch_id}_{nonce}_{n}"))
            for n, e in enumerate(events)
        ]
        inserted = await conn.fetch(
            self.db.sql("usage_insert_events"),
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
            outbound.append(_Outbound(event_id, identifier, path, base, params, e.row_ids))
        await conn.execute(
            self.db.sql("usage_rows_sending"), batch_id, row_ids, event_ids, customers
        )
        log.info("usage_batch_written", batch_id=batch_id, rows=rows, events=len(events))
        return batch_id, outbound

    def _request(self, e: _Event, identifier: str) -> tuple[str, str, dict[str, Any]]:
        """(path, base address, parameters) of the event's request to Stripe."""
        if e.item is not None:
            params: dict[str, Any] = {
                "quantity": int(e.value),
                "timestamp": e.ts,
                "action": "increment",
            }
            return f"/v1/subscription_items/{e.item}/usage_records", "api", params
        # Only metrics whose meter was found get here (see _classify). The payload keys are the
        # meter's own (customer_mapping / value_settings), stored with the request.
        meter = self._meters[e.metric]
        params = {
            "event_name": meter.event_name,
            "identifier": identifier,
            "timestamp": e.ts,
            "payload": {meter.customer_key: e.customer_id, meter.value_key: value_text(e.value)},
        }
        return METER_EVENTS_PATH, "meter_events", params

    # -- sending --------------------------------------------------------------------------------

    async def _recover(self, lock_conn: asyncpg.Connection, result: FlushResult) -> None:
        for row in await self.db.fetch("usage_sending_batches"):
            batch_id = row["id"]
            if not await self._lock(lock_conn, "usage_lock_batch", batch_id):
                continue  # another flush is sending it right now
            if await self.db.fetchval("usage_batch_status", batch_id) != "sending":
                await self._lock(lock_conn, "usage_unlock_batch", batch_id)
                continue  # finished between our look and our lock
            pending = [
                _Outbound(
                    r["id"],
                    r["identifier"],
                    r["path"],
                    r["base"],
                    orjson.loads(r["params"]),
                    list(r["row_ids"]),
                )
                for r in await self.db.fetch("usage_batch_events", batch_id)
            ]
            log.info("usage_batch_recovering", batch_id=batch_id, events=len(pending))
            result.batches_recovered += 1
            await self._send(lock_conn, batch_id, pending, result, recovered=True)

    async def _send(
        self,
        lock_conn: asyncpg.Connection,
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
        queue = iter(outbound)
        answered, answers = anyio.create_memory_object_stream[_Answer](max_buffer_size=math.inf)
        started = time.monotonic()
        counts = {"sent": 0, "refused": 0}

        async def worker() -> None:
            for ob in queue:
                if stop or self._stopping():
                    return  # unsent requests stay in the outbox for the next flush
                try:
                    error = await self._send_one(ob)
                except _Stop as exc:
                    stop.append(str(exc))
                    return
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
        await self._lock(lock_conn, "usage_unlock_batch", batch_id)
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

        async def tx(conn: asyncpg.Connection) -> tuple[int, int]:
            await conn.execute(self.db.sql("usage_async_commit"))
            reported = failed = 0
            if ok:
                row = await conn.fetchrow(
                    self.db.sql("usage_mark_reported"),
                    [o.id for o in ok],
                    [i for o in ok for i in o.row_ids],
                )
                reported = row["rows"] if row is not None else 0
            if bad:
                row = await conn.fetchrow(
                    self.db.sql("usage_mark_failed"),
                    [a.outbound.id for a in bad],
                    [a.error for a in bad],
                    [i for a in bad for i in a.outbound.row_ids],
                    [a.error for a in bad for _ in a.outbound.row_ids],
                )
                failed = row["rows"] if row is not None else 0
            return reported, failed

        reported, failed = await self.db.run(tx)
        counts["sent"] += len(chunk)
        counts["refused"] += len(bad)
        result.events_sent += len(chunk)
        result.events_failed += len(bad)
        result.rows_reported += reported
        result.rows_failed += failed
        metrics.usage_rows.labels("reported").inc(reported)
        metrics.usage_rows.labels("failed").inc(failed)

    async def _send_one(self, ob: _Outbound) -> str | None:
        """Send one request: None when delivered, Stripe's reason when refused for good."""
        try:
            await self.api.request(
                "POST", ob.path, ob.params, idempotency_key=ob.identifier, base=ob.base
            )
        except StripeError as exc:
            message = str(exc)
            if exc.status == 400 and "already exists" in message and "identifier" in message:
                # Delivered by an earlier attempt that died before recording the answer.
                metrics.usage_events.labels("duplicate").inc()
                return None
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


def _legacy_item(
    subscription_id: str | None, metric: str, items: Mapping[str, list[tuple[str, str | None]]]
) -> tuple[str | None, str | None]:
    """The metered item of the subscription for this metric: the one whose price's lookup_key
    is the metric, else the subscription's only metered item."""
    if subscription_id is None:
        return None, "rejected: the legacy target needs subscription_id on each row"
    candidates = items.get(subscription_id, [])
    for item, lookup_key in candidates:
        if lookup_key == metric:
            return item, None
    if len(candidates) == 1:
        return candidates[0][0], None
    if not candidates:
        reason = f"no metered item on subscription {subscription_id} in the mirror"
    else:
        reason = f"several metered items on {subscription_id}; none has lookup_key {metric!r}"
    return None, f"rejected: {reason}"


def _unresolved_reason(row: asyncpg.Record, cfg: Config) -> str:
    mirror = cfg.database.mirror_schema
    tried = []
    if row["subscription_id"]:
        tried.append(f"subscription {row['subscription_id']} not in {mirror}.subscriptions")
    if row["user_id"]:
        tried.append(f"no live customer with user_id {row['user_id']} in {mirror}.customers")
    return "rejected: no customer: " + "; ".join(tried)


async def summary(db: Database, errors: int = 10) -> dict[str, Any]:
    """Counts by status, the oldest unreported row, meter problems, the latest failures."""
    row = await db.fetchrow("usage_summary", errors)
    assert row is not None
    return dict(row)
