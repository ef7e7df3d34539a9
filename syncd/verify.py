"""`syncd verify`: compare the mirror with Stripe, type by type, and optionally repair it.

Each verified type is listed completely the way a full resync lists it (`lister.PageReader` over
the registry's list variants, with the same children: inline lists completed when they have
more, per-parent lists) but nothing is written while listing: each page is compared with the
mirror's rows of its ids. Then the mirror's live rows that no list showed are collected. Every
candidate (missing, extra, different) is confirmed once before it is reported: retrieved again
(owned children: their parent's child list listed again), then compared with the mirror's row
read after that answer, so a change made in Stripe while the verify ran is not reported as
drift, and a live row that a list does not show (an incomplete list, an object hidden by
default) is drift only when Stripe says it is gone. `--repair` writes what Stripe holds for every
confirmed drift through the writer (its version guard; tombstones are final), stamped with the
version of the answer that showed it. Usage, guarantees, the JSON shape, the fields left out and
the request cost per type: docs/verify.md.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar
from urllib.parse import quote

import anyio
import orjson

from syncd import migrations
from syncd.config import Config
from syncd.db import Database, Row, Tx
from syncd.errors import ConfigError, DatabaseError, StripeError, StripeNotFound, one_error
from syncd.lister import ChildWrite, Fetch, Page, PageReader, Slice, fetch_all, list_params
from syncd.logs import configure as configure_logging
from syncd.quarantine import Quarantine, refusal
from syncd.ratelimit import limiter_for
from syncd.registry import BY_TABLE, Child, Resource, selected
from syncd.resync import object_fault, write_or_quarantine
from syncd.status import live_after
from syncd.storable import loads_lax, unescape
from syncd.stripe_api import Reply, StripeAPI, endpoint_label
from syncd.versions import Version
from syncd.writer import Writer

T = TypeVar("T")

# Live mirror ids read per statement, and sampled objects compared per statement.
MIRROR_BATCH = 10_000
# Candidates confirmed at once: one task each, their requests under the concurrency limit.
CONFIRM_BATCH = 100
# Where repairs come from: in quarantine entries, and in the rows they change (changed_by,
# recorded by history) alike.
SOURCE = "syncd verify --repair"
TOMBSTONED = "tombstoned in the mirror: tombstones are final, so --repair cannot bring it back"
STALE = (
    "not written: the writer's version guard kept the row (Stripe's answer is not certainly"
    " newer than it; when unsure the writer queues a refetch)"
)


# ---- scope --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """What one verify covers: the tables compared, the lists walked to reach them (a child's
    parent is listed even when the parent itself is not compared), the children fetched with
    each list, and the tables this configuration cannot verify."""

    tables: tuple[Resource, ...]
    listed: tuple[Resource, ...]
    children: Mapping[str, tuple[tuple[Child, Resource], ...]]
    skipped: Mapping[str, str]
    # Every mirrored table: a parent gone from Stripe takes its owned children with it.
    mirrored: frozenset[str]


def resolve_scope(cfg: Config, types: Sequence[str] | None) -> Scope:
    """The scope of `--type` (None or empty: every mirrored table). Naming a parent brings the
    owned children it carries inline (subscription items, invoice lines, checkout line items:
    part of the parent, a request only for a parent whose inline list has more); per-parent
    lists (payment methods, tax ids, entitlements, product features: a request per parent)
    come only when named, or with no --type. ConfigError (exit 2) for a name it cannot verify."""
    chosen = selected(cfg.sync.include, cfg.sync.exclude)
    mirrored = frozenset(r.table for r in chosen)
    if types:
        for name in types:
            if name not in BY_TABLE:
                raise ConfigError(f"verify: unknown type {name!r} (known: {', '.join(BY_TABLE)})")
            if name not in mirrored:
                raise ConfigError(f"verify: {name} is not mirrored (sync.include/sync.exclude)")
        wanted = set(types)
        for name in types:
            for c in BY_TABLE[name].children:
                if c.inline_field and BY_TABLE[c.table].owned and c.table in mirrored:
                    wanted.add(c.table)
    else:
        wanted = set(mirrored)
    skipped: dict[str, str] = {}
    children: dict[str, tuple[tuple[Child, Resource], ...]] = {}
    listed: list[Resource] = []
    for res in chosen:
        if not res.list_path:
            continue
        kids: list[tuple[Child, Resource]] = []
        for c in res.children:
            if c.table not in wanted:
                continue
            if c.inline_field is None and not cfg.sync.per_parent_lists:
                skipped[c.table] = (
                    "Stripe lists it only per parent and sync.per_parent_lists is false "
                    "(the mirror follows its events only)"
                )
                continue
            kids.append((c, BY_TABLE[c.table]))
        if res.table in wanted or kids:
            listed.append(res)
            children[res.table] = tuple(kids)
    named_skipped = [n for n in types or () if n in skipped]
    if named_skipped:
        name = named_skipped[0]
        raise ConfigError(f"verify: {name} cannot be verified: {skipped[name]}")
    tables = tuple(r for r in chosen if r.table in wanted and r.table not in skipped)
    return Scope(tables, tuple(listed), children, skipped, mirrored)


# ---- comparing ----------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """JSON equality: Python's == holds `true == 1`, JSON does not. Numbers compare by value
    whatever their form (1, 1.0, 1e0), as jsonb compares them (the writer's own test of
    whether content changed)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def differing(stripe: dict[str, Any], mirror: Any) -> list[str]:
    """The top-level fields whose values differ (a field only one side has counts), sorted."""
    if not isinstance(mirror, dict):
        return ["(the row's raw is not an object)"]
    keys = stripe.keys() | mirror.keys()
    return sorted(
        k for k in keys if k not in stripe or k not in mirror or not same(stripe[k], mirror[k])
    )


