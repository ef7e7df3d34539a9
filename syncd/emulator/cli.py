"""``syncd emulator`` / ``python -m syncd.emulator``: run the emulator standalone."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys

from syncd import lifecycle

from .emulator import Emulator
from .limits import CONNECT_LIMITS, ENDPOINT_RATE, MODES, LimitConfig


def _seed_spec(text: str) -> dict[str, int | bool]:
    """``customers=1000,subscriptions=200,events=true``"""
    out: dict[str, int | bool] = {}
    for part in filter(None, text.split(",")):
        k, _, v = part.partition("=")
        k = k.strip()
        if k == "events":
            out[k] = v.strip().lower() in ("1", "true", "yes")
        else:
            out[k] = int(v)
    return out


def _range_ms(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(",")
    return (float(lo), float(hi or lo))


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=12111)
    p.add_argument(
        "--seed",
        type=_seed_spec,
        default=None,
        metavar="customers=N[,k=v...]",
        help="seed data, e.g. customers=1000,subscriptions=200,events=true",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="accept exactly this key (default: any sk_test_/rk_test_ key)",
    )
    p.add_argument("--rate-limit", type=float, default=None, help="older name of --global-rate")
    limits = p.add_argument_group(
        "Stripe's limits", "off by default; 429s as Stripe answers them (docs/emulator.md)"
    )
    limits.add_argument(
        "--stripe-limits",
        choices=MODES,
        default=None,
        help="Stripe's documented limits: test 25/s global, live 100/s global and 1000/s meter "
        "events; both 25/s per endpoint and one meter event in flight per customer and meter",
    )
    limits.add_argument(
        "--global-rate", type=float, default=None, metavar="R", help="requests/s per account"
    )
    limits.add_argument(
        "--endpoint-rate",
        type=float,
        nargs="?",
        const=ENDPOINT_RATE,
        default=None,
        metavar="R",
        help=f"requests/s per endpoint (method + path template); {ENDPOINT_RATE:g} if no R",
    )
    limits.add_argument(
        "--meter-event-rate",
        type=float,
        default=None,
        metavar="R",
        help="meter events/s, a separate limit that exempts them from the others (live mode)",
    )
    limits.add_argument(
        "--meter-event-concurrency",
        action="store_true",
        default=None,
        help="one meter event in flight per customer and meter",
    )
    limits.add_argument(
        "--connect-limits",
        choices=CONNECT_LIMITS,
        default=None,
        help="a request for a connected account (Stripe-Account) counts against its own limits "
        "and the platform's (shared, the default) or its own only (account)",
    )
    p.add_argument("--latency-ms", type=float, default=0.0, help="latency added to every call")
    p.add_argument(
        "--late-visibility-ms",
        type=_range_ms,
        default=None,
        metavar="MIN[,MAX]",
        help="events become listable after a random delay in this range",
    )
    p.add_argument("--random-seed", type=int, default=0, help="seed for ids and randomness")
    p.add_argument(
        "--accounts",
        type=int,
        default=0,
        metavar="N",
        help="create N connected accounts (Connect; --seed fills the platform's own account)",
    )


def emulator_from_args(args: argparse.Namespace) -> Emulator:
    return Emulator(
        host=args.host,
        port=args.port,
        seed=args.random_seed,
        api_key=args.api_key,
        rate_limit=args.rate_limit,
        latency_ms=args.latency_ms,
        late_visibility_ms=args.late_visibility_ms,
        stripe_limits=args.stripe_limits,
        global_rate=args.global_rate,
        endpoint_rate=args.endpoint_rate,
        meter_event_rate=args.meter_event_rate,
        meter_event_concurrency=args.meter_event_concurrency,
        connect_limits=args.connect_limits,
    )


async def _serve(args: argparse.Namespace) -> int:
    emu = emulator_from_args(args)
    if args.seed:
        counts = emu.seed(**args.seed)
        print(f"seeded: {counts}", file=sys.stderr)
    for _ in range(args.accounts):
        emu.create_account(type="express")
    if args.accounts:
        print(f"{args.accounts} connected accounts", file=sys.stderr)
    await emu.start()
    if emu.limits.config != LimitConfig():
        # Said up front: a benchmark's 429s must not look like a syncd bug.
        on = {k: v for k, v in dataclasses.asdict(emu.limits.config).items() if v}
        print(f"Stripe limits enforced: {on}", file=sys.stderr)
    print(
        f"Stripe emulator listening on {emu.url} (api key: {emu.api_key})",
        file=sys.stderr,
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await emu.stop()
    print("Stripe emulator stopped", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    return lifecycle.run(_serve, args)
