"""`syncd status` with Connect (`stripe.accounts`): the accounts synced, lagging, failing and
not yet synced, the failing and lagging ones listed, the leases per replica; a failing account
makes status exit 1. Each state is set up by writing the rows of `syncd.accounts`,
`syncd.resync_runs`, `syncd.events_cursor` and `syncd.instances` the daemon would write, then
the CLI runs as an operator runs it."""

from __future__ import annotations

import json
import re
from typing import Any

import asyncpg

from tests.conftest import syncd_cli

LEADER = "host-a-1-aaaaaa"
STANDBY = "host-b-2-bbbbbb"
GONE = "host-c-3-cccccc"


async def _execute(db_url: str, *statements: str | tuple[str, list[Any]]) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        for s in statements:
            if isinstance(s, tuple):
                await conn.execute(s[0], *s[1])
            else:
                await conn.execute(s)
    finally:
        await conn.close()


async def _replicas(db_url: str, *, gone: bool = False) -> None:
    """A live leader and a live standby (so nothing else is unhealthy), and with `gone` a
    replica whose last beat is an hour old."""
    await _execute(
        db_url,
        "INSERT INTO syncd.instances (instance_id, hostname, pid, version, role, leader_since)"
        f" VALUES ('{LEADER}', 'host-a', 1, '0.1.0', 'leader', now()),"
        f" ('{STANDBY}', 'host-b', 2, '0.1.0', 'standby', NULL)",
        *(
            [
                "INSERT INTO syncd.instances (instance_id, hostname, pid, version, role, beat_at)"
                f" VALUES ('{GONE}', 'host-c', 3, '0.1.0', 'standby', now() - interval '1 hour')"
            ]
            if gone
            else []
        ),
    )


async def _account(
    db_url: str,
    account: str,
    *,
    status: str = "active",
    leased_by: str | None = LEADER,
    polled_ago: float | None = 1.0,
    poll_interval: float | None = 2.0,
    error: str | None = None,
    failing_for: float | None = None,
    runs: tuple[tuple[str, list[str] | None], ...] = (("done", None),),
) -> None:
    """One account as its replica records it, with its events cursor and resync runs (status,
    tables; None = a full resync)."""
    await _execute(
        db_url,
        (
            "INSERT INTO syncd.accounts (account_id, source, status, leased_by, leased_at,"
            " last_poll_at, last_event_at, poll_interval, error, failing_since)"
            " VALUES ($1, 'discovered', $2, $3, CASE WHEN $3::text IS NOT NULL THEN now() END,"
            " now() - make_interval(secs => $4), now() - make_interval(secs => $4), $5, $6,"
            " now() - make_interval(secs => $7))",
            [account, status, leased_by, polled_ago, poll_interval, error, failing_for],
        ),
        (
            "INSERT INTO syncd.events_cursor (account_id, position, taken_at, reason)"
            " VALUES ($1, extract(epoch FROM now()) - coalesce($2, 0),"
            " extract(epoch FROM now()), 'first_start')",
            [account, polled_ago],
        ),
        *(
            (
                "INSERT INTO syncd.resync_runs (tables, reason, status, account_id, started_at,"
                " finished_at) VALUES ($1, 'first_start', $2, $3, now() - interval '1 hour',"
                " CASE WHEN $2 IN ('done', 'done_with_problems') THEN now() END)",
                [tables, run_status, account],
            )
            for run_status, tables in runs
        ),
    )


def _status(db_url: str, *args: str) -> tuple[int, str]:
    result = syncd_cli("status", *args, env={"DATABASE_URL": db_url})
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, result.stdout


def _json(db_url: str) -> tuple[int, dict[str, Any]]:
    code, out = _status(db_url, "--json")
    return code, json.loads(out)


