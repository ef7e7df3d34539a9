"""`syncd status`: what an on-call engineer asks first, read from the database alone.

Leader and replicas (from their heartbeats), schema version and pending migrations, the last
poll, operator requests, rows per mirror table, and the features' own state when their tables
exist (events cursor and ledger, full resyncs, usage, the periodic verify), and with Connect
(`stripe.accounts`) the accounts synced, lagging and failing (`_accounts`). Exit code 1 when
unhealthy: no live leader, pending migrations, a stale poll, an events cursor too old or an
account failing; so `syncd status --quiet` works as a health check from anywhere that reaches
the database.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from syncd import migrations, quarantine
from syncd.config import Config
from syncd.db import Database, describe_target
from syncd.health import POLL_LOOP
from syncd.redaction import scrub
from syncd.registry import BY_TABLE, RESOURCES
from syncd.resync.eta import left_text

Report = dict[str, Any]
# Entries of the refetch queue are settled within seconds; one this old means they are not.
REFETCH_QUEUE_STUCK = 600.0
# Problems the database tells in more detail (the resync run's attempts and next try).
_SHOWN_FROM_DATABASE = {"resync_failing", "verify_failing"}
# Connect: an account whose last successful poll is older than this many of its poll intervals
# (and than ACCOUNT_LAG_MIN seconds) is lagging; the lists name this many accounts at most.
ACCOUNT_LAG_POLLS = 3
ACCOUNT_LAG_MIN = 30.0
ACCOUNTS_LISTED = 10


def live_after(cfg: Config) -> float:
    """Seconds without a heartbeat after which a replica counts as dead."""
    return max(3 * cfg.daemon.heartbeat_interval, 15.0)


async def _exists(db: Database, table: str) -> bool:
    return bool(await db.fetchval("relation_exists", table))


async def gather(db: Database, cfg: Config) -> Report:
    """Everything `syncd status` shows, as plain JSON-able data, plus the problems found."""
    report: Report = {
        "database": describe_target(cfg.database.url),
        "problems": [],
        "warnings": [],
    }
    problems: list[str] = report["problems"]
    warnings: list[str] = report["warnings"]
    pending = await migrations.pending(db)
    state = db.schemas.state
    version = 0
    if await _exists(db, f'"{state}".schema_migrations'):
        version = await db.fetchval("status_schema_version")
    report["schema"] = {
        "version": version,
        "pending": [f"{m.version:04d}_{m.name}" for m in pending],
    }
    if pending:
        problems.append(f"{len(pending)} migration(s) pending: run `syncd migrate`")
    if pending and version < 40:
        # Too old to read the rest; say so rather than fail on missing columns.
        return report

    instances = [dict(r) for r in await db.fetch("status_instances", live_after(cfg))]
    # The lock admits one leader. A leader killed a moment ago still looks alive until its
    # heartbeat ages out: the one that became leader last is the leader, others are superseded.
    leaders = sorted(
        (i for i in instances if i["alive"] and i["role"] == "leader"),
        key=lambda i: i["leader_since"] or datetime.min.replace(tzinfo=UTC),
        reverse=True,
    )
    for old in leaders[1:]:
        old["role"] = "leader (superseded)"
    report["instances"] = [
        {
            "id": i["instance_id"],
            "role": i["role"] if i["alive"] or i["stopped_at"] else f"{i['role']} (silent)",
            "alive": i["alive"],
            "version": i["version"],
            "beat_age": round(i["beat_age"], 1),
            "leader_since": _iso(i["leader_since"]),
            "http": i["http_bind"],
        }
        for i in instances
    ]
    report["leader"] = leaders[0]["instance_id"] if leaders else None
    if not leaders:
        problems.append("no live leader heartbeat")

    # The last poll, as the leader's heartbeat last reported it.
    report["last_success"] = {}
    if leaders:
        successes: dict[str, float] = leaders[0]["last_success"] or {}
        now = time.time()
        report["last_success"] = {k: round(now - v, 1) for k, v in successes.items()}
        poll_age = report["last_success"].get(POLL_LOOP)
        limit = cfg.http.ready_max_poll_age
        if cfg.events.enabled and poll_age is not None and poll_age > limit:
            problems.append(f"last successful poll {poll_age:.0f}s ago (> {limit:.0f}s)")
        # What the leader's loops keep failing at (syncd/problems.py), as of its last beat.
        now = time.time()
        for key, p in sorted((leaders[0].get("problems") or {}).items()):
            if key in _SHOWN_FROM_DATABASE:
                continue
            line = f"{key}: {p['message']} (for {_age(now - p['since']).removesuffix(' ago')})"
            (problems if p.get("blocking") else warnings).append(line)

    report["requests"] = [
        {
            "id": r["id"],
            "kind": r["kind"],
            "status": r["status"],
            "requested_at": _iso(r["requested_at"]),
            "seconds": None if r["seconds"] is None else round(r["seconds"], 1),
            "error": r["error"],
        }
        for r in await db.fetch("status_requests", 5)
    ]

    tables: dict[str, dict[str, Any]] = {}
    for resource in RESOURCES:
        if not await _exists(db, f'"{db.schemas.mirror}"."{resource.table}"'):
            continue
        row = await db.fetchrow("status_mirror_counts", table=resource.table)
        if row is not None and (row["live"] or row["deleted"]):
            tables[resource.table] = {
                "live": row["live"],
                "deleted": row["deleted"],
                "last_synced": _iso(row["last_synced"]),
            }
    report["tables"] = tables

    # The features' own state, when their migrations are in (each is optional).
    if await _exists(db, f'"{state}".events_cursor'):
        report["events"] = await _events(db, cfg, problems)
    if await _exists(db, f'"{state}".accounts'):
        accounts = await _accounts(db, report["instances"])
        if accounts is not None:  # only with Connect: the table holds no row without it
            report["accounts"] = accounts
            _accounts_problems(accounts, problems, warnings)
    if await _exists(db, f'"{state}".refetch_queue'):
        row = await db.fetchrow("status_refetch_queue")
        assert row is not None
        oldest = None if row["oldest_age"] is None else round(float(row["oldest_age"]), 1)
        report["refetch_queue"] = {"objects": int(row["objects"]), "oldest_age": oldest}
        if oldest is not None and oldest > REFETCH_QUEUE_STUCK:
            warnings.append(
                f"{row['objects']} object(s) wait to be fetched again, the oldest for"
                f" {_age(oldest).removesuffix(' ago')}: see {state}.refetch_queue and the"
                " overlap_settle_failed log"
            )
    if await _exists(db, f'"{state}".resync_runs'):
        report["resync"] = await _resync(db, version)
        _resync_problems(report["resync"], problems, warnings)
    if version >= 61:
        report["quarantine"] = await quarantine.summary(db)
        for q in report["quarantine"]:
            warnings.append(
                f"{q['objects']} {q['table']} object(s) quarantined ({q['reason']}),"
                f" e.g. {q['example']}: see {state}.rejected_objects"
            )
    if await _exists(db, f'"{db.schemas.app}".usage_records'):
        report["usage"] = await _usage(db)
    if await _exists(db, f'"{state}".verify_runs'):
        report["verify"] = await _verify(db)
        _verify_warnings(report["verify"], warnings)
    return report


EVENT_CURSORS_SHOWN = 5


async def _events(db: Database, cfg: Config, problems: list[str]) -> list[dict[str, Any]]:
    out = []
    for r in await db.fetch("status_events"):
        age = float(r["cursor_age"])
        out.append(
            {
                "account": r["account_id"] or "(own)",
                "cursor_age": round(age, 1),
                "cursor_reason": r["reason"],
                "cursor_advanced": round(float(r["advanced_ago"]), 1),
                "ledger_24h": r["ledger_24h"],
                "median_lag": None if r["median_lag"] is None else round(r["median_lag"], 2),
                "last_event_at": _iso(r["last_event_at"]),
            }
        )
        warn_days = cfg.events.warn_cursor_age_days
        if age > warn_days * 86400:
            problems.append(
                f"events cursor{_of(r['account_id'])} is {age / 86400:.1f} days old"
                f" (> {warn_days:g})"
            )
    # Connect: the oldest cursors tell; the accounts section tells the rest.
    return out[:EVENT_CURSORS_SHOWN]


def _of(account_id: str) -> str:
    return f" of {account_id}" if account_id else ""


async def _accounts(db: Database, instances: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Connect (`stripe.accounts`): the accounts of `{state}.accounts` by state; None when the
    table has no row (one account, as without Connect). Each active account is in one of:

    * failing: its last poll failed (`error` is set; it is cleared once a poll works);
    * lagging: not failing, and its last successful poll is older than
      max(3 x its poll_interval, 30 s), or no replica leases it while live replicas exist;
    * not yet synced: neither, and no poll has succeeded yet or no full resync of the account
      has completed (a run of all types, `done` or `done_with_problems`);
    * synced: the rest (a successful poll, recent enough, and a completed full resync).

    `resyncing` counts the active accounts with a run pending or running, whatever their state;
    `deauthorized` and `unlisted` accounts are counted apart (syncd keeps their rows). Lists:
    the failing accounts (longest failing first) and the lagging ones (oldest poll first), at
    most ACCOUNTS_LISTED each; and how many accounts each live replica leases."""
    live = [i["id"] for i in instances if i["alive"]]
    rows = await db.fetch(
        "status_accounts", ACCOUNT_LAG_MIN, ACCOUNT_LAG_POLLS, bool(live), ACCOUNTS_LISTED
    )
    if not rows:
        return None
    by_state = {r["state"]: r for r in rows}

    def count(state: str) -> int:
        row = by_state.get(state)
        return int(row["accounts"]) if row is not None else 0

    def first(state: str) -> list[dict[str, Any]]:
        row = by_state.get(state)
        return list(row["first"] or []) if row is not None else []

    active = ("failing", "lagging", "not_synced", "synced")
    counts = {
        "active": sum(count(s) for s in active),
        "synced": count("synced"),
        "lagging": count("lagging"),
        "failing": count("failing"),
        "not_synced": count("not_synced"),
        "resyncing": sum(int(by_state[s]["resyncing"]) for s in active if s in by_state),
        "deauthorized": count("deauthorized"),
        "unlisted": count("unlisted"),
    }
    leased = {r["leased_by"]: int(r["accounts"]) for r in await db.fetch("status_account_leases")}
    return {
        "counts": counts,
        "failing": [
            {
                "account": a["account"],
                "since": _iso(datetime.fromisoformat(a["since"]).astimezone(UTC))
                if a["since"]
                else None,
                "failing_for": _round(a["failing_for"]),
                "error": scrub(a["error"]),
            }
            for a in first("failing")
        ],
        "lagging": [
            {
                "account": a["account"],
                "last_poll_age": _round(a["last_poll_age"]),
                "poll_interval": a["poll_interval"],
                "leased_by": a["leased_by"],
            }
            for a in first("lagging")
        ],
        "leases": {who: leased.get(who, 0) for who in live},
        # Leases a replica that is not alive still holds on paper (it died; another takes over).
        "leased_by_gone": sum(n for who, n in leased.items() if who not in live),
    }


