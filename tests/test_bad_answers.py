"""Answers Stripe never sends (a proxy's HTML page, a body cut short, a wrong shape) are transient:
retried like a 502, counted, logged once per burst; the daemon stays up and converges."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog

from syncd import metrics
from syncd.config import Config
from syncd.db import Database
from syncd.emulator import Emulator
from syncd.errors import StripeBadAnswer, StripeRetryable
from syncd.lister import parse_list
from syncd.stripe_api import Reply, StripeAPI
from tests.conftest import emulator_config, make_config
from tests.support.events import converge, harness
from tests.support.ops import DaemonProcess
from tests.support.resync import mirror_differences


@pytest.fixture
def api_cfg(db_url: str, emulator: Emulator) -> Config:
    return emulator_config(db_url, emulator)


def bad_answers(endpoint: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "syncd_stripe_bad_answers_total", {"endpoint": endpoint}
    )
    return value or 0.0


@contextmanager
def logs() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


@pytest.mark.parametrize(("bad_body", "status"), [("html", 200), ("html", 502), ("truncated", 0)])
async def test_bad_answers_are_retried_counted_and_logged_once_per_burst(
    api_cfg: Config, emulator: Emulator, bad_body: str, status: int
) -> None:
    emulator.seed(customers=3)
    rule = emulator.faults.set(
        pattern="GET /v1/customers",
        bad_body=bad_body,
        status=status or 500,
        error_rate=1.0,
        times=3,
    )
    async with StripeAPI(api_cfg) as api:
        await api.request("GET", "/v1/products")  # ends any burst an earlier test left open
        before = bad_answers("/v1/customers")
        with logs() as captured:
            api.max_retries = 4
            page = await api.get_page("/v1/customers", {"limit": 10})
    assert len(page["data"]) == 3 and rule.hits == 3
    assert bad_answers("/v1/customers") == before + 3
    events = [e["event"] for e in captured]
    assert events.count("stripe_bad_answers") == 1  # the burst's start, not each answer
    assert events.count("stripe_bad_answers_ended") == 1
    assert "stripe_retry" not in events
    start = next(e for e in captured if e["event"] == "stripe_bad_answers")
    assert start["endpoint"] == "/v1/customers" and start["log_level"] == "warning"
    if bad_body == "html":
        assert start["status"] == status and "<html>" in start["body"]


async def test_bad_answers_give_up_as_a_retryable_error(
    api_cfg: Config, emulator: Emulator
) -> None:
    emulator.faults.set(pattern="GET /v1/events", bad_body="html", status=200, error_rate=1.0)
    emulator.faults.set(
        pattern="GET /v1/customers/cus_gone", bad_body="html", status=404, error_rate=1.0
    )
    async with StripeAPI(api_cfg) as api:
        api.max_retries = 1
        with pytest.raises(StripeBadAnswer) as info:
            await api.request("GET", "/v1/events")
        assert info.value.retryable and info.value.status == 200
        assert isinstance(info.value, StripeRetryable)
        # A proxy's 404 page is not Stripe saying the object is gone (no tombstone from it).
        with pytest.raises(StripeBadAnswer) as info:
            await api.request("GET", "/v1/customers/cus_gone", retry=False)
        assert info.value.status == 404


@pytest.mark.parametrize(
    ("body", "parse"),
    [
        (b'{"object": "list", "data": [{"id": "cus_1"', "json"),
        (b"[1, 2]", "json"),
        (b'{"object": "list", "data": {}, "has_more": false}', "page"),
        (b'{"object": "list", "data": []}', "page"),
        (b'{"ok": true}', "object"),
        (b'{"id": 7, "object": "customer"}', "object"),
    ],
)
def test_reply_parsers_call_a_wrong_shape_a_bad_answer(body: bytes, parse: str) -> None:
    reply = Reply(body, 1.0, "/v1/customers/cus_1")
    with pytest.raises(StripeBadAnswer):
        getattr(reply, parse)()


def test_reply_parsers_accept_what_stripe_sends() -> None:
    assert Reply(b'{"id": "cus_1", "object": "customer"}', 1.0).object()["id"] == "cus_1"
    page = Reply(b'{"object": "list", "data": [], "has_more": false}', 1.0).page()
    assert page["data"] == [] and page["has_more"] is False
    assert parse_list(b'{"data": [{"id": "x"}], "has_more": true}', "/v1/x") == (
        [{"id": "x"}],
        True,
    )
    with pytest.raises(StripeBadAnswer):
        parse_list(b"<html>502 Bad Gateway</html>", "/v1/customers")
    # A lone surrogate escape is the object's own oddity (stored or quarantined), not a bad answer.
    odd = Reply(b'{"id": "cus_1", "object": "customer", "name": "a\\ud800b"}', 1.0).object()
    assert odd["name"] == "a\ud800b"


# ---- the daemon --------------------------------------------------------------------------


# Finished runs (the emulator has no tax rates or early fraud warnings: those types are skipped).
FINISHED = ("done", "done_with_problems")


def daemon(tmp_path: Path, db_url: str, emu: Emulator, **env: str) -> DaemonProcess:
    return DaemonProcess(
        tmp_path,
        db_url,
        real=True,
        SYNCD_STRIPE_API_BASE=emu.url,
        SYNCD_STRIPE_RATE_LIMIT="500",
        SYNCD_EVENTS_POLL_INTERVAL="0.2",
        SYNCD_EVENTS_OVERLAP_INTERVAL="2",
        SYNCD_USAGE_ENABLED="false",
        SYNCD_DAEMON_SHUTDOWN_GRACE="3",
        **env,
    )


def assert_no_crash(d: DaemonProcess) -> None:
    assert d.proc.poll() is None, d.output()[-4000:]
    assert "Traceback" not in d.output()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_events_and_refetches_ride_out_bad_answers(
    tmp_path: Path, db_url: str, emulator: Emulator
) -> None:
    emulator.seed(customers=5, subscriptions=0, products=2)
    # Refetch mode: every event's object is retrieved, so the retrieves meet the bad answers.
    d = daemon(tmp_path, db_url, emulator, SYNCD_EVENTS_APPLY_MODE="refetch")
    try:
        async with harness(db_url, emulator) as h:
            await converge(emulator, h, ("customer", "product"))
            customers = [c for c in emulator.objects("customer") if not c.get("deleted")]
            for n, (bad_body, status) in enumerate(
                [("html", 200), ("truncated", 0), ("html", 502)]
            ):
                rules = [
                    emulator.faults.set(
                        pattern=pattern,
                        bad_body=bad_body,
                        status=status or 500,
                        error_rate=1.0,
                        times=3,
                    )
                    for pattern in ("GET /v1/events", "GET /v1/customers/*")
                ]
                for c in customers:
                    await h.user.post(f"/v1/customers/{c['id']}", {"name": f"{bad_body} {n}"})
                await h.user.post("/v1/customers", {"email": f"new{n}@example.com"})
                await converge(emulator, h, ("customer", "product"))
                assert [r.hits for r in rules] == [3, 3], (bad_body, status)
                assert_no_crash(d)
        assert "stripe_bad_answers" in d.output()
    finally:
        d.stop()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_resync_list_pages_and_sweep_refetches_ride_out_bad_answers(
    tmp_path: Path, db_url: str, emulator: Emulator
) -> None:
    emulator.seed(customers=40, subscriptions=0, products=3)
    # A first full resync whose list pages meet every kind of bad answer.
    emulator.faults.set(
        pattern="GET /v1/customers", bad_body="html", status=200, error_rate=1.0, times=2
    )
    emulator.faults.set(pattern="GET /v1/products", bad_body="truncated", error_rate=1.0, times=2)
    emulator.faults.set(
        pattern="GET /v1/prices", bad_body="html", status=502, error_rate=1.0, times=2
    )
    d = daemon(tmp_path, db_url, emulator, SYNCD_EVENTS_ENABLED="false")
    cfg = make_config(db_url)
    try:
        async with Database.connect(cfg.database, min_size=1) as db:

            async def runs_done(n: int) -> None:
                with anyio.fail_after(60):
                    while True:
                        statuses = await db.run(
                            lambda c: c.fetch("SELECT status FROM syncd.resync_runs"),
                            transaction=False,
                        )
                        if len(statuses) >= n and all(r[0] in FINISHED for r in statuses):
                            return
                        assert_no_crash(d)
                        await anyio.sleep(0.2)

            await runs_done(1)
            tables = ["customers", "products", "prices"]
            assert await mirror_differences(db, emulator, tables) == []
            # A customer deleted while nobody watched: the next resync's sweep retrieves it (and
            # meets bad answers) before tombstoning it.
            gone = next(c for c in emulator.objects("customer") if not c.get("deleted"))
            async with StripeAPI(emulator_config(db_url, emulator)) as user:
                await user.request("DELETE", f"/v1/customers/{gone['id']}")
            rule = emulator.faults.set(
                pattern=f"GET /v1/customers/{gone['id']}",
                bad_body="html",
                status=200,
                error_rate=1.0,
                times=3,
            )
            # Rows confirmed within SWEEP_MARGIN (2 s) before a run starts are left alone.
            await anyio.sleep(2.5)
            d.signal(signal.SIGHUP)
            await runs_done(2)
            assert rule.hits == 3
            deleted = await db.run(
                lambda c: c.fetchval(
                    "SELECT deleted_at IS NOT NULL FROM stripe.customers WHERE id = $1",
                    gone["id"],
                ),
                transaction=False,
            )
            assert deleted
            assert await mirror_differences(db, emulator, tables) == []
        assert_no_crash(d)
        out = d.output()
        assert "stripe_bad_answers" in out
        assert "resync_failed" not in out  # retried inside the request, like a 502
    finally:
        d.stop()
