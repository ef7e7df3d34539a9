"""In-memory store: clock, ids, per-type sorted collections, cached JSON, events.

Everything here is synchronous and single-threaded by design; the HTTP layer and the Python API
take ``State.lock`` around every call so an emulator running in a background thread can still be
driven from the test thread.
"""

from __future__ import annotations

import bisect
import random
import string
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

JSON = dict[str, Any]

API_VERSION = "2025-03-31.basil"
RETENTION_SECONDS = 30 * 86400
_ID_CHARS = string.ascii_letters + string.digits


class Clock:
    """Controllable clock. Real time plus an offset, or frozen at one instant.

    ``created`` fields are whole seconds from this clock; retention, idempotency expiry and the
    meter-event time window all use it, so tests can jump 31 days ahead without waiting.
    """

    def __init__(self) -> None:
        self._offset = 0.0
        self._frozen: float | None = None

    def time(self) -> float:
        return self._frozen if self._frozen is not None else time.time() + self._offset

    def now(self) -> int:
        return int(self.time())

    @property
    def frozen(self) -> bool:
        return self._frozen is not None

    def freeze(self, at: float | None = None) -> None:
        self._frozen = self.time() if at is None else float(at)

    def unfreeze(self) -> None:
        if self._frozen is not None:
            self._offset = self._frozen - time.time()
            self._frozen = None

    def advance(self, seconds: float) -> None:
        if self._frozen is not None:
            self._frozen += seconds
        else:
            self._offset += seconds

    def set(self, ts: float) -> None:
        if self._frozen is not None:
            self._frozen = float(ts)
        else:
            self._offset = float(ts) - time.time()

    def save(self) -> tuple[float, float | None]:
        return (self._offset, self._frozen)

    def restore(self, saved: tuple[float, float | None]) -> None:
        self._offset, self._frozen = saved

    def reset(self) -> None:
        self._offset = 0.0
        self._frozen = None

    def as_json(self) -> JSON:
        return {"now": self.now(), "time": self.time(), "frozen": self.frozen}


class Record:
    """One stored object. ``obj`` is the API rendering; ``_bytes`` caches its JSON."""

    __slots__ = ("_bytes", "created", "deleted", "extra", "obj", "seq", "type")

    def __init__(self, type_: str, obj: JSON, created: int, seq: int) -> None:
        self.type = type_
        self.obj = obj
        self.created = created
        self.seq = seq
        self.deleted = False
        self.extra: JSON = {}  # emulator-private bookkeeping (never rendered)
        self._bytes: bytes | None = None

    @property
    def id(self) -> str:
        return str(self.obj["id"])

    @property
    def key(self) -> tuple[int, int]:
        return (self.created, self.seq)

    def invalidate(self) -> None:
        self._bytes = None

    def to_bytes(self) -> bytes:
        b = self._bytes
        if b is None:
            b = self._bytes = orjson.dumps(self.obj)
        return b

    def deleted_stub(self) -> bytes:
        return orjson.dumps({"id": self.id, "object": self.obj["object"], "deleted": True})


class Collection:
    """All records of one type, kept sorted ascending by (created, seq).

    Lists are newest first, so a page is a backwards walk from a bisect position. Most inserts
    carry the current clock and land at the end (O(1)); imports and seeds may insert in the middle.
    """

    def __init__(self, type_: str) -> None:
        self.type = type_
        self.by_id: dict[str, Record] = {}
        self.keys: list[tuple[int, int]] = []
        self.records: list[Record] = []
        # computed objects that must keep a stable id across requests (active entitlements)
        self.extra_cache: dict[Any, Record] = {}

    def __len__(self) -> int:
        return len(self.records)

    def add(self, rec: Record) -> None:
        self.by_id[rec.id] = rec
        k = rec.key
        if not self.keys or k > self.keys[-1]:
            self.keys.append(k)
            self.records.append(rec)
        else:
            i = bisect.bisect_left(self.keys, k)
            self.keys.insert(i, k)
            self.records.insert(i, rec)

    def add_bulk(self, recs: list[Record]) -> None:
        """Add many records then re-sort once (seeding 100k objects must take seconds)."""
        for r in recs:
            self.by_id[r.id] = r
        self.records.extend(recs)
        self.records.sort(key=lambda r: (r.created, r.seq))
        self.keys = [(r.created, r.seq) for r in self.records]

    def remove(self, rec: Record) -> None:
        i = self.index(rec)
        del self.keys[i]
        del self.records[i]
        del self.by_id[rec.id]

    def index(self, rec: Record) -> int:
        return bisect.bisect_left(self.keys, rec.key)

    def get(self, id_: str) -> Record | None:
        return self.by_id.get(id_)


def derived_id(prefix: str, length: int, *salt: object) -> str:
    """A deterministic id outside the state's id generator (so adding one shifts no other id)."""
    rng = random.Random(":".join(map(str, (prefix, *salt))))
    return prefix + "".join(rng.choices(_ID_CHARS, k=length))