async def test_each_state_counted_listed_and_leases_per_replica(db_url: str) -> None:
    await _replicas(db_url, gone=True)
    # A full resync of the key's own account ('') makes no connected account synced.
    await _execute(db_url, "INSERT INTO syncd.resync_runs (status) VALUES ('done')")
    await _account(db_url, "acct_synced")
    await _account(
        db_url,
        "acct_resynced",
        leased_by=STANDBY,
        runs=(("done_with_problems", None), ("running", None)),
    )
    # Quiet: polled 2 min ago, but it polls every 60 s (lagging past 180 s); its replica died.
    await _account(db_url, "acct_quiet", leased_by=GONE, polled_ago=120, poll_interval=60)
    await _account(db_url, "acct_partial", runs=(("done", ["customers"]),))
    await _account(
        db_url, "acct_new", polled_ago=None, poll_interval=None, runs=(("running", None),)
    )
    await _account(db_url, "acct_slow", leased_by=STANDBY, polled_ago=120, poll_interval=10)
    await _account(db_url, "acct_unleased", leased_by=None)
    await _account(
        db_url,
        "acct_failing",
        error="Invalid API Key provided: sk_live_abcdefgh12345678\n(401)",
        failing_for=300,
    )
    await _account(db_url, "acct_gone", status="deauthorized", leased_by=None, error="revoked")
    await _account(db_url, "acct_hidden", status="unlisted", leased_by=None)

    code, report = _json(db_url)
    assert code == 1, report
    accounts = report["accounts"]
    assert accounts["counts"] == {
        "active": 8,
        "synced": 3,  # acct_synced, acct_resynced, acct_quiet
        "lagging": 2,  # acct_slow (by its poll), acct_unleased (no lease, replicas live)
        "failing": 1,
        "not_synced": 2,  # acct_partial (a partial resync only), acct_new (no poll yet)
        "resyncing": 2,  # acct_resynced, acct_new
        "deauthorized": 1,
        "unlisted": 1,
    }
    [failing] = accounts["failing"]
    assert failing["account"] == "acct_failing"
    assert 299 <= failing["failing_for"] < 330 and failing["since"].endswith("+00:00")
    assert "sk_live_abcdefgh12345678" not in json.dumps(report)
    assert failing["error"].startswith("Invalid API Key provided: sk_live_***5678")
    # Oldest poll first.
    assert [(a["account"], a["leased_by"]) for a in accounts["lagging"]] == [
        ("acct_slow", STANDBY),
        ("acct_unleased", None),
    ]
    assert 119 <= accounts["lagging"][0]["last_poll_age"] < 150
    assert accounts["lagging"][0]["poll_interval"] == 10
    # Per live replica (the dead one's lease counted apart).
    assert accounts["leases"] == {LEADER: 4, STANDBY: 2}
    assert accounts["leased_by_gone"] == 1
    assert "1 account failing (listed under accounts)" in report["problems"]
    assert "2 accounts lagging (listed under accounts)" in report["warnings"]

    code, text = _status(db_url)
    assert code == 1 and "UNHEALTHY" in text
    assert "  ! 1 account failing (listed under accounts)" in text
    assert "  ~ 2 accounts lagging (listed under accounts)" in text
    assert (
        "accounts    8 active: 3 synced, 2 lagging, 1 failing, 2 not yet synced; 2 resyncing;"
        " 1 deauthorized, 1 unlisted (rows kept)"
    ) in text, text
    assert f"  failing   acct_failing  since {failing['since']} (5m ago): Invalid API Key" in text
    assert "(401)" in text and "sk_live_abcdefgh12345678" not in text
    assert f"  lagging   acct_slow  last poll 2m ago (every 10s), leased by {STANDBY}" in text
    assert re.search(
        r"\n  lagging   acct_unleased  last poll \d+s ago \(every 2s\), not leased\n", text
    )
    assert f"  leases    {LEADER} 4, {STANDBY} 2, 1 by replicas gone" in text
    assert " more" not in text  # no list is cut


async def test_lists_name_ten_accounts_and_count_the_rest(db_url: str) -> None:
    await _replicas(db_url)
    for n in range(12):  # acct_f00 has failed the longest
        await _account(db_url, f"acct_f{n:02d}", error=f"boom {n}", failing_for=1000 - n)
    for n in range(13):  # acct_l00 polled the longest ago
        await _account(db_url, f"acct_l{n:02d}", polled_ago=600 - n)

    code, report = _json(db_url)
    assert code == 1
    accounts = report["accounts"]
    assert accounts["counts"]["failing"] == 12 and accounts["counts"]["lagging"] == 13
    assert [a["account"] for a in accounts["failing"]] == [f"acct_f{n:02d}" for n in range(10)]
    assert [a["account"] for a in accounts["lagging"]] == [f"acct_l{n:02d}" for n in range(10)]
    assert "12 accounts failing (listed under accounts)" in report["problems"]

    code, text = _status(db_url)
    assert code == 1
    # The accounts section lists ten of each (the resync lines name their own accounts).
    section = "\n".join(line for line in text.splitlines() if not line.startswith("resync"))
    assert "acct_f09" in section and "acct_f10" not in section
    assert "acct_l09" in section and "acct_l10" not in section
    assert "  failing   and 2 more" in text
    assert "  lagging   and 3 more" in text
    assert f"  leases    {LEADER} 25, {STANDBY} 0" in text


