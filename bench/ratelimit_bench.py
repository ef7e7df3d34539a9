"""Requests/s achieved against the budget, and the share of 429s, with several list endpoints
requested in parallel through `StripeAPI` against the emulator enforcing Stripe's limits.

    PYTHONPATH=. python bench/ratelimit_bench.py                 # every case, 10 s each
    PYTHONPATH=. python bench/ratelimit_bench.py --latency-ms 100 --workers 6  # slower answers

The emulator runs in another process (`python -m syncd emulator`), its limits set per case
through its control API (`{"stripe_limits": "test"|"live"}`: 25 or 100 requests/s per account,
25/s per endpoint); its counters say how many requests it served and how many it answered 429.
Cases: syncd's limiter at the default share (0.5) and at the whole account (1.0), six endpoints
and two; and, for comparison, the limiter syncd had before (one token bucket at the account's
rate, blind to endpoints, a 0.5 s pause for everyone after a 429).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
from typing import Any

from bench._common import control, emulator
from syncd import lifecycle
from syncd.config import Config, StripeConfig
from syncd.logs import configure
from syncd.ratelimit import ACCOUNT_RATES
from syncd.stripe_api import StripeAPI

KEY = "sk_test_bench0000000000"
LISTS = ["customers", "products", "prices", "invoices", "subscriptions", "charges"]


class SingleBucket:
    """The limiter syncd had before issue 15, for comparison: one bucket, sleeping under a
    lock, and a 429 holding everyone back 0.5 s."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate / 10)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, endpoint: str = "") -> None:
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            wait = (1 - self._tokens) / self.rate
            self._tokens = 0.0
            self._stamp = now + wait
            await asyncio.sleep(wait)

    def limited(self, endpoint: str, reason: str | None, code: str | None = None) -> None:
        self._tokens = min(self._tokens, 0.0) - 0.5 * self.rate


@dataclasses.dataclass
class Case:
    mode: str
    share: float | None  # None: the previous single bucket at the account's rate
    endpoints: int

    @property
    def name(self) -> str:
        limiter = "previous single bucket" if self.share is None else f"share {self.share:g}"
        return f"{self.mode}, {limiter}, {self.endpoints} endpoints"


async def run_case(case: Case, url: str, args: argparse.Namespace) -> dict[str, Any]:
    control(url, "/_emulator/limits", {"stripe_limits": case.mode})
    control(url, "/_emulator/limits/counters", method="DELETE")
    stripe = StripeConfig(
        api_key=KEY, api_base=url, mode=case.mode, rate_share=case.share or 1.0, max_retries=8
    )
    cfg = Config(stripe=stripe)
    limiter: Any = None if case.share is not None else SingleBucket(ACCOUNT_RATES[case.mode])
    lists = LISTS[: case.endpoints]
    async with StripeAPI(cfg, limiter=limiter) as api:
        started = time.monotonic()

        async def worker(name: str) -> None:
            while time.monotonic() - started < args.seconds:
                await api.get_page(f"/v1/{name}", {"limit": 10})

        await asyncio.gather(*(worker(n) for n in lists for _ in range(args.workers)))
        elapsed = time.monotonic() - started
    counters = control(url, "/_emulator/limits")["counters"]
    if case.share is None:
        budget = ACCOUNT_RATES[case.mode]
    else:
        budget = min(cfg.rate_limit, case.endpoints * cfg.endpoint_rate_limit)
    served = [c["served"] for c in counters["endpoints"].values()]
    return {
        "case": case.name,
        "budget": budget,
        "achieved": counters["served"] / elapsed,
        "requests": counters["requests"],
        "limited": counters["limited"],
        "limited_share": counters["limited_fraction"],
        "by_reason": counters["by_reason"],
        "per_endpoint": (min(served) / elapsed, max(served) / elapsed),
    }


async def bench(args: argparse.Namespace, url: str) -> None:
    cases = [
        Case("test", 0.5, 6),
        Case("test", 1.0, 6),
        Case("live", 0.5, 6),
        Case("live", 1.0, 6),
        Case("live", 1.0, 2),
        Case("test", None, 6),
        Case("live", None, 6),
        Case("live", None, 2),
    ]
    print(
        f"{args.workers} workers per endpoint, {args.seconds:g} s per case, {args.latency_ms:g} ms"
        " emulated latency; budget = what the limiter allows (the global budget, or the"
        " endpoints' own limits when lower)",
        flush=True,
    )
    print(f"{'case':<42} {'budget/s':>9} {'achieved/s':>11} {'of budget':>10} {'429s':>14}")
    for case in cases:
        r = await run_case(case, url, args)
        lo, hi = r["per_endpoint"]
        print(
            f"{r['case']:<42} {r['budget']:>9g} {r['achieved']:>11.1f}"
            f" {r['achieved'] / r['budget']:>9.0%}"
            f" {r['limited']:>5} ({r['limited_share']:>5.1%})"
            f"   per endpoint {lo:.1f}-{hi:.1f}/s {r['by_reason'] or ''}",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="length of each case")
    p.add_argument("--workers", type=int, default=3, help="requests in flight per endpoint")
    p.add_argument("--latency-ms", type=float, default=0.0, help="latency the emulator adds")
    args = p.parse_args()
    configure("warning", "console")  # retries of 429s are logged at info
    with emulator("--seed", "customers=50") as (_emulator, url):
        if args.latency_ms:
            control(url, "/_emulator/faults", {"latency_ms": args.latency_ms})
        lifecycle.run(bench, args, url)


if __name__ == "__main__":
    main()
