"""Emulator throughput: pages of 100 customers per second.

The emulator runs in its own process (``python -m syncd.emulator``); this process is the load
client (aiohttp, keep-alive, a few concurrent connections), each connection paging through the
customer list with ``starting_after`` and starting over at the end.

    python bench/emulator_throughput.py --customers 100000 --seconds 10 --concurrency 4
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import emulator  # noqa: E402
from syncd import lifecycle  # noqa: E402


async def worker(
    session: aiohttp.ClientSession, url: str, stop_at: float, counts: list[int]
) -> None:
    cursor: str | None = None
    while time.monotonic() < stop_at:
        params = {"limit": "100"}
        if cursor:
            params["starting_after"] = cursor
        async with session.get(url + "/v1/customers", params=params) as r:
            body = orjson.loads(await r.read())
        if r.status != 200:
            raise RuntimeError(body)
        data = body["data"]
        counts[0] += 1
        counts[1] += len(data)
        cursor = data[-1]["id"] if body["has_more"] else None


async def run(args: argparse.Namespace) -> None:
    t0 = time.monotonic()
    # Seeded before it listens; its start-up is the first figure (`python -m syncd.emulator`).
    with emulator(
        "--seed", f"customers={args.customers},subscriptions=0", command=("-m", "syncd.emulator")
    ) as (_emulator, url):
        print(f"emulator up with {args.customers} customers in {time.monotonic() - t0:.1f}s")
        conn = aiohttp.TCPConnector(limit=args.concurrency)
        headers = {"Authorization": "Bearer sk_test_bench"}
        async with aiohttp.ClientSession(connector=conn, headers=headers) as session:
            counts = [0, 0]
            await worker(session, url, time.monotonic() + 1.0, [0, 0])  # warm-up
            start = time.monotonic()
            stop_at = start + args.seconds
            await asyncio.gather(
                *(worker(session, url, stop_at, counts) for _ in range(args.concurrency))
            )
            elapsed = time.monotonic() - start
        print(
            f"{counts[0] / elapsed:,.0f} pages/s, {counts[1] / elapsed:,.0f} objects/s "
            f"({counts[0]} pages of up to 100 customers in {elapsed:.1f}s, "
            f"{args.concurrency} connections)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=4)
    lifecycle.run(run, p.parse_args())


if __name__ == "__main__":
    main()
