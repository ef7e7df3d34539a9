"""Fault injection and request counters (Stripe's limits live in limits.py)."""

from __future__ import annotations

import fnmatch
import random
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

BAD_BODIES = (None, "html", "truncated")


@dataclass
class FaultRule:
    """One rule, matched against ``"METHOD /path"`` (or just the path) with ``fnmatch``.

    ``error_rate`` of requests get ``status`` (429 carries ``Stripe-Should-Retry: true``);
    ``drop_rate`` of requests get their connection closed without an answer; ``latency_ms`` plus
    uniform ``jitter_ms`` delays every matching request; ``lock_object_id`` makes every request
    whose path or parameters mention that id fail with 429 ``lock_timeout``. ``after_ms`` delays
    the answer AFTER the request took effect (a client killed meanwhile never learns that it
    succeeded). ``times`` limits how many requests the rule affects (None: unlimited).

    ``bad_body`` turns the ``error_rate`` answers into ones Stripe never sends: ``"html"``, an
    HTML error page with ``status`` (a proxy or load balancer answering: 200, 502...; the request
    never reaches the API), or ``"truncated"``, the API's own answer (it took effect) with its
    status and only the first half of its body.

    ``account`` limits the rule to requests for that connected account (``Stripe-Account``), or
    with the platform's own id to the platform's requests; None matches every request.
    """

    pattern: str = "*"
    status: int = 500
    error_rate: float = 0.0
    drop_rate: float = 0.0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    lock_object_id: str | None = None
    times: int | None = None
    after_ms: float = 0.0
    bad_body: str | None = None
    account: str | None = None
    hits: int = 0

    def __post_init__(self) -> None:
        if self.bad_body not in BAD_BODIES:
            raise ValueError(f"bad_body must be one of {BAD_BODIES}, not {self.bad_body!r}")

    def matches(self, method: str, path: str) -> bool:
        return fnmatch.fnmatchcase(f"{method} {path}", self.pattern) or fnmatch.fnmatchcase(
            path, self.pattern
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FaultDecision:
    delay: float = 0.0
    drop: bool = False
    status: int | None = None
    lock: bool = False
    after: float = 0.0
    bad_body: str | None = None  # "html" (answered with `status`) or "truncated"


class Faults:
    """Per-test fault configuration. Randomness comes from a seeded RNG (deterministic)."""

    def __init__(self, seed: int = 0) -> None:
        self.rules: list[FaultRule] = []
        self.rng = random.Random(seed + 2)
        self.base_latency_ms = 0.0
        self._lock = threading.Lock()

    def set(self, **kw: Any) -> FaultRule:
        """Add a rule, e.g. ``faults.set(pattern="GET /v1/events", status=429, error_rate=0.5)``."""
        rule = FaultRule(**kw)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def decide(self, method: str, path: str, param_ids: str, account: str = "") -> FaultDecision:
        """``account``: the id the request acts for (the platform's own without the header)."""
        d = FaultDecision(delay=self.base_latency_ms / 1000.0)
        with self._lock:
            for r in self.rules:
                if r.times is not None and r.hits >= r.times:
                    continue
                if r.account is not None and r.account != account:
                    continue
                if r.lock_object_id is not None:
                    if r.lock_object_id in path or r.lock_object_id in param_ids:
                        r.hits += 1
                        d.lock = True
                    continue
                if not r.matches(method, path):
                    continue
                hit = False
                if r.latency_ms or r.jitter_ms:
                    d.delay += (r.latency_ms + self.rng.uniform(0, r.jitter_ms)) / 1000.0
                    hit = True
                if r.after_ms:
                    d.after += r.after_ms / 1000.0
                    hit = True
                if r.drop_rate and self.rng.random() < r.drop_rate:
                    d.drop = True
                    hit = True
                elif (
                    r.error_rate
                    and d.status is None
                    and d.bad_body is None
                    and self.rng.random() < r.error_rate
                ):
                    if r.bad_body == "html":
                        d.bad_body, d.status = r.bad_body, r.status
                    elif r.bad_body == "truncated":
                        d.bad_body = r.bad_body
                    else:
                        d.status = r.status
                    hit = True
                if hit:
                    r.hits += 1
        return d

    def as_json(self) -> dict[str, Any]:
        return {"latency_ms": self.base_latency_ms, "rules": [r.as_json() for r in self.rules]}


@dataclass
class Stats:
    """Requests served per endpoint (route pattern) and status, in total and per connected
    account (the ``Stripe-Account`` a request named)."""

    counts: Counter[tuple[str, int]] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    accounts: dict[str, Counter[tuple[str, int]]] = field(default_factory=dict)

    def record(self, endpoint: str, status: int, account: str | None = None) -> None:
        self.counts[(endpoint, status)] += 1
        if account is not None:
            self.accounts.setdefault(account, Counter())[(endpoint, status)] += 1

    def count(
        self, endpoint: str | None = None, status: int | None = None, account: str | None = None
    ) -> int:
        counts = self.counts if account is None else self.accounts.get(account, Counter())
        return sum(
            n
            for (e, s), n in counts.items()
            if (endpoint is None or fnmatch.fnmatchcase(e, endpoint))
            and (status is None or s == status)
        )

    def reset(self) -> None:
        self.counts.clear()
        self.dropped.clear()
        self.accounts.clear()

    def as_json(self, account: str | None = None) -> dict[str, Any]:
        counts = self.counts if account is None else self.accounts.get(account, Counter())
        by: dict[str, dict[str, int]] = {}
        for (e, s), n in sorted(counts.items()):
            by.setdefault(e, {})[str(s)] = n
        if account is not None:
            return {"endpoints": by, "total": self.count(account=account)}
        return {"endpoints": by, "dropped": dict(self.dropped), "total": self.count()}
