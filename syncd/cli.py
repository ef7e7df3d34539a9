"""The `syncd` command line. Every command loads the configuration once and passes it down;
a `SyncdError` that reaches here is printed as one line (secrets scrubbed) with its exit code.

The demo and the emulator are imported only by their own commands: `syncd run` loads neither."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from syncd import (
    __version__,
    history,
    lifecycle,
    migrations,
    resync,
    resync_schedule,
    usage_schedule,
    verify,
)
from syncd.config import Config, default_config_path, load_config, redacted, to_toml
from syncd.daemon import run_daemon, session_settings
from syncd.db import Database, describe_target
from syncd.errors import StripeError, SyncdError
from syncd.health import cmd_health, health_arguments
from syncd.logs import configure as configure_logging
from syncd.ratelimit import describe_budget
from syncd.redaction import scrub
from syncd.status import cmd_status, live_after, status_arguments
from syncd.stripe_api import StripeAPI


@dataclass(frozen=True)
class Command:
    run: Callable[[Config, argparse.Namespace], Awaitable[int]]
    help: str
    arguments: Callable[[argparse.ArgumentParser], None] | None = None


async def cmd_run(cfg: Config, _args: argparse.Namespace) -> int:
    cfg.require_api_key()
    return await run_daemon(cfg)


async def cmd_migrate(cfg: Config, args: argparse.Namespace) -> int:
    async with Database.connect(cfg.database, min_size=1) as db:
        applied = await migrations.migrate(db, target=args.target)
        versions = await migrations.applied_versions(db)
        # history.tables as configured (the daemon does the same at start). Not with --target:
        # an older schema may lack what history needs.
        kept = await history.apply_configured(db, cfg) if args.target is None else None
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "nothing to apply"
    version = max(versions, default=0)
    kept_for = "" if kept is None else f"; history: {', '.join(kept.tables) or 'off'}"
    print(
        f"migrated {describe_target(cfg.database.url)}: {names}"
        f" (schema version {version}{kept_for})"
    )
    return 0


async def cmd_config(cfg: Config, _args: argparse.Namespace) -> int:
    print(f"# effective configuration (from {cfg.source} and the environment; secrets redacted)")
    print(to_toml(redacted(cfg)), end="")
    return 0


async def cmd_check(cfg: Config, _args: argparse.Namespace) -> int:
    """Reach everything the daemon needs; one actionable line per problem."""
    problems: list[str] = []
    target = describe_target(cfg.database.url)
    try:
        async with Database.connect(cfg.database, min_size=1) as db:
            pending = await migrations.pending(db)
        if pending:
            problems.append(
                f"database {target}: {len(pending)} migration(s) pending: run `syncd migrate`"
            )
        else:
            print(f"ok   database {target}: reachable, schema current")
    except SyncdError as exc:
        problems.append(f"database: {exc}")
    if not cfg.stripe.api_key:
        problems.append("stripe.api_key: not set (set STRIPE_API_KEY or stripe.api_key)")
    else:
        try:
            async with StripeAPI(cfg) as api:
                await api.request("GET", "/v1/events", {"limit": 1}, retry=False)
            print(f"ok   stripe {cfg.stripe.api_base}: key accepted, events readable")
        except StripeError as exc:
            problems.append(f"stripe {cfg.stripe.api_base}: {exc}")
    print(f"ok   {describe_budget(cfg)}")
    for line in problems:
        print(f"FAIL {scrub(line)}")
    return 1 if problems else 0


async def cmd_resync(cfg: Config, args: argparse.Namespace) -> int:
    """Request a full resync from the running daemon (works from another container), or with
    `--direct` run it in this process."""
    try:
        resync.resolve_scope(cfg, args.type)
    except SyncdError as exc:
        print(f"syncd: error: {exc}", file=sys.stderr)
        return 2
    if args.account and not cfg.stripe.accounts:
        print("syncd: error: --account: stripe.accounts is not set (one account)", file=sys.stderr)
        return 2
    if args.account and not args.account.startswith("acct_"):
        print(f"syncd: error: --account: {args.account!r} is not an account id", file=sys.stderr)
        return 2
    if args.direct and cfg.stripe.accounts:
        print(
            "syncd: error: --direct: not with stripe.accounts (the replica leasing an account"
            " runs its resyncs): ask the daemon",
            file=sys.stderr,
        )
        return 2
    if args.direct:
        cfg.require_api_key()
        return await resync_schedule.run_direct(
            cfg,
            args.type or None,
            sys.stdout,
            live_after=live_after(cfg),
            settings=session_settings(cfg),
        )
    # No pool floor to keep: through a database restart the pool would log each failed
    # reconnect (with its traceback) while `--wait` already says the database is away.
    async with Database.connect(cfg.database, min_size=0) as db:
        return await resync_schedule.request(
            db,
            args.type or None,
            account=args.account,
            wait=args.wait,
            out=sys.stdout,
            timeout=args.timeout,
            live_after=live_after(cfg),
        )


def _resync_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--type",
        action="append",
        metavar="TABLE",
        help="re-list only this type (table name, e.g. customers); repeatable; default: all",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="follow the resync until it ends: failures as they happen; exit 1 unless it is done",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="with --wait: give up waiting (exit 1) after this many seconds; 0: never",
    )
    p.add_argument(
        "--direct",
        action="store_true",
        help="run the resync in this process instead of asking the daemon (when none runs)",
    )
    p.add_argument(
        "--account",
        metavar="ACCT",
        help="Connect (stripe.accounts): resync this account only (acct_...); default: every one",
    )


def _migrate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", type=int, default=None, help="stop after this migration version")


async def cmd_demo(cfg: Config, args: argparse.Namespace) -> int:
    from syncd import demo

    return await demo.cmd_demo(cfg, args)


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    from syncd import demo

    demo.demo_arguments(p)


def _emulator_arguments(p: argparse.ArgumentParser) -> None:
    from syncd.emulator import cli as emulator_cli

    emulator_cli.configure_parser(p)


COMMANDS: dict[str, Command] = {
    "run": Command(cmd_run, "run the daemon (migrates first; stops cleanly on SIGTERM)"),
    "migrate": Command(
        cmd_migrate, "apply pending database migrations and exit", _migrate_arguments
    ),
    "config": Command(cmd_config, "print the effective configuration, secrets redacted"),
    "resync": Command(
        cmd_resync,
        "ask the running daemon to re-list Stripe into the mirror (--wait: follow it;"
        " --direct: run it in this process)",
        _resync_arguments,
    ),
    "check": Command(
        cmd_check, "check the configuration, PostgreSQL and Stripe; exit 0 when all is well"
    ),
    "verify": Command(
        verify.cmd_verify,
        "compare the mirror with Stripe per table; exit 1 on drift (--repair: write what"
        " Stripe holds)",
        verify.verify_arguments,
    ),
    "status": Command(
        cmd_status,
        "leader, last poll, cursor, resyncs, usage, rows per table; exit 1 when unhealthy",
        status_arguments,
    ),
    "demo": Command(
        cmd_demo,
        "try syncd offline: throwaway PostgreSQL, the emulator, the daemon and live changes",
        _demo_arguments,
    ),
    "health": Command(
        cmd_health,
        "probe this host's /healthz (or --ready: /readyz); for HEALTHCHECK",
        health_arguments,
    ),
    "flush-usage": Command(
        usage_schedule.cmd_flush_usage,
        "report pending usage rows to Stripe now (asks the daemon; --direct: in this process)",
        usage_schedule.flush_usage_arguments,
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `syncd` parser. With `command`, only that command's own arguments are added (`main`
    passes the one on the command line, "" for none), so a command imports only what it needs."""
    parser = argparse.ArgumentParser(
        prog="syncd", description="Mirror Stripe into PostgreSQL without webhooks."
    )
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="configuration file (default: $SYNCD_CONFIG, else ./config.toml when present)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, entry in COMMANDS.items():
        p = sub.add_parser(name, help=entry.help, description=entry.help)
        if entry.arguments is not None and command in (None, name):
            entry.arguments(p)
    emulator = sub.add_parser(
        "emulator",
        help="run the Stripe emulator (offline testing; see docs/emulator.md)",
        description="A stateful Stripe API emulator on loopback, for tests, benchmarks and demos.",
    )
    if command in (None, "emulator"):
        _emulator_arguments(emulator)
    return parser


def _command_in(argv: Sequence[str]) -> str:
    """The command named on the command line ("" when none is)."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)  # its value
        elif not word.startswith("-"):
            return word
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command_in(argv)).parse_args(argv)
    if args.command == "emulator":
        # The emulator stands apart from the daemon: it needs no syncd configuration.
        from syncd.emulator import cli as emulator_cli

        return emulator_cli.run(args)
    try:
        if args.config:
            cfg = load_config(Path(args.config), explicit=True)
        else:
            path, explicit = default_config_path(os.environ)
            cfg = load_config(path, explicit=explicit)
        configure_logging(cfg.log.level, cfg.log.format)
        return lifecycle.run(COMMANDS[args.command].run, cfg, args)
    except SyncdError as exc:
        print(f"syncd: error: {scrub(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
