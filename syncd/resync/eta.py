"""How long a resync has left, from the rate budget (issue 15, "Progress from the budget").

Against Stripe a resync is bound by the rate budget, not by CPU, so a type's time left is its
requests left over the rate the limiter gives it. Requests left, per type:

* a list type: for each unfinished slice, its objects probably left (`Slice.remaining_estimate`)
  in pages of `PAGE_LIMIT`, rounded up, and at least one page (a slice not started yet has no
  density to go by; one page is the least it costs);
* a per-parent walk: one request per parent not walked yet.

The rates: the limiter serves busy endpoints fairly within the global budget, each capped by its
own rate (syncd/ratelimit.py), and a type's list is one endpoint. So while n types list, each
gets its fair share of the budget, at most its endpoint's rate, and what a capped type cannot use
goes to the others (water-filling); a type that finishes leaves its share to the rest. The
per-parent walks follow the main lists (and their sweep), one walk after another, each alone on
its endpoint. `plan` puts that together; it is pure, and `RunEta` feeds it from a running
resync, writes the result where other processes read it (`resync_tables`: `syncd status`,
`syncd resync --wait`) and sets the metrics.

What it does not know: the sweep's retrieves, Stripe's latency (a walk runs at most
`sync.per_parent_concurrency` requests at once), other loops' requests on the same budget (the
event stream), and 429s except through the limiter's current rates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import anyio

from syncd import metrics
from syncd.errors import SyncdError
from syncd.lister import PAGE_LIMIT, Slice
from syncd.logs import get_logger
from syncd.resync.parents import WALK_VARIANT, ParentLists
from syncd.stripe_api import endpoint_label

if TYPE_CHECKING:
    from syncd.ratelimit import RateLimiter
    from syncd.registry import Resource
    from syncd.resync.listing import RunContext

log = get_logger(__name__)

# The slack of "finished at the same moment" in the simulation (float rounding).
_EPS = 1e-9


def objects_left(slices: Sequence[Slice], now: float, previous: int | None) -> tuple[float, bool]:
    """Objects a type's unfinished slices probably still hold (`now`: Stripe's clock), and
    whether that is only a floor. A slice with a lower bound extrapolates the density it has
    seen over the range left; the oldest slice, open down to the epoch, cannot (the account's
    first object is unknown until the list reaches it): the type's count in the last finished
    run (`previous`) tells instead, and without one the figure is what the bounded slices hold,
    a floor."""
    bounded, _, at_least = _split_estimate(slices, now, previous)
    return bounded + _open_objects(slices, now, previous), at_least


def list_requests(
    slices: Sequence[Slice], now: float, previous: int | None = None
) -> tuple[int, bool]:
    """Requests a type's unfinished slices probably need, at least one each, and whether that
    is only a floor (`objects_left`)."""
    _, pages, at_least = _split_estimate(slices, now, previous)
    opened = sum(1 for s in slices if not s.done and s.lo == 0)
    more = _open_objects(slices, now, previous)
    return pages + (max(opened, math.ceil(more / PAGE_LIMIT)) if opened else 0), at_least


def _split_estimate(
    slices: Sequence[Slice], now: float, previous: int | None
) -> tuple[float, int, bool]:
    """The bounded slices' objects left and pages (at least one each), and whether the open
    one makes the whole a floor."""
    live = [s for s in slices if not s.done and s.lo > 0]
    objects = [s.remaining_estimate(now) for s in live]
    pages = sum(max(1, math.ceil(n / PAGE_LIMIT)) for n in objects)
    opened = any(not s.done and s.lo == 0 for s in slices)
    return sum(objects), pages, opened and previous is None


def _open_objects(slices: Sequence[Slice], now: float, previous: int | None) -> float:
    """What the open slice probably holds: the last run's count less what is listed and what
    the bounded slices hold (0 without a last run: unknown)."""
    if previous is None or all(s.done or s.lo > 0 for s in slices):
        return 0.0
    bounded = sum(s.remaining_estimate(now) for s in slices if not s.done and s.lo > 0)
    return max(0.0, previous - sum(s.objects for s in slices) - bounded)


def shares(rate: float, caps: Mapping[str, float]) -> dict[str, float]:
    """The rate each type gets when they share `rate` fairly, each at most at its cap."""
    out: dict[str, float] = {}
    left, count = rate, len(caps)
    for table, cap in sorted(caps.items(), key=lambda kv: kv[1]):
        fair = left / count
        out[table] = min(cap, fair)
        left -= out[table]
        count -= 1
    return out


def water_fill(
    left: Mapping[str, float], rate: float, caps: float | Mapping[str, float]
) -> dict[str, float]:
    """Seconds until each type has had its `left` requests, the unfinished types sharing `rate`
    requests/s (`shares`) and a finished one leaving its share to the others; `caps`: every
    endpoint's rate, or each type's. A type with nothing left: 0."""
    out = {table: 0.0 for table, n in left.items() if n <= 0}
    todo = {table: float(n) for table, n in left.items() if n > 0}
    clock = 0.0
    while todo:
        speed = shares(rate, {t: _cap(caps, t) for t in todo})
        step = min(todo[t] / speed[t] for t in todo)
        clock += step
        for table in list(todo):
            if todo[table] / speed[table] <= step * (1 + _EPS):
                out[table] = clock
                del todo[table]
            else:
                todo[table] -= speed[table] * step
    return out


def plan(
    lists: Mapping[str, float],
    walks: Sequence[tuple[str, float]],
    rate: float,
    caps: float | Mapping[str, float],
) -> dict[str, float]:
    """Seconds until each type of a run is done: the main `lists` share the budget
    (`water_fill`); the per-parent `walks` (in their order) start when the lists are done and
    run one after another, each alone at its endpoint's rate (within the budget)."""
    out = water_fill(lists, rate, caps)
    start = max(out.values(), default=0.0)
    for table, left in walks:
        if left <= 0:
            out[table] = 0.0
            continue
        start += left / min(rate, _cap(caps, table))
        out[table] = start
    return out