def stored_form(res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` as the mirror stores it: without what was expanded only to reach children
    (checkout line items), which neither the resync nor the event stream keeps in `raw`."""
    for child in res.children:
        if child.parent_expand and child.inline_field:
            obj.pop(child.inline_field, None)
    return obj


def mirror_raw(row: Row) -> Any:
    """A row's `raw` as Stripe sent it (NUL characters are stored escaped: storable.py)."""
    return unescape(row["raw"])


def agrees(expected: dict[str, Any] | None, row: Row | None) -> bool:
    """Whether a row holds what Stripe holds (`expected`; None: the object is gone)."""
    live = row is not None and not row["deleted"]
    if expected is None or row is None:
        return expected is None and not live
    return live and not differing(expected, mirror_raw(row))


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---- what a verify finds ------------------------------------------------------------------


@dataclass
class Upsert:
    """Write what Stripe holds for one object, stamped with the answer that showed it."""

    obj: dict[str, Any]
    reply: Reply


@dataclass
class Tombstone:
    """The object is gone from Stripe, as of the answer that said so: a `deleted: true`
    object's version, or for a 404 (no answer to take one from) the clock's version of the
    request (`StripeClock.since`: from when it was sent to when the 404 came back)."""

    version: Version


@dataclass
class ChildSet:
    """An owned child set of one parent as Stripe lists it now (its version: the list's), or
    None when the parent is gone (`gone`: the version of the answer that said so)."""

    parent_id: str
    listed: ChildWrite | None
    gone: Version | None = None


Fix = Upsert | Tombstone | ChildSet


@dataclass
class Drift:
    kind: str  # "missing", "extra" or "different"
    parent: str | None = None  # owned children: the parent it is confirmed under
    fields: list[str] = field(default_factory=list)  # "different": the top-level fields
    confirmed: bool = False
    expected: dict[str, Any] | None = None  # confirmed: what Stripe holds (None: gone)
    note: str | None = None  # why it is reported as it is (not confirmed, tombstoned row)
    fix: Fix | None = None  # what --repair writes (None: nothing can)


@dataclass
class TableCheck:
    resource: Resource
    stripe_ids: set[str] = field(default_factory=set)
    parent_of: dict[str, str] = field(default_factory=dict)  # owned children, Stripe's side
    mirror_live: int = 0
    compared: int = 0
    unlisted: int = 0  # live rows no list showed that Stripe still holds, as the mirror does
    requests: int = 0
    candidates: dict[str, Drift] = field(default_factory=dict)
    drift: dict[str, Drift] = field(default_factory=dict)
    rejected: list[tuple[str | None, str]] = field(default_factory=list)
    error: str | None = None
    sample: list[dict[str, Any]] = field(default_factory=list)
    sampled: int = 0  # objects offered to the sample (reservoir sampling)
    repaired: list[str] = field(default_factory=list)
    unrepaired: dict[str, str] = field(default_factory=dict)

    def ids(self, kind: str) -> list[str]:
        return sorted(oid for oid, d in self.drift.items() if d.kind == kind)

    def as_json(self) -> dict[str, Any]:
        return {
            "stripe_count": len(self.stripe_ids),
            "mirror_live": self.mirror_live,
            "compared": self.compared,
            "unlisted": self.unlisted,
            "missing": self.ids("missing"),
            "extra": self.ids("extra"),
            "different": [
                {"id": oid, "fields": self.drift[oid].fields} for oid in self.ids("different")
            ],
            "notes": {oid: d.note for oid, d in sorted(self.drift.items()) if d.note},
            "rejected": [{"id": oid, "reason": reason} for oid, reason in self.rejected],
            "requests": self.requests,
            "error": self.error,
            "repaired": sorted(self.repaired),
            "unrepaired": [
                {"id": oid, "reason": reason} for oid, reason in sorted(self.unrepaired.items())
            ],
        }


@dataclass
class Report:
    tables: dict[str, TableCheck]
    skipped: Mapping[str, str]
    requests: int
    seconds: float
    sample: int | None
    repair: bool
    rate_limit: float = 0.0
    daemon: str | None = None  # the live daemon's instance id, if one led

    @property
    def drifted(self) -> int:
        return sum(len(t.drift) for t in self.tables.values())

    @property
    def ok(self) -> bool:
        return not self.drifted and not any(t.error for t in self.tables.values())

    @property
    def exit_code(self) -> int:
        # Drift found is exit 1 even when --repair wrote it all: something let the mirror
        # drift, and a second verify (exit 0) is what shows the mirror equals Stripe.
        return 0 if self.ok else 1

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "drifted": self.drifted,
            "tables": {name: t.as_json() for name, t in self.tables.items()},
            "skipped": dict(self.skipped),
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "rate_limit": self.rate_limit,
            "daemon": self.daemon,
            "sample": self.sample,
            "repair": self.repair,
        }

    def print_text(self, out: TextIO) -> None:
        for name, t in self.tables.items():
            head = f"{name}: Stripe {len(t.stripe_ids):,}, mirror {t.mirror_live:,} live"
            head += f", {t.compared:,} compared"
            if t.unlisted:
                head += f", {t.unlisted:,} live but not listed (Stripe still has them)"
            if t.error:
                print(f"{head}: NOT VERIFIED: {t.error}", file=out)
            else:
                print(f"{head}: {f'{len(t.drift):,} drifted' if t.drift else 'ok'}", file=out)
            for oid, d in sorted(t.drift.items(), key=lambda kv: (kv[1].kind, kv[0])):
                what = f"  {d.kind:<10} {oid}"
                if d.fields:
                    what += f": {', '.join(d.fields)}"
                if d.note:
                    what += f" ({d.note})"
                print(what, file=out)
            for bad_id, reason in t.rejected:
                print(f"  rejected   {bad_id or '(no id)'}: {reason}", file=out)
            for oid in sorted(t.repaired):
                print(f"  repaired   {oid}", file=out)
            for oid, reason in sorted(t.unrepaired.items()):
                print(f"  unrepaired {oid}: {reason}", file=out)
        for name, reason in self.skipped.items():
            print(f"{name}: skipped: {reason}", file=out)
        shared = (
            f"; a daemon runs ({self.daemon}): verify kept to its own {self.rate_limit:g}/s"
            if self.daemon
            else ""
        )
        print(
            f"{self.requests:,} Stripe requests in {self.seconds:.1f}s "
            f"(rate limit {self.rate_limit:g}/s{shared})",
            file=out,
        )
        failed = [n for n, t in self.tables.items() if t.error]
        if self.ok:
            print("the mirror equals Stripe", file=out)
            return
        drifted = [n for n, t in self.tables.items() if t.drift]
        if drifted:
            repaired = sum(len(t.repaired) for t in self.tables.values())
            tail = (
                f"; --repair wrote {repaired:,} of them (run verify again to confirm)"
                if self.repair
                else "; `syncd verify --repair` writes what Stripe holds"
            )
            print(f"drift: {self.drifted:,} object(s) in {', '.join(drifted)}{tail}", file=out)
        if failed:
            print(f"not verified: {', '.join(failed)}", file=out)


# ---- the verify ---------------------------------------------------------------------------


class Verifier:
    def __init__(
        self,
        cfg: Config,
        db: Database,
        api: StripeAPI,
        scope: Scope,
        *,
        sample: int | None = None,
        repair: bool = False,
        settle: float = 0.0,
        rng: random.Random | None = None,
    ):
        self.cfg = cfg
        self.db = db
        self.api = api
        self.scope = scope
        self.sample = sample
        self.repair = repair
        # Seconds to wait before reading the mirror once more when drift remains while a
        # daemon runs: a change Stripe made moments ago may be on its way through the events.
        self.settle = settle
        self.rng = rng or random.Random()
        self.checks = {r.table: TableCheck(r) for r in scope.tables}
        self.requests = 0
        # The same bound on requests in flight as a resync's (sync.concurrency).
        self._limit = anyio.CapacityLimiter(cfg.sync.concurrency)
        self._readers: dict[str, PageReader] = {}
        self.writer = Writer(
            db, account_id=cfg.stripe.account, notify_channel=cfg.events.notify_channel
        )
        self.quarantine = Quarantine(db)

    async def run(self) -> Report:
        started = time.monotonic()
        try:
            await self._list_all()
            await self._mirror_pass()
            await self._confirm_all()
            if self.settle > 0:
                await self._settle()
            if self.repair:
                await self._repair_all()
        except BaseExceptionGroup as group:
            # Task groups wrap errors; the CLI decides on syncd's classes.
            inner = one_error(group)
            if inner is group:
                raise
            raise inner from group
        return Report(
            self.checks,
            self.scope.skipped,
            self.requests,
            time.monotonic() - started,
            self.sample,
            self.repair,
        )

    async def _get(self, table: str, path: str, params: Mapping[str, Any]) -> Reply:
        """One GET, counted for `table`, under the concurrency limit and the rate limiter."""
        self.requests += 1
        check = self.checks.get(table)
        if check is not None:
            check.requests += 1
        async with self._limit:
            return await self.api.request("GET", path, params)

    # ---- listing: every page compared with the mirror as it comes ------------------------

    async def _list_all(self) -> None:
        async with anyio.create_task_group() as tg:
            for res in self.scope.listed:
                kids = self.scope.children[res.table]
                fetch = self._list_fetch(res, kids)
                reader = PageReader(res, list(kids), fetch, set())
                self._readers[res.table] = reader
                for variant in range(len(res.list_variants)):
                    tg.start_soon(self._walk, res, reader, fetch, variant)
        for res in self.scope.listed:
            reader = self._readers[res.table]
            for table in reader.disabled_children:
                self._fail(table, "Stripe refused its per-parent list (401/403)")
            for (_, table), count in reader.missing_children.items():
                self._fail(table, f"its per-parent list answered 404 for {count} listed parent(s)")

    def _list_fetch(self, res: Resource, kids: Sequence[tuple[Child, Resource]]) -> Fetch:
        """The lister's fetch, each request counted for the table it reads."""
        owner = {str(res.list_path): res.table, **{c.path: r.table for c, r in kids}}

        async def fetch(path: str, params: Mapping[str, Any]) -> Reply:
            return await self._get(owner.get(endpoint_label(path), res.table), path, params)

        return fetch

    async def _walk(self, res: Resource, reader: PageReader, fetch: Fetch, variant: int) -> None:
        """One list variant, newest first, one page at a time (a resync's slice, unsplit)."""
        assert res.list_path is not None
        s = Slice(res.table, variant, 0)
        while not s.done:
            try:
                reply = await fetch(res.list_path, list_params(res, variant, s))
            except StripeError as exc:
                if exc.retryable:
                    raise
                vanished = exc.status == 400 and exc.code == "resource_missing"
                if vanished and s.cursor and s.cursor_created is not None and res.created_filter:
                    # The cursor object was deleted meanwhile (Stripe answers 400): go on from
                    # its second, as the resync does; objects met twice count once.
                    s.hi, s.cursor = s.cursor_created + 1, None
                    continue
                self._fail(res.table, f"Stripe refused the list: {exc}")
                for _, kid in self.scope.children[res.table]:
                    self._fail(kid.table, f"Stripe refused its parent's list: {exc}")
                return
            page = await reader.read(s, reply)
            s.done = page.done
            await self._take(res, page)

    def _fail(self, table: str, error: str) -> None:
        check = self.checks.get(table)
        if check is not None and check.error is None:
            check.error = error

    async def _take(self, res: Resource, page: Page) -> None:
        check = self.checks.get(res.table)
        if check is not None:
            objects = loads_lax(page.data)
            await self._seen(check, [stored_form(res, o) for o in objects], None)
        for c in page.children:
            kid = self.checks.get(c.resource.table)
            if kid is not None:
                await self._seen(kid, c.objects, c.parent_id)
        # Objects the mirror cannot hold by design (no id, another type; a child's reason
        # names its table): the resync quarantines them. Reported with the listed type (or
        # its first verified child), not drift.
        if check is None:
            check = next((self.checks[r.table] for _, r in self.scope.children[res.table]), None)
        if check is not None:
            check.rejected.extend((bad.object_id, bad.reason) for bad in page.rejected)

    async def _seen(
        self, check: TableCheck, objects: list[dict[str, Any]], parent: str | None
    ) -> None:
        """Objects Stripe listed: counted once, each compared with its row (or sampled)."""
        fresh: list[dict[str, Any]] = []
        for o in objects:
            oid = o["id"]
            if oid in check.stripe_ids:
                continue  # met in another list variant too (an object that changed between)
            check.stripe_ids.add(oid)
            if parent is not None:
                check.parent_of[oid] = parent
            fresh.append(o)
        if not fresh:
            return
        table = check.resource.table
        ids = [o["id"] for o in fresh]
        if self.sample is None:
            self._compare(check, fresh, await self.db.fetch("verify_rows", ids, table=table))
            return
        live = {r["id"] for r in await self.db.fetch("verify_live_of", ids, table=table)}
        for o in fresh:
            if o["id"] in live:
                self._offer(check, o)
            else:
                check.candidates[o["id"]] = Drift("missing", check.parent_of.get(o["id"]))

    def _offer(self, check: TableCheck, obj: dict[str, Any]) -> None:
        """Reservoir sampling: each live object ends in the sample with the same chance."""
        assert self.sample is not None
        check.sampled += 1
        if len(check.sample) < self.sample:
            check.sample.append(obj)
            return
        slot = self.rng.randrange(check.sampled)
        if slot < self.sample:
            check.sample[slot] = obj

    @staticmethod
    def _compare(check: TableCheck, objects: Sequence[dict[str, Any]], rows: list[Row]) -> None:
        """Listed objects against their rows: candidates for missing and different."""
        by_id = {r["id"]: r for r in rows}
        for o in objects:
            oid = o["id"]
            row = by_id.get(oid)
            if row is None or row["deleted"]:
                check.candidates[oid] = Drift("missing", check.parent_of.get(oid))
                continue
            check.compared += 1
            fields = differing(o, mirror_raw(row))
            if fields:
                check.candidates[oid] = Drift("different", check.parent_of.get(oid), fields)

    # ---- the mirror's side: the sample, and live rows no list showed ---------------------

    async def _mirror_pass(self) -> None:
        for check in self.checks.values():
            if check.error:
                continue
            table = check.resource.table
            for batch in chunks(check.sample, MIRROR_BATCH):
                ids = [o["id"] for o in batch]
                self._compare(check, batch, await self.db.fetch("verify_rows", ids, table=table))
            check.sample = []
            await self._extras(check)

    async def _extras(self, check: TableCheck) -> None:
        """Count the live rows; those no list showed are candidates for extra."""
        res = check.resource
        after = ""
        while True:
            if res.owned:
                rows = await self.db.fetch(
                    "verify_live_children", after, MIRROR_BATCH, table=res.table
                )
            else:
                rows = await self.db.fetch("verify_live_ids", after, MIRROR_BATCH, table=res.table)
            if not rows:
                return
            after = rows[-1]["id"]
            check.mirror_live += len(rows)
            for r in rows:
                if r["id"] not in check.stripe_ids:
                    parent = r["parent_id"] if res.owned else None
                    check.candidates[r["id"]] = Drift("extra", parent)

    # ---- confirmation: every candidate asked of Stripe once more -------------------------

    async def _confirm_all(self) -> None:
        for check in self.checks.values():
            if check.candidates and not check.error:
                if check.resource.owned:
                    await self._confirm_children(check)
                else:
                    await self._confirm_objects(check)
            check.candidates = {}

    def _decide(
        self,
        check: TableCheck,
        oid: str,
        row: Row | None,
        *,
        expected: dict[str, Any] | None,
        fix: Fix | None,
        error: str | None = None,
    ) -> None:
        """A candidate against Stripe's fresh answer (`expected`; None: Stripe does not have
        it) and the mirror's row read after that answer: drift, or nothing to report."""
        candidate = check.candidates[oid]
        if error is not None:
            # Stripe would not say: reported as the listing found it, unconfirmed.
            candidate.note = f"not confirmed: {error}"
            check.drift[oid] = candidate
            return
        live = row is not None and not row["deleted"]
        drift = Drift(candidate.kind, candidate.parent, confirmed=True, expected=expected, fix=fix)
        if expected is None:
            if live:
                drift.kind = "extra"
                check.drift[oid] = drift
            return  # gone from both: a deletion the mirror has caught up with
        if row is None:
            drift.kind = "missing"
        elif row["deleted"]:
            drift.kind, drift.note, drift.fix = "missing", TOMBSTONED, None
        else:
            drift.fields = differing(expected, mirror_raw(row))
            if not drift.fields:
                if candidate.kind == "extra":
                    check.unlisted += 1  # alive, only not in the list (incomplete, hidden)
                return
            drift.kind = "different"
        check.drift[oid] = drift

    async def _confirm_objects(self, check: TableCheck) -> None:
        """Retrieve each candidate, then read its row again."""
        res = check.resource
        ids = list(check.candidates)
        if res.retrieve_path is None:
            for oid in ids:
                self._decide(check, oid, None, expected=None, fix=None, error="no retrieve")
            return
        for batch in chunks(ids, CONFIRM_BATCH):
            answers: dict[str, Upsert | Tombstone | str] = {}
            async with anyio.create_task_group() as tg:
                for oid in batch:
                    tg.start_soon(self._retrieve, check, oid, answers)
            rows = await self.db.fetch("verify_rows", list(batch), table=res.table)
            by_id = {r["id"]: r for r in rows}
            for oid in batch:
                answer = answers[oid]
                if isinstance(answer, str):
                    self._decide(check, oid, None, expected=None, fix=None, error=answer)
                elif isinstance(answer, Tombstone):
                    self._decide(check, oid, by_id.get(oid), expected=None, fix=answer)
                else:
                    self._decide(check, oid, by_id.get(oid), expected=answer.obj, fix=answer)

    async def _retrieve(
        self, check: TableCheck, oid: str, answers: dict[str, Upsert | Tombstone | str]
    ) -> None:
        res = check.resource
        assert res.retrieve_path is not None
        path = res.retrieve_path.replace("{id}", quote(oid, safe=""))
        sent = time.monotonic()
        try:
            reply = await self._get(res.table, path, {})
        except StripeNotFound:
            answers[oid] = Tombstone(self.api.clock.since(sent))
            return
        except StripeError as exc:
            if exc.retryable:
                raise
            answers[oid] = str(exc)
            return
        obj = reply.object()
        if obj.get("deleted") is True:
            answers[oid] = Tombstone(reply.version)
        elif obj.get("id") != oid:
            answers[oid] = f"retrieved as {obj.get('id')!r}"
        else:
            answers[oid] = Upsert(stored_form(res, obj), reply)

    async def _confirm_children(self, check: TableCheck) -> None:
        """Owned children are confirmed per parent: its complete child list, listed again."""
        res = check.resource
        assert res.parent is not None
        parent = BY_TABLE[res.parent]
        child = next(c for c in parent.children if c.table == res.table)
        by_parent: dict[str, list[str]] = {}
        for oid, candidate in check.candidates.items():
            if candidate.parent is None:
                self._decide(check, oid, None, expected=None, fix=None, error="no parent id")
                continue
            by_parent.setdefault(candidate.parent, []).append(oid)
        parents = list(by_parent)
        for batch in chunks(parents, CONFIRM_BATCH):
            sets: dict[str, ChildSet | str] = {}
            async with anyio.create_task_group() as tg:
                for pid in batch:
                    tg.start_soon(self._child_set, check, child, parent, pid, sets)
            ids = [oid for pid in batch for oid in by_parent[pid]]
            by_id = {r["id"]: r for r in await self.db.fetch("verify_rows", ids, table=res.table)}
            for pid in batch:
                answer = sets[pid]
                if isinstance(answer, str):
                    for oid in by_parent[pid]:
                        self._decide(check, oid, None, expected=None, fix=None, error=answer)
                    continue
                now = {o["id"]: o for o in answer.listed.objects} if answer.listed else {}
                for oid in by_parent[pid]:
                    self._decide(check, oid, by_id.get(oid), expected=now.get(oid), fix=answer)

    async def _child_set(
        self,
        check: TableCheck,
        child: Child,
        parent: Resource,
        pid: str,
        sets: dict[str, ChildSet | str],
    ) -> None:
        res = check.resource
        path, params = child.for_parent(pid)

        async def fetch(p: str, q: Mapping[str, Any]) -> Reply:
            return await self._get(res.table, p, q)

        try:
            kids, _, version = await fetch_all(fetch, path, params, res)
        except StripeNotFound:
            # The list is gone: the parent is, or the endpoint is. Only the parent's own
            # answer tells them apart (never tombstone children for a missing endpoint).
            sets[pid] = await self._parent_gone(check, parent, pid)
            return
        except StripeError as exc:
            if exc.retryable:
                raise
            sets[pid] = str(exc)
            return
        sets[pid] = ChildSet(pid, ChildWrite(res, pid, kids, version))

    async def _parent_gone(self, check: TableCheck, parent: Resource, pid: str) -> ChildSet | str:
        if parent.retrieve_path is None:
            return f"the child list of {pid} answered 404"
        path = parent.retrieve_path.replace("{id}", quote(pid, safe=""))
        sent = time.monotonic()
        try:
            reply = await self._get(check.resource.table, path, {})
        except StripeNotFound:
            return ChildSet(pid, None, self.api.clock.since(sent))
        except StripeError as exc:
            if exc.retryable:
                raise
            return str(exc)
        if reply.object().get("deleted") is True:
            return ChildSet(pid, None, reply.version)
        return f"the child list of {pid} answered 404 while {pid} exists"

    async def _settle(self) -> None:
        """With a daemon running, drift that remains may be a change on its way through the
        events: wait a moment, read the rows once more, drop what the mirror caught up with."""
        if not any(d.confirmed for c in self.checks.values() for d in c.drift.values()):
            return
        await anyio.sleep(self.settle)
        for check in self.checks.values():
            ids = [oid for oid, d in check.drift.items() if d.confirmed and d.fix is not None]
            table = check.resource.table
            for batch in chunks(ids, MIRROR_BATCH):
                rows = await self.db.fetch("verify_rows", list(batch), table=table)
                by_id = {r["id"]: r for r in rows}
                for oid in batch:
                    if agrees(check.drift[oid].expected, by_id.get(oid)):
                        del check.drift[oid]

    # ---- repair: what Stripe holds, through the writer -----------------------------------

    async def _repair_all(self) -> None:
        for check in self.checks.values():
            fixes: dict[int, tuple[Fix, list[str]]] = {}
            for oid, d in sorted(check.drift.items()):
                if d.fix is None:
                    check.unrepaired[oid] = d.note or "nothing to write"
                else:
                    fixes.setdefault(id(d.fix), (d.fix, []))[1].append(oid)
            if not fixes:
                continue
            table = check.resource.table
            async with self.db.session() as conn:
                for fix, ids in fixes.values():
                    async with conn.transaction():
                        results = await self._apply(conn, check.resource, fix, ids)
                        # A write that touched nothing may have found the row right already
                        # (a parent's tombstone took its children along): judged by the row.
                        idle = [oid for oid, reason in results.items() if reason == STALE]
                        if idle:
                            rows = await conn.fetch("verify_rows", idle, table=table)
                            by_id = {r["id"]: r for r in rows}
                            for oid in idle:
                                if agrees(check.drift[oid].expected, by_id.get(oid)):
                                    results[oid] = None
                    for oid, reason in results.items():
                        if reason is None:
                            check.repaired.append(oid)
                        else:
                            check.unrepaired[oid] = reason

    async def _apply(
        self, conn: Tx, res: Resource, fix: Fix, ids: list[str]
    ) -> dict[str, str | None]:
        """Write one fix in `conn`'s transaction; per id, None when written, else why not."""
        pinned = self.cfg.stripe.api_version
        w = self.writer
        if isinstance(fix, Tombstone):
            version = fix.version
            written = await w.tombstone(conn, res, ids, version=version, source=SOURCE)
            for c in res.children:
                kid = BY_TABLE[c.table]
                if kid.owned and kid.table in self.scope.mirrored:
                    for oid in ids:
                        await w.tombstone_children(conn, kid, oid, version=version, source=SOURCE)
            done = {oid for oid, _ in written.ops}
            return {oid: None if oid in done else STALE for oid in ids}
        if isinstance(fix, Upsert):
            try:
                async with conn.transaction():
                    written = await w.upsert(
                        conn,
                        res,
                        [fix.obj],
                        version=fix.reply.version,
                        api_version=pinned,
                        source=SOURCE,
                    )
            except (DatabaseError, orjson.JSONEncodeError) as exc:
                if not object_fault(exc):
                    raise
                reason = refusal(exc)
                await self.quarantine.put(
                    conn, table=res.table, raw=fix.obj, reason=reason, source=SOURCE
                )
                return {oid: f"quarantined, {reason}" for oid in ids}
        elif fix.listed is None:
            assert fix.gone is not None
            written = await w.tombstone_children(
                conn, res, fix.parent_id, version=fix.gone, source=SOURCE
            )
        else:
            listed = fix.listed
            try:
                async with conn.transaction():
                    written = await w.replace_children(
                        conn,
                        res,
                        fix.parent_id,
                        listed.objects,
                        version=listed.version,
                        api_version=pinned,
                        source=SOURCE,
                    )
            except (DatabaseError, orjson.JSONEncodeError) as exc:
                if not object_fault(exc):
                    raise
                # Written in halves down to the children PostgreSQL refuses (quarantined).
                bad = await write_or_quarantine(
                    conn,
                    w,
                    self.quarantine,
                    res,
                    listed.objects,
                    version=listed.version,
                    api_version=pinned,
                    source=SOURCE,
                    parent_id=fix.parent_id,
                )
                return {
                    oid: "quarantined (refused by PostgreSQL)" if oid in bad else None
                    for oid in ids
                }
        done = {oid for oid, _ in written.ops}
        await self.quarantine.resolve_ids(conn, res.table, sorted(done))
        return {oid: None if oid in done else STALE for oid in ids}


# ---- `syncd verify` -----------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--type",
        action="append",
        metavar="TABLE",
        help="verify only this table (e.g. customers; a parent brings the children it carries"
        " inline); repeatable; default: every mirrored table",
    )
    p.add_argument(
        "--sample",
        type=_positive_int,
        metavar="N",
        help="deep-compare a random sample of N objects per table (counts and ids stay complete)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON (docs/verify.md)")
    p.add_argument(
        "--repair",
        action="store_true",
        help="write what Stripe holds for every drifted object through the guarded writer",
    )
    p.add_argument(
        "--rate-limit",
        type=_positive_float,
        metavar="R",
        help="Stripe requests per second for this verify; default: syncd's rate budget"
        " (stripe.rate_limit, or stripe.rate_share of Stripe's limit), half of it while a daemon"
        " runs",
    )


def session_settings(cfg: Config) -> dict[str, str]:
    """The daemon's session settings (`syncd.daemon.session_settings`, which a test keeps equal
    to this): the customers' user_id trigger reads one on --repair. Not imported from the
    daemon, which imports this module for its periodic verify (syncd/verify_schedule.py)."""
    return {"syncd.user_id_key": cfg.app.user_id_metadata_key}


def settle_seconds(cfg: Config) -> float:
    """How long drift waits to be read again while a daemon streams events (`Verifier.settle`):
    two polls, at least 2 s, for a change made in Stripe moments ago to reach the mirror."""
    return max(2.0, 2 * cfg.events.poll_interval) if cfg.events.enabled else 0.0


async def live_leader(db: Database, live_after: float) -> str | None:
    rows = await db.fetch("status_instances", live_after)
    return next((r["instance_id"] for r in rows if r["alive"] and r["role"] == "leader"), None)


async def cmd_verify(cfg: Config, args: argparse.Namespace) -> int:
    """`syncd verify`: exit 0 when the mirror equals Stripe, 1 on drift (or a type that could
    not be verified), 2 on bad usage (raised as ConfigError)."""
    scope = resolve_scope(cfg, args.type)
    if cfg.stripe.accounts:
        raise ConfigError("verify: not with stripe.accounts yet (it compares one account)")
    cfg.require_api_key()
    out = sys.stdout
    if args.json:
        # stdout carries the report alone: log lines (a retried request, a quarantined
        # object) go to stderr instead (a second `configure` replaces the first).
        with contextlib.redirect_stdout(sys.stderr):
            configure_logging(cfg.log.level, cfg.log.format)
    # The daemon's session settings: the customers' user_id trigger reads one on --repair.
    async with Database.connect(cfg.database, min_size=1, settings=session_settings(cfg)) as db:
        if await migrations.pending(db):
            raise ConfigError("database: migrations pending: run `syncd migrate` first")
        daemon = await live_leader(db, live_after(cfg))
        # A process has its own token bucket: while a daemon runs, verify takes half the
        # configured budget by default, so the two stay within 1.5x of it (docs/verify.md).
        rate = args.rate_limit or (cfg.rate_limit / 2 if daemon else cfg.rate_limit)
        settle = settle_seconds(cfg) if daemon else 0.0
        async with StripeAPI(cfg, limiter=limiter_for(cfg, rate)) as api:
            verifier = Verifier(
                cfg, db, api, scope, sample=args.sample, repair=args.repair, settle=settle
            )
            report = await verifier.run()
    report.rate_limit, report.daemon = rate, daemon
    if args.json:
        print(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode(), file=out)
    else:
        report.print_text(out)
    return report.exit_code