def _accounts_problems(accounts: dict[str, Any], problems: list[str], warnings: list[str]) -> None:
    """A failing account is a problem (status exits 1), a lagging one a warning."""
    counts = accounts["counts"]
    if counts["failing"]:
        problems.append(f"{_accounts_text(counts['failing'])} failing (listed under accounts)")
    if counts["lagging"]:
        warnings.append(f"{_accounts_text(counts['lagging'])} lagging (listed under accounts)")


def _accounts_text(n: int) -> str:
    return f"{n} account" if n == 1 else f"{n} accounts"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def _resync(db: Database, version: int) -> list[dict[str, Any]]:
    runs = [
        {
            "run": r["run_id"],
            "scope": ",".join(r["tables"]) if r["tables"] else "all",
            "account": r["account_id"] or None,
            "reason": r["reason"],
            "status": r["status"],
            "started_at": _iso(r["started_at"]),
            "seconds": None if r["seconds"] is None else round(r["seconds"], 1),
            "objects": r["objects"],
            "error": r["error"],
            "attempts": r["attempts"],
            "next_try_at": _iso(r["next_try_at"]),
        }
        for r in await db.fetch("status_resync", 3)
    ]
    for run in runs:
        if run["status"] == "running" and version >= 67:
            run.update(await _resync_progress(db, run["run"]))
    return runs