def _cap(caps: float | Mapping[str, float], table: str) -> float:
    return caps if isinstance(caps, float | int) else caps[table]


def left_text(requests: int, seconds: float, at_least: bool = False) -> str:
    """`12 requests left, ETA 1m05s`; a floor: `at least 12 requests left, ETA at least 1m05s`."""
    floor = "at least " if at_least else ""
    plural = "" if requests == 1 else "s"
    return f"{floor}{requests:,} request{plural} left, ETA {floor}{duration(seconds)}"


def duration(seconds: float) -> str:
    """`42s`, `3m05s`, `2h10m`: an ETA as `syncd status` and `syncd resync --wait` print it."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class RunEta:
    """A running resync's requests left and ETA per type, every `PROGRESS_INTERVAL`: written to
    its `resync_tables` rows (with the time) and to the metrics, kept in `RunState.estimates`
    for the log line."""

    def __init__(self, run: RunContext, limiter: RateLimiter, parents: ParentLists):
        self.run = run
        self.limiter = limiter
        self.parents = parents
        self.walks = parents.walks()  # in the order they run
        # The endpoint each type's requests go to (the limiter's key, as StripeAPI makes it).
        self.endpoints = {
            res.table: f"GET {endpoint_label(res.list_path)}"
            for res in run.resources
            if res.list_path
        }
        for _, child, child_res in self.walks:
            self.endpoints[child_res.table] = f"GET {endpoint_label(child.path)}"
        # Objects per type in the last finished run: how much the oldest slices hold.
        self.previous: dict[str, int] | None = None

    async def loop(self, interval: float) -> None:
        while True:
            try:
                await self.update()
            except SyncdError as exc:
                # An estimate is not worth stopping the run for; the run's own writes fail
                # loudly if the database is really gone.
                log.warning("resync_eta_not_written", error=str(exc))
            await anyio.sleep(interval)

    async def update(self) -> None:
        run, state = self.run, self.run.state
        if self.previous is None:
            rows = await run.db.fetch("resync_previous_objects", run.writer.run_key)
            self.previous = {r["table_name"]: int(r["objects"]) for r in rows}
        now = run.clock.now()
        lists: dict[str, float] = {}
        floors: set[str] = set()
        for res in run.resources:
            if state.status.get(res.table, "listing") == "listing":
                mine = [s for s in state.slices if s.table == res.table]
                n, at_least = list_requests(mine, now, self.previous.get(res.table))
                lists[res.table] = n
                if at_least:
                    floors.add(res.table)
            else:
                lists[res.table] = 0
        walks: list[tuple[str, float]] = []
        for parent, _, child_res in self.walks:
            parents, at_least = await self._parents_left(parent, child_res, now)
            walks.append((child_res.table, float(parents)))
            if at_least:
                floors.add(child_res.table)
        caps = {table: self.limiter.rate_now(key) for table, key in self.endpoints.items()}
        etas = plan(lists, walks, self.limiter.rate_now(), caps)
        left = {**lists, **dict(walks)}
        tables = sorted(etas)
        state.estimates = {t: (int(left[t]), etas[t]) for t in tables}
        # A floor anywhere before a type (the lists before the walks) makes its ETA one too.
        if floors & set(lists):
            floors |= {table for table, n in walks if n > 0}
        state.floors = floors
        await run.db.execute(
            "resync_set_eta",
            run.run_id,
            tables,
            [int(left[t]) for t in tables],
            [etas[t] for t in tables],
            [t in floors for t in tables],
        )
        for t in tables:
            metrics.resync_requests_left.labels(t).set(left[t])
            metrics.resync_eta_seconds.labels(t).set(etas[t])

    async def _parents_left(
        self, parent: Resource, child_res: Resource, now: float
    ) -> tuple[int, bool]:
        """Parents a walk has not asked yet (one request each), and whether that is a floor;
        0 when it is done or will not run (its parent type failed, its list was refused)."""
        run, state = self.run, self.run.state
        if state.status.get(child_res.table) in ("listed", "swept"):
            return 0, False
        if child_res.table in state.disabled_children:
            return 0, False
        status = state.status.get(parent.table, "listing")
        if status == "unavailable":
            return 0, False
        position = self.parents.positions.get(child_res.table)
        if position is None:  # not started in this process: from its checkpoint, if any
            row = await run.db.fetchrow("resync_walk_of", run.run_id, child_res.table, WALK_VARIANT)
            position = (str(row["cursor"] or "") if row is not None else "", 0)
        cursor, answered = position  # read together, before the count (see ParentLists)
        if child_res.table == "active_entitlements":
            # Only customers who can have any, as the mirror shows them now (product features
            # are walked first, so this is known better as the run goes).
            count = await run.db.fetchval(
                "resync_entitled_left", cursor, run.writer.rows_of, table=parent.table
            )
            return max(0, int(count) - answered), False
        count = await run.db.fetchval(
            "resync_parents_left", cursor, run.writer.rows_of, table=parent.table
        )
        left, at_least = max(0, int(count) - answered), False
        if status == "listing":
            # The walk will go through the parents the listing leaves in the mirror. A mirror
            # filled before holds them already; into an empty one, they are those listed so
            # far and those probably left.
            mine = [s for s in state.slices if s.table == parent.table]
            more, at_least = objects_left(mine, now, self.previous_of(parent.table))
            left = max(left, round(sum(s.objects for s in mine) + more))
        return left, at_least

    def previous_of(self, table: str) -> int | None:
        return None if self.previous is None else self.previous.get(table)


def clear_metrics() -> None:
    """The run ended (done or not): nothing is on its way any more. Every table's series goes
    to 0 (kept, not removed: a dashboard sees the end rather than a gap)."""
    for gauge in (metrics.resync_requests_left, metrics.resync_eta_seconds):
        for family in gauge.collect():
            for sample in family.samples:
                gauge.labels(**sample.labels).set(0)
