"""The Stripe edge against the emulator: raw pages, retries, 429 handling, versions, errors."""

from __future__ import annotations

import orjson
import pytest

from syncd.config import Config
from syncd.emulator import Emulator
from syncd.errors import StripeError, StripeNotFound, StripePermissionDenied, StripeRetryable
from syncd.stripe_api import RateLimiter, StripeAPI, endpoint_label
from tests.conftest import emulator_config


@pytest.fixture
def api_cfg(db_url: str, emulator: Emulator) -> Config:
    return emulator_config(db_url, emulator)


async def test_raw_list_page_and_version_on_stripes_clock(
    api_cfg: Config, emulator: Emulator
) -> None:
    emulator.seed(customers=30)
    emulator.clock.freeze(at=1_800_000_000)
    async with StripeAPI(api_cfg) as api:
        first = await api.request("GET", "/v1/customers", {"limit": 100})
        second = await api.request("GET", "/v1/customers", {"limit": 100})
    page = orjson.loads(first.body)
    assert len(page["data"]) == 30 and page["has_more"] is False
    # Versions are on the emulator's (frozen) clock: read before the end of the second its
    # Date names; from the second answer on, also known to begin about then (before the first,
    # nothing bounded Stripe's clock).
    assert first.version.latest <= 1_800_000_001 and second.version.latest <= 1_800_000_001
    assert 1_800_000_000 - 1 <= second.version.earliest <= second.version.latest


async def test_retries_5xx_and_429_then_succeeds(api_cfg: Config, emulator: Emulator) -> None:
    emulator.seed(customers=3)
    emulator.faults.set(pattern="*customers*", status=500, error_rate=1.0, times=2)
    async with StripeAPI(api_cfg) as api:
        api.max_retries = 3
        reply = await api.get("/v1/customers", {"limit": 10})
    assert len(reply["data"]) == 3
    assert emulator.stats.count("*customers*", status=500) == 2


async def test_gives_up_after_max_retries_with_a_retryable_error(
    api_cfg: Config, emulator: Emulator
) -> None:
    emulator.faults.set(pattern="*customers*", status=429, error_rate=1.0)
    async with StripeAPI(api_cfg) as api:
        api.max_retries = 1
        with pytest.raises(StripeRetryable, match="429"):
            await api.get("/v1/customers")


async def test_errors_are_translated(api_cfg: Config, emulator: Emulator) -> None:
    async with StripeAPI(api_cfg) as api:
        with pytest.raises(StripeNotFound):
            await api.get("/v1/customers/cus_missing")
        with pytest.raises(StripeError) as info:
            await api.get("/v1/customers", {"limit": 1000})
        assert info.value.status == 400 and not info.value.retryable
    emulator_key_cfg = emulator_config(api_cfg.database.url, emulator)
    async with StripeAPI(emulator_key_cfg, api_key="sk_live_wrongwrongwrong") as api:
        with pytest.raises(StripePermissionDenied):
            await api.get("/v1/customers")


async def test_rate_limiter_spaces_requests() -> None:
    import time

    limiter = RateLimiter(50, burst=1)
    started = time.monotonic()
    for _ in range(11):
        await limiter.acquire()
    # 10 waits of 1/50 s; a loose lower bound only (no upper bound on a shared machine).
    assert time.monotonic() - started >= 0.18


def test_endpoint_labels_are_bounded() -> None:
    assert endpoint_label("/v1/customers/cus_123/tax_ids?x=1") == "/v1/customers/{id}/tax_ids"
    assert endpoint_label("/v1/billing/meter_events") == "/v1/billing/meter_events"
    assert (
        endpoint_label("/v1/subscription_schedules/sub_sched_1Ab")
        == "/v1/subscription_schedules/{id}"
    )


async def test_sdk_log_lines_are_formatted_only_when_shown(
    api_cfg: Config, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK formats each response body for its debug log; nobody reads it unless STRIPE_LOG
    or the `stripe` logger asks, so it must not be formatted (0.3 ms per list page)."""
    import stripe
    import stripe._util

    formatted: list[dict[str, object]] = []
    real = stripe._util.logfmt

    def counting(props: dict[str, object]) -> str:
        formatted.append(props)
        return str(real(props))

    monkeypatch.setattr(stripe._util, "logfmt", counting)
    async with StripeAPI(api_cfg) as api:
        await api.request("GET", "/v1/customers", {"limit": 100})
        assert formatted == []
        monkeypatch.setattr(stripe, "log", "debug")  # the SDK's own switch still works
        await api.request("GET", "/v1/customers", {"limit": 100})
    assert any(p.get("message") == "API response body" for p in formatted)