async def _resync_progress(db: Database, run_id: int) -> dict[str, Any]:
    """A running resync per type: objects so far (a per-parent walk: objects and parents
    asked), and the run's last estimate from the rate budget (resync/eta.py): requests left,
    seconds left, and when it was made (it is rewritten every few seconds)."""
    tables = []
    for r in await db.fetch("resync_progress", run_id):
        res = BY_TABLE.get(r["table_name"])
        walk = res is not None and res.list_path is None  # listed per parent
        tables.append(
            {
                "table": r["table_name"],
                "status": r["status"],
                "objects": r["children"] if walk else r["objects"],
                "parents_done": r["objects"] if walk else None,
                "requests_left": r["requests_left"],
                "eta_seconds": None if r["eta_seconds"] is None else round(r["eta_seconds"], 1),
                "at_least": r["left_at_least"],
                "estimated_at": _iso(r["progress_at"]),
                "estimate_age": None if r["progress_age"] is None else round(r["progress_age"], 1),
            }
        )
    estimated = [t for t in tables if t["requests_left"] is not None]
    return {
        "tables": tables,
        "requests_left": sum(t["requests_left"] for t in estimated) if estimated else None,
        "eta_seconds": max((t["eta_seconds"] for t in estimated), default=None),
        "at_least": any(t["at_least"] for t in estimated),
        "estimate_age": min((t["estimate_age"] for t in estimated), default=None),
    }