class State:
    """The whole emulated account: the platform's, or (``platform`` set) a connected account's,
    which shares the platform's lock and clock (one Stripe, one time)."""

    def __init__(
        self, seed: int = 0, *, account_id: str | None = None, platform: State | None = None
    ) -> None:
        self.platform = platform
        self.lock: threading.RLock = platform.lock if platform is not None else threading.RLock()
        self.clock: Clock = platform.clock if platform is not None else Clock()
        self.seed_value = seed
        # ``GET /v1/account``; the platform's own id comes from the seed.
        self.account_id = account_id or derived_id("acct_1", 15, seed)
        # The platform's Connect application (``data.object`` of ``account.application.*``).
        self.application_id = derived_id("ca_", 32, self.account_id)
        self.created = self.clock.now()
        self._init(seed)

    def _init(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.visibility_rng = random.Random(seed + 1)
        self.collections: dict[str, Collection] = {}
        self.type_by_id: dict[str, str] = {}
        self._seq = 0
        # Late visibility: (min_s, max_s) real-time delay before an event becomes listable.
        self.late_visibility: tuple[float, float] | None = None
        # Events burst: when set, new events reuse this created second (same-second events).
        self.burst_created: int | None = None
        self.event_hooks: list[Callable[[Record], None]] = []
        self.meters_state: Any = None  # a meters.MeterStore once a meter event arrives
        self.usage_totals: dict[str, int] = {}  # legacy usage records per subscription item
        self.ever_late = False  # some event carries a visible_at: lists must check it
        self.suppress_events = False  # seeding without events
        # The platform's connected accounts' own states, by account id (created on first use).
        self.connected: dict[str, State] = {}

    def reset(self, seed: int | None = None) -> None:
        if self.platform is None:  # a connected account shares the platform's clock
            self.clock.reset()
        self._init(self.seed_value if seed is None else seed)

    # ids -----------------------------------------------------------------------------------
    def new_id(self, prefix: str, length: int = 24) -> str:
        while True:
            id_ = prefix + "".join(self.rng.choices(_ID_CHARS, k=length))
            if id_ not in self.type_by_id:
                return id_

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # storage -------------------------------------------------------------------------------
    def coll(self, type_: str) -> Collection:
        c = self.collections.get(type_)
        if c is None:
            c = self.collections[type_] = Collection(type_)
        return c

    def insert(self, obj: JSON, created: int | None = None) -> Record:
        type_ = str(obj["object"])
        if created is None:
            created = int(obj.get("created") or self.clock.now())
        rec = Record(type_, obj, created, self.next_seq())
        self.coll(type_).add(rec)
        self.type_by_id[rec.id] = type_
        return rec

    def get(self, type_: str, id_: str) -> Record | None:
        c = self.collections.get(type_)
        return c.get(id_) if c is not None else None

    def find(self, id_: str) -> Record | None:
        type_ = self.type_by_id.get(id_)
        return None if type_ is None else self.get(type_, id_)

    def iter_type(self, type_: str) -> Iterator[Record]:
        c = self.collections.get(type_)
        return iter(c.records) if c is not None else iter(())

    # events --------------------------------------------------------------------------------
    def emit(
        self,
        type_: str,
        rec: Record,
        previous: JSON | None = None,
        request_id: str | None = None,
        idempotency_key: str | None = None,
        account: str | None = None,
    ) -> Record:
        """Record an event whose ``data.object`` is a frozen snapshot of ``rec`` right now.

        A connected account's events carry ``"account": "acct_..."`` as Stripe's Connect events
        do; ``account`` sets it on a platform event about a connected account (``account.*``).
        """
        if self.suppress_events:
            return rec
        if account is None and self.platform is not None:
            account = self.account_id
        created = self.burst_created if self.burst_created is not None else self.clock.now()
        snapshot = rec.to_bytes()
        data: JSON = {"object": orjson.Fragment(snapshot)}
        if previous is not None:
            data["previous_attributes"] = previous
        ev: JSON = {"id": self.new_id("evt_"), "object": "event"}
        if account is not None:
            ev["account"] = account
        ev.update(
            api_version=API_VERSION,
            created=created,
            data=data,
            livemode=False,
            pending_webhooks=0,
            request={"id": request_id, "idempotency_key": idempotency_key},
            type=type_,
        )
        erec = self.insert(ev, created)
        erec.extra["snapshot"] = snapshot
        if self.late_visibility is not None:
            lo, hi = self.late_visibility
            erec.extra["visible_at"] = time.monotonic() + self.visibility_rng.uniform(lo, hi)
            self.ever_late = True
        for hook in self.event_hooks:
            hook(erec)
        return erec

    def event_visible(self, erec: Record, now: int, mono: float) -> bool:
        if erec.created < now - RETENTION_SECONDS:
            return False
        va = erec.extra.get("visible_at")
        return va is None or va <= mono

    def event_expired(self, erec: Record) -> bool:
        return erec.created < self.clock.now() - RETENTION_SECONDS


def snapshot_json(obj: JSON) -> JSON:
    """A deep copy via JSON (fast with orjson) used for previous_attributes diffs."""
    out: JSON = orjson.loads(orjson.dumps(obj))
    return out


def diff_previous(old: JSON, new: JSON) -> JSON:
    """Stripe's ``previous_attributes``: old values of the top-level keys that changed.

    For ``metadata`` Stripe sends only the changed sub-keys (new keys with ``""`` as old value).
    """
    prev: JSON = {}
    for k, v in new.items():
        ov = old.get(k)
        if ov == v:
            continue
        if k == "metadata" and isinstance(ov, dict) and isinstance(v, dict):
            md: JSON = {}
            for mk in set(ov) | set(v):
                if ov.get(mk) != v.get(mk):
                    md[mk] = ov.get(mk, "")
            prev[k] = md
        else:
            prev[k] = ov
    return prev
