"""Connect's parts that need no daemon: the `stripe.accounts` setting (bad values are one line
and exit 2), the replicas' split of a shared budget (RateSchedule.share), and the requests a
StripeAPI view for a connected account sends."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.config import ConfigError, load_config
from tests.conftest import syncd_cli
from tests.test_inputs_config import config_file, one_line_exit_2
from tests.test_ratelimit import FakeClock, backlog, run_until, schedule


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("[stripe]\naccounts = ['acct_1', 'cus_2']\n", {}, "stripe.accounts: 'cus_2' is not"),
        ("", {"SYNCD_STRIPE_ACCOUNTS": "all,acct_1"}, "stripe.accounts: 'all' takes no"),
        ("[stripe]\naccounts = 'acct_1,acct_1'\n", {}, "stripe.accounts: an account is listed"),
        (
            "[stripe]\naccount = 'acct_1'\naccounts = 'all'\n",
            {},
            "stripe.accounts: set with stripe.account",
        ),
        ("[stripe]\naccounts = 3\n", {}, "stripe.accounts: expected a list of strings"),
        (
            "[stripe]\naccounts = 'all'\n[verify]\ninterval = 60\n",
            {},
            "verify.interval: not with stripe.accounts",
        ),
        ("[stripe]\nconnect_limits = 'platform'\n", {}, "stripe.connect_limits: 'platform'"),
    ],
)
def test_bad_accounts_settings_are_one_line_and_exit_2(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    line = one_line_exit_2(syncd_cli("--config", config_file(tmp_path, text), "config", env=env))
    assert expected in line, line


def test_accounts_are_read_from_toml_lists_strings_and_the_environment() -> None:
    assert load_config(None, {"SYNCD_STRIPE_ACCOUNTS": "all"}).stripe.accounts == ["all"]
    env = {"SYNCD_STRIPE_ACCOUNTS": "acct_1, acct_2"}
    assert load_config(None, env).stripe.accounts == ["acct_1", "acct_2"]
    assert load_config(None, {}).stripe.accounts == []
    with pytest.raises(ConfigError, match=r"^stripe\.accounts: 'acct-x' is not"):
        load_config(None, {"SYNCD_STRIPE_ACCOUNTS": "acct-x"})


def test_a_shared_budget_is_split_between_replicas() -> None:
    clock = FakeClock()
    s = schedule(12, clock, burst=1, endpoint_rate=6)
    s.share(1 / 3)  # three replicas: a third of the platform's budget each
    backlog(s, clock, "GET /v1/events", 100)
    backlog(s, clock, "GET /v1/customers", 100)
    grants = run_until(s, clock, clock.t + 10.0)
    assert 38 <= len(grants) <= 41  # 4/s, not 12/s
    per_endpoint = {key: sum(1 for _, k in grants if k == key) for _, key in grants}
    assert all(n <= 21 for n in per_endpoint.values())  # 2/s each endpoint, not 6/s
    s.share(1.0)  # the others died: the whole budget again
    assert len(run_until(s, clock, clock.t + 5.0)) >= 58


def test_platform_events_name_the_account_they_are_about() -> None:
    from syncd.accounts import _about

    def event(kind: str, obj: dict[str, object], **top: object) -> dict[str, object]:
        return {"type": kind, "data": {"object": obj}, **top}

    assert _about(event("account.updated", {"object": "account", "id": "acct_1"})) == "acct_1"
    assert _about(event("x.y", {"object": "customer", "id": "cus_1"}, account="acct_2")) == "acct_2"
    fee = {"object": "application_fee", "id": "fee_1", "account": "acct_3"}
    assert _about(event("application_fee.created", fee)) == "acct_3"
    transfer = {"object": "transfer", "id": "tr_1", "destination": {"id": "acct_4"}}
    assert _about(event("transfer.created", transfer)) == "acct_4"
    assert _about(event("customer.created", {"object": "customer", "id": "cus_1"})) is None


def test_an_urgent_request_goes_ahead_of_its_endpoints_queue() -> None:
    """An active account's poll is served before the quiet accounts' polls already waiting
    at GET /v1/events (StripeAPI.urgent, RateSchedule.enqueue(first=True))."""
    clock = FakeClock()
    s = schedule(2, clock, burst=1)
    quiet = backlog(s, clock, "GET /v1/events", 20)  # ten seconds' worth at 2/s
    active = s.enqueue("GET /v1/events", clock.t, first=True)
    run_until(s, clock, clock.t + 1.0)
    assert active.granted and sum(w.granted for w in quiet) <= 2