def _resync_problems(runs: list[dict[str, Any]], problems: list[str], warnings: list[str]) -> None:
    """The newest run says how resyncs go: failing again and again is a problem (status exits
    1); done, but with types skipped or lists answering 404, is a warning naming them."""
    if not runs:
        return
    run = runs[0]
    if run["status"] == "failed":
        problems.append(f"resync #{run['run']} failed: {run['error']}")
    elif run["status"] in ("pending", "running") and run["error"]:
        # One failure may be a blip the next try absorbs; failing again is a problem.
        line = (
            f"resync #{run['run']} failing ({run['attempts']} attempt(s), next try "
            f"{run['next_try_at']}): {run['error']}"
        )
        (problems if run["attempts"] >= 2 else warnings).append(line)
    elif run["status"] == "done_with_problems":
        warnings.append(f"resync #{run['run']} done with problems: {run['error']}")


async def _verify(db: Database) -> dict[str, Any]:
    """The periodic verify (syncd/verify_schedule.py): the newest run, the newest that ended
    with a result (the same run, or an older one when the newest failed or gave way to a
    resync), and when a run last found the mirror equal to Stripe."""
    runs = await db.fetch("verify_last_runs")

    def shown(r: Any) -> dict[str, Any]:
        return {
            "run": r["run_id"],
            "status": r["status"],
            "started_at": _iso(r["started_at"]),
            "finished_at": _iso(r["finished_at"]),
            "seconds": round(r["seconds"], 1),
            "tables": len(r["drift"]),  # tables verified
            "drifted": r["drifted"],
            "drift": {t: n for t, n in sorted(r["drift"].items()) if n},
            "unverified": r["unverified"],
            "repaired": r["repaired"],
            "requests": r["requests"],
            "sample": r["sample"],
            "repair": r["repair"],
            "error": r["error"],
        }

    result = next((r for r in runs if r["result"]), None)
    return {
        "last_run": shown(runs[0]) if runs else None,
        "last_result": shown(result) if result is not None else None,
        "last_clean_at": _iso(runs[0]["last_clean_at"]) if runs else None,
    }


def _verify_warnings(verify: dict[str, Any], warnings: list[str]) -> None:
    """Drift is a warning, not a problem (status exits 0, /readyz stays ready): the daemon
    works; something made the mirror differ (a hand edit, a restore, a bug) and a person
    should look. So is a table that could not be verified, and a run that failed."""
    result, newest = verify["last_result"], verify["last_run"]
    if result is not None and result["status"] == "drift":
        tables = ", ".join(f"{t} {n}" for t, n in result["drift"].items())
        repaired = f"; repaired {result['repaired']}" if result["repair"] else ""
        warnings.append(
            f"verify #{result['run']} ({result['finished_at']}) found {result['drifted']} drifted"
            f" object(s) ({tables}){repaired}; `syncd verify` names them"
        )
    elif result is not None and result["status"] == "incomplete":
        why = "; ".join(f"{t}: {e}" for t, e in result["unverified"].items())
        warnings.append(f"verify #{result['run']} ({result['finished_at']}) incomplete: {why}")
    if newest is not None and newest["status"] == "failed":
        warnings.append(
            f"verify #{newest['run']} failed ({newest['finished_at']}): {newest['error']}"
            " (the daemon tries again with backoff)"
        )