async def test_a_failing_account_makes_status_unhealthy_until_a_poll_works(db_url: str) -> None:
    await _replicas(db_url)
    await _account(db_url, "acct_a")
    await _account(db_url, "acct_b", leased_by=STANDBY, error="HTTP 500", failing_for=60)
    code, text = _status(db_url)
    assert code == 1 and "! 1 account failing" in text, text
    assert syncd_cli("status", "--quiet", env={"DATABASE_URL": db_url}).returncode == 1

    # Its next poll works: the replica clears the error.
    await _execute(
        db_url, "UPDATE syncd.accounts SET error = NULL, failing_since = NULL, last_poll_at = now()"
    )
    code, text = _status(db_url)
    assert code == 0, text
    assert ": ok\n" in text
    assert "accounts    2 active: 2 synced, 0 lagging, 0 failing, 0 not yet synced\n" in text

    # Lagging is a warning: status stays healthy (exit 0).
    await _execute(db_url, "UPDATE syncd.accounts SET last_poll_at = now() - interval '1 minute'")
    code, report = _json(db_url)
    assert code == 0
    assert report["problems"] == []
    assert report["warnings"] == ["2 accounts lagging (listed under accounts)"]
    assert report["accounts"]["counts"]["lagging"] == 2


async def test_an_unleased_account_lags_only_while_replicas_live(db_url: str) -> None:
    """Without a live replica nothing leases anything (status already says: no live leader);
    the accounts are judged by their polls."""
    await _account(db_url, "acct_a", leased_by=None)
    await _account(db_url, "acct_b", leased_by=None, polled_ago=None, poll_interval=None, runs=())
    code, report = _json(db_url)
    assert code == 1 and report["problems"] == ["no live leader heartbeat"]
    assert (
        report["accounts"]["counts"] | {"synced": 1, "not_synced": 1, "lagging": 0}
        == (report["accounts"]["counts"])
    )
    assert report["accounts"]["leases"] == {} and report["accounts"]["leased_by_gone"] == 0

    await _replicas(db_url)
    code, report = _json(db_url)
    assert code == 0, report
    assert report["accounts"]["counts"]["lagging"] == 2
    lagging = {a["account"]: a for a in report["accounts"]["lagging"]}
    assert lagging["acct_b"]["last_poll_age"] is None and lagging["acct_b"]["leased_by"] is None
    _, text = _status(db_url)
    assert "  lagging   acct_b  no poll yet, not leased" in text


async def test_single_account_installs_see_nothing_about_accounts(db_url: str) -> None:
    """Without `stripe.accounts` the table holds no row: status reads as before. The first
    account row brings the section."""
    await _replicas(db_url)
    await _execute(
        db_url,
        "INSERT INTO syncd.events_cursor (account_id, position, taken_at, reason)"
        " VALUES ('', extract(epoch FROM now()), extract(epoch FROM now()), 'first_start')",
        "INSERT INTO syncd.resync_runs (status) VALUES ('done')",
    )
    code, text = _status(db_url)
    assert code == 0, text
    assert "account" not in text.lower(), text
    code, report = _json(db_url)
    assert code == 0 and "accounts" not in report
    assert "account" not in json.dumps(report["problems"] + report["warnings"])

    await _account(db_url, "acct_one")
    code, text = _status(db_url)
    assert code == 0, text
    assert "accounts    1 active: 1 synced, 0 lagging, 0 failing, 0 not yet synced\n" in text
    assert f"  leases    {LEADER} 1, {STANDBY} 0\n" in text
    code, report = _json(db_url)
    assert report["accounts"]["counts"]["synced"] == 1
