"""Configuration: defaults, overrides, secrets from files, and one clear line per bad input."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from syncd.config import Config, example_toml, load_config, redacted
from syncd.errors import ConfigError
from tests.conftest import ROOT, syncd_cli

LIVE = "sk_live_" + "a" * 24
TEST = "sk_test_" + "b" * 24


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_example_config_documents_every_key_with_its_default() -> None:
    shipped = (ROOT / "config.toml").read_text()
    assert shipped == example_toml(), "config.toml is out of date: regenerate it from syncd.config"
    assert load_config(ROOT / "config.toml", {}) == Config()
    parsed = tomllib.loads(shipped)
    assert parsed == {s: v for s, v in redacted(Config()).items()}


def test_env_overrides_every_kind_of_value(tmp_path: Path) -> None:
    env = {
        "SYNCD_EVENTS_POLL_INTERVAL": "2.5",
        "SYNCD_SYNC_SLICES": "4",
        "SYNCD_SYNC_RESYNC_ON_EMPTY": "false",
        "SYNCD_SYNC_INCLUDE": "customers, prices",
        "SYNCD_USAGE_METERS": "api_calls=api_requests,seats=seat_count",
        "DATABASE_URL": "postgresql://u:pw@db:5433/x",
        "STRIPE_API_KEY": TEST,
    }
    cfg = load_config(None, env)
    assert cfg.events.poll_interval == 2.5
    assert cfg.sync.slices == 4
    assert cfg.sync.resync_on_empty is False
    assert cfg.sync.include == ["customers", "prices"]
    assert cfg.usage.meters == {"api_calls": "api_requests", "seats": "seat_count"}
    assert cfg.database.url == "postgresql://u:pw@db:5433/x"
    assert cfg.stripe.api_key == TEST
    # SYNCD_* wins over the conventional name.
    cfg = load_config(None, {**env, "SYNCD_DATABASE_URL": "postgresql://other/db"})
    assert cfg.database.url == "postgresql://other/db"


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(TEST + "\n")
    (tmp_path / "dsn").write_text("postgresql://a:secret@h/d\n")
    path = write(tmp_path, f'[stripe]\napi_key_file = "{tmp_path / "key"}"\n')
    cfg = load_config(path, {"SYNCD_DATABASE_URL_FILE": str(tmp_path / "dsn")})
    assert cfg.stripe.api_key == TEST
    assert cfg.database.url == "postgresql://a:secret@h/d"
    with pytest.raises(ConfigError, match=r"^stripe.api_key_file: cannot read"):
        load_config(write(tmp_path, '[stripe]\napi_key_file = "/nonexistent/key"\n'), {})


def test_rate_limit_defaults_from_mode() -> None:
    # stripe.rate_share (0.5) of Stripe's limit: 25/s in test mode, 100/s live.
    assert load_config(None, {}).rate_limit == 12.5
    assert load_config(None, {"SYNCD_STRIPE_MODE": "live"}).rate_limit == 50
    assert load_config(None, {"SYNCD_STRIPE_RATE_LIMIT": "7"}).rate_limit == 7
    assert load_config(None, {"SYNCD_STRIPE_RATE_SHARE": "1"}).rate_limit == 25


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[database]\nurll = 'x'\n", {}, r"^database.urll: unknown key"),
        ("[databse]\n", {}, r"^databse: unknown section"),
        (
            "[events]\npoll_interval = 'fast'\n",
            {},
            r"^events.poll_interval: expected a number, got str",
        ),
        ("[sync]\nslices = 0\n", {}, r"^sync.slices: 0 is below the minimum 1"),
        ("[events]\napply_mode = 'guess'\n", {}, r"^events.apply_mode: 'guess' is not one of"),
        (
            f"[stripe]\napi_key = '{LIVE}'\n",
            {},
            r"^stripe.api_key: a live-mode key while stripe.mode = 'test'",
        ),
        (f"[stripe]\nmode = 'live'\napi_key = '{TEST}'\n", {}, r"^stripe.api_key: a test-mode key"),
        ("[database]\nurl = 'mysql://x/y'\n", {}, r"^database.url: malformed DSN"),
        (
            "[database]\nurl = 'postgresql://u:pw@h:notaport/d'\n",
            {},
            r"^database.url: malformed DSN",
        ),
        (
            "",
            {"SYNCD_SYNC_SLICES": "many"},
            r"^sync.slices: SYNCD_SYNC_SLICES='many' is not a number",
        ),
        ("", {"SYNCD_LOG_LEVEL": "loud"}, r"^log.level: 'loud' is not one of"),
        ("[usage]\ncron = '* *'\n", {}, r"^usage.cron: '\* \*' must have 5 fields"),
        ("[sync]\nwriters = 7\n", {}, r"^sync.writers: 7 leaves too few of database.pool_max_size"),
        ("[verify]\ninterval = -1\n", {}, r"^verify.interval: -1.0 is below the minimum 0"),
        ("[verify]\ninterval = 'daily'\n", {}, r"^verify.interval: expected a number, got str"),
        ("[verify]\nsample = 2.5\n", {}, r"^verify.sample: expected an integer, got float"),
        ("[verify]\nrepair = 'yes'\n", {}, r"^verify.repair: expected a boolean, got str"),
    ],
)
def test_bad_config_names_the_key(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), env)


def test_malformed_dsn_message_hides_the_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"DATABASE_URL": "postgresql://u:hunter2@h:99999/d"})
    assert "hunter2" not in str(info.value)


# The CLI turns each of these into one line on stderr and exit code 2.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "config file"),
        ("[database\nurl = 1", "invalid TOML"),
        ("[database]\nurll = 'x'\n", "database.urll: unknown key"),
        ("[sync]\nslices = 'eight'\n", "sync.slices: expected an integer, got str"),
        (f"[stripe]\napi_key = '{LIVE}'\n", "stripe.api_key: a live-mode key"),
        ("[database]\nurl = 'not a dsn'\n", "database.url: malformed DSN"),
    ],
)
def test_cli_bad_config_exits_2_with_one_line(
    tmp_path: Path, text: str | None, expected: str
) -> None:
    path = tmp_path / "config.toml"
    if text is not None:
        path.write_text(text)
    result = syncd_cli("--config", str(path), "config")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert LIVE not in result.stderr and LIVE not in result.stdout


def test_cli_toml_error_reports_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[database]\nmirror_schema = 'a'\nstate_schema = \n")
    result = syncd_cli("--config", str(path), "config")
    assert result.returncode == 2
    assert "line 3" in result.stderr


def test_cli_missing_config_from_env_exits_2(tmp_path: Path) -> None:
    result = syncd_cli("config", env={"SYNCD_CONFIG": str(tmp_path / "nope.toml")}, cwd=tmp_path)
    assert result.returncode == 2
    assert "nope.toml: not found" in result.stderr


def test_cli_config_prints_effective_values_redacted(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "postgresql://app:hunter2@db.internal:5432/app", "STRIPE_API_KEY": TEST}
    result = syncd_cli("config", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    assert TEST not in result.stdout
    assert "postgresql://app:***@db.internal:5432/app" in result.stdout
    assert "sk_test_***" + TEST[-4:] in result.stdout
    assert tomllib.loads(result.stdout)["database"]["mirror_schema"] == "stripe"