async def _usage(db: Database) -> dict[str, Any]:
    row = await db.fetchrow("usage_summary", 3)
    assert row is not None
    return {
        "rows": row["counts"],
        "oldest_unreported": _iso(row["oldest_unreported"]),
        "last_reported_at": _iso(row["last_reported_at"]),
        "batches_sending": row["batches_sending"],
        "meter_problems": row["meter_problems"],
        "latest_errors": [
            {"id": e["id"], "metric": e["metric"], "error": e["error"]}
            for e in row["latest_errors"]
        ],
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def render(report: Report) -> str:
    """The human summary: one screen, the problems first."""
    lines: list[str] = []
    problems = report["problems"]
    warnings = report.get("warnings", [])
    state = "UNHEALTHY" if problems else f"ok, {len(warnings)} warning(s)" if warnings else "ok"
    lines.append(f"syncd status for {report['database']}: {state}")
    lines.extend(f"  ! {p}" for p in problems)
    lines.extend(f"  ~ {w}" for w in warnings)
    schema = report["schema"]
    pending = ", ".join(schema["pending"]) or "none pending"
    lines.append(f"schema      version {schema['version']} ({pending})")
    if "instances" not in report:
        return "\n".join(lines) + "\n"
    lines.append(f"leader      {report['leader'] or 'none'}")
    for inst in report["instances"]:
        state = "alive" if inst["alive"] else "gone"
        lines.append(
            f"  {inst['role']:<10} {inst['id']}  v{inst['version']}  {state}, "
            f"beat {inst['beat_age']}s ago" + (f"  http {inst['http']}" if inst["http"] else "")
        )
    for loop, age in sorted(report["last_success"].items()):
        lines.append(f"last {loop:<7}{_age(age)}")
    for ev in report.get("events", []):
        ledger = ", ".join(f"{k} {v}" for k, v in sorted(ev["ledger_24h"].items())) or "empty"
        lag = "n/a" if ev["median_lag"] is None else f"{ev['median_lag']}s"
        of = "" if ev["account"] == "(own)" else f" of {ev['account']}"
        lines.append(
            f"events      cursor{of} {_age(ev['cursor_age'])} ({ev['cursor_reason']}), moved "
            f"{_age(ev['cursor_advanced'])}; ledger 24h: {ledger}; median lag {lag}"
        )
    if "accounts" in report:
        lines.extend(_render_accounts(report["accounts"]))
    queue = report.get("refetch_queue")
    if queue is not None and queue["objects"]:
        lines.append(
            f"refetch     {queue['objects']} object(s) to fetch again,"
            f" oldest {_age(queue['oldest_age'])}"
        )
    for run in report.get("resync", []):
        took = f" in {run['seconds']}s" if run["seconds"] is not None else ""
        error = f": {run['error']}" if run["error"] else ""
        of = f" of {run['account']}" if run.get("account") else ""
        lines.append(
            f"resync      #{run['run']} {run['scope']}{of} {run['status']}{took}, "
            f"{run['objects']} objects, started {run['started_at']} ({run['reason']}){error}"
        )
        if "tables" in run:
            lines.extend(_render_progress(run))
    if "usage" in report:
        usage = report["usage"]
        counts = ", ".join(f"{k} {v}" for k, v in sorted(usage["rows"].items())) or "no rows"
        lines.append(f"usage       {counts}; last reported {usage['last_reported_at'] or 'never'}")
        if usage["oldest_unreported"]:
            lines.append(f"  oldest unreported row from {usage['oldest_unreported']}")
        for problem in usage["meter_problems"]:
            lines.append(f"  meter {problem['metric']}: {problem['problem']}")
        for error in usage["latest_errors"]:
            lines.append(f"  failed row {error['id']} ({error['metric']}): {error['error']}")
    if "verify" in report:
        lines.extend(_render_verify(report["verify"]))
    if report["requests"]:
        lines.append("requests")
        for r in report["requests"]:
            took = f" in {r['seconds']}s" if r["seconds"] is not None else ""
            error = f": {r['error']}" if r["error"] else ""
            lines.append(
                f"  #{r['id']} {r['kind']} {r['status']}{took} ({r['requested_at']}){error}"
            )
    tables = report["tables"]
    lines.append(f"mirror      {sum(t['live'] for t in tables.values())} live rows")
    for name, t in sorted(tables.items()):
        deleted = f" (+{t['deleted']} deleted)" if t["deleted"] else ""
        lines.append(f"  {name:<28} {t['live']:>8}{deleted}")
    return "\n".join(lines) + "\n"


def _render_accounts(accounts: dict[str, Any]) -> list[str]:
    """Connect: the counts on one line, then the failing and lagging accounts and the leases."""
    c = accounts["counts"]
    line = (
        f"accounts    {c['active']} active: {c['synced']} synced, {c['lagging']} lagging,"
        f" {c['failing']} failing, {c['not_synced']} not yet synced"
    )
    if c["resyncing"]:
        line += f"; {c['resyncing']} resyncing"
    gone = [f"{c[s]} {s}" for s in ("deauthorized", "unlisted") if c[s]]
    if gone:
        line += f"; {', '.join(gone)} (rows kept)"
    lines = [line]
    for a in accounts["failing"]:
        since = f"since {a['since']} ({_age(a['failing_for'])})" if a["since"] else "since ?"
        lines.append(f"  failing   {a['account']}  {since}: {' '.join(a['error'].split())}")
    if c["failing"] > len(accounts["failing"]):
        lines.append(f"  failing   and {c['failing'] - len(accounts['failing'])} more")
    for a in accounts["lagging"]:
        age = a["last_poll_age"]
        poll = "no poll yet" if age is None else f"last poll {_age(age)}"
        if a["poll_interval"] is not None:
            poll += f" (every {a['poll_interval']:g}s)"
        lease = f"leased by {a['leased_by']}" if a["leased_by"] else "not leased"
        lines.append(f"  lagging   {a['account']}  {poll}, {lease}")
    if c["lagging"] > len(accounts["lagging"]):
        lines.append(f"  lagging   and {c['lagging'] - len(accounts['lagging'])} more")
    leases = [f"{who} {n}" for who, n in accounts["leases"].items()]
    if accounts["leased_by_gone"]:
        leases.append(f"{accounts['leased_by_gone']} by replicas gone")
    if leases:
        lines.append(f"  leases    {', '.join(leases)}")
    return lines


def _render_progress(run: dict[str, Any]) -> list[str]:
    """A running resync, type by type, under its line."""
    if run["requests_left"] is None:
        lines = ["  no estimate yet"]
    else:
        lines = [
            f"  {left_text(run['requests_left'], run['eta_seconds'], run['at_least'])}"
            f" (estimated {_age(run['estimate_age'])}, from the rate budget)"
        ]
    for t in run["tables"]:
        what = f"{t['objects']:>10,} objects"
        if t["parents_done"] is not None:
            what += f", {t['parents_done']:,} parents done"
        left = ""
        # Nothing left of a type listed (or swept, unavailable) goes without saying; of one
        # still listing (a walk whose parents are not known yet), it does not.
        if t["requests_left"] is not None and (t["requests_left"] or t["status"] == "listing"):
            left = f"  {left_text(t['requests_left'], t['eta_seconds'], t['at_least'])}"
        lines.append(f"  {t['table']:<28} {what}  {t['status']}{left}")
    return lines


def _render_verify(verify: dict[str, Any]) -> list[str]:
    result, newest = verify["last_result"], verify["last_run"]
    if newest is None:
        return []
    lines = []
    clean = f"last clean {verify['last_clean_at'] or 'never'}"
    if result is not None:
        if result["status"] == "clean":
            what = "clean"
        elif result["status"] == "drift":
            tables = ", ".join(f"{t} {n}" for t, n in result["drift"].items())
            repaired = f", {result['repaired']} repaired" if result["repair"] else ""
            what = f"drift: {result['drifted']} object(s) ({tables}){repaired}"
        else:
            what = f"incomplete: not verified {', '.join(result['unverified'])}"
        lines.append(
            f"verify      #{result['run']} {result['finished_at']}: {what}; {result['tables']}"
            f" tables, {result['requests']} requests in {result['seconds']}s; {clean}"
        )
    else:
        lines.append(f"verify      no run ended with a result yet; {clean}")
    if result is None or newest["run"] != result["run"]:
        lines.append(
            f"  #{newest['run']} {newest['status']} {newest['finished_at']}: {newest['error']}"
        )
    return lines


async def cmd_status(cfg: Config, args: argparse.Namespace) -> int:
    async with Database.connect(cfg.database, min_size=1) as db:
        report = await gather(db, cfg)
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    elif not args.quiet:
        print(render(report), end="")
    return 1 if report["problems"] else 0


def status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--quiet", action="store_true", help="print nothing; exit 1 when unhealthy (health checks)"
    )
