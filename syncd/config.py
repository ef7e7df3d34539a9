"""Configuration: `config.toml` plus `SYNCD_<SECTION>_<KEY>` environment overrides.

Loaded once at start into frozen dataclasses and passed down; nothing reads configuration at
import time. Every problem raises `ConfigError` with one line naming the key (exit code 2).
The sections themselves (dataclasses, defaults, documentation, bounds) are in `config_sections`
and importable from here; this module reads, checks and prints them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from syncd.config_sections import (
    PINNED_API_VERSION,
    SECTIONS,
    STRIPE_API_BASE,
    STRIPE_METER_EVENTS_BASE,
    AppConfig,
    Config,
    DaemonConfig,
    DatabaseConfig,
    EventsConfig,
    HistoryConfig,
    HttpConfig,
    LogConfig,
    StripeConfig,
    SyncConfig,
    UsageConfig,
)
from syncd.errors import ConfigError
from syncd.redaction import redact_dsn, redact_key
from syncd.registry import BY_TABLE

__all__ = [
    "NON_CONFIG_ENV",
    "PINNED_API_VERSION",
    "SECTIONS",
    "STRIPE_API_BASE",
    "STRIPE_METER_EVENTS_BASE",
    "AppConfig",
    "Config",
    "DaemonConfig",
    "DatabaseConfig",
    "EventsConfig",
    "HistoryConfig",
    "HttpConfig",
    "LogConfig",
    "StripeConfig",
    "SyncConfig",
    "UsageConfig",
    "default_config_path",
    "env_names",
    "example_toml",
    "load_config",
    "redacted",
    "to_toml",
]

# Conventional variables honoured besides SYNCD_<SECTION>_<KEY> (which wins over them).
_CONVENTIONAL_ENV = {("database", "url"): "DATABASE_URL", ("stripe", "api_key"): "STRIPE_API_KEY"}
_FILE_KEYS = {
    ("database", "url"): "url_file",
    ("stripe", "api_key"): "api_key_file",
    ("usage", "api_key"): "api_key_file",
}
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_ENV_PREFIX = "SYNCD_"
# SYNCD_* variables that are not SYNCD_<SECTION>_<KEY> settings; any other SYNCD_* variable is a
# typo or a removed key and stops syncd (exit 2), naming the closest valid one.
NON_CONFIG_ENV: Mapping[str, str] = types.MappingProxyType(
    {
        "SYNCD_CONFIG": "the configuration file to read (like --config)",
        "SYNCD_TEST_DATABASE_URL": "the PostgreSQL server of the tests and bench/usage_bench.py",
        "SYNCD_BENCH_DATABASE_URL": "the PostgreSQL server of bench/events_bench.py",
        "SYNCD_CONVERGENCE_SCENARIOS": "how many scenarios tests/test_convergence.py runs",
        "SYNCD_CONVERGENCE_SEED": "the first seed of tests/test_convergence.py",
    }
)


def env_names() -> dict[str, str]:
    """Every SYNCD_<SECTION>_<KEY> variable, with the key it sets."""
    return {
        f"{_ENV_PREFIX}{section.upper()}_{f.name.upper()}": f"{section}.{f.name}"
        for section, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
    }


def default_config_path(env: Mapping[str, str]) -> tuple[Path | None, bool]:
    """The config file to read and whether the user named it (a named file must exist)."""
    if env.get("SYNCD_CONFIG"):
        return Path(env["SYNCD_CONFIG"]), True
    local = Path("config.toml")
    return (local, False) if local.is_file() else (None, False)


def load_config(
    path: Path | None = None, env: Mapping[str, str] | None = None, *, explicit: bool = True
) -> Config:
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    source = "defaults"
    _check_env_names(env)
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if explicit:
                raise ConfigError(f"config file {path}: not found") from None
            text = ""
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot read: {exc.strerror}") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
        source = str(path)
    for name in raw:
        if name not in SECTIONS:
            raise ConfigError(f"{name}: unknown section (known: {', '.join(SECTIONS)})")
        if not isinstance(raw[name], dict):
            raise ConfigError(f"{name}: must be a table ([{name}])")
    sections = {
        name: _build_section(name, cls, raw.get(name, {}), env) for name, cls in SECTIONS.items()
    }
    cfg = Config(**sections, source=source)
    _validate(cfg)
    return cfg


def _check_env_names(env: Mapping[str, str]) -> None:
    """A SYNCD_* variable that sets nothing is a mistake: name it and the closest valid one."""
    valid = [*env_names(), *NON_CONFIG_ENV]
    for name in sorted(env):
        if not name.upper().startswith(_ENV_PREFIX) or name in valid:
            continue
        close = difflib.get_close_matches(name.upper(), valid, n=1, cutoff=0.7)
        hint = (
            f"did you mean {close[0]}?"
            if close
            else f"settings are {_ENV_PREFIX}<SECTION>_<KEY>, see config.toml"
        )
        raise ConfigError(f"{name}: unknown environment variable ({hint})")


def _build_section(
    section: str, cls: type[Any], values: dict[str, Any], env: Mapping[str, str]
) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"{section}.{key}: unknown key (known: {', '.join(known)})")
    kwargs: dict[str, Any] = {}
    for name, f in known.items():
        key = f"{section}.{name}"
        hint = hints[name]
        value: Any = values.get(name, dataclasses.MISSING)
        conventional = _CONVENTIONAL_ENV.get((section, name))
        if conventional and env.get(conventional):
            value = env[conventional]
        env_name = f"SYNCD_{section.upper()}_{name.upper()}"
        if env_name in env:
            value = _parse_env(key, env_name, env[env_name], hint)
        if value is dataclasses.MISSING:
            continue
        kwargs[name] = _check(key, value, hint, f.metadata)
    obj = cls(**kwargs)
    for (sec, name), file_key in _FILE_KEYS.items():
        if sec == section and getattr(obj, file_key):
            obj = dataclasses.replace(
                obj, **{name: _read_secret_file(f"{section}.{file_key}", getattr(obj, file_key))}
            )
    return obj


def _read_secret_file(key: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None


def _parse_env(key: str, env_name: str, text: str, hint: Any) -> Any:
    if hint is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{key}: {env_name}={text!r} is not a boolean (true/false)")
    if hint is int or hint is float:
        try:
            number = hint(text)
        except ValueError:
            raise ConfigError(f"{key}: {env_name}={text!r} is not a number") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}: {env_name}={text!r} is not a finite number")
        return number
    origin = typing.get_origin(hint)
    if origin is list:
        return [part.strip() for part in text.split(",") if part.strip()]
    if origin is dict:
        pairs: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, val = part.partition("=")
            if not sep:
                raise ConfigError(f"{key}: {env_name} must be comma-separated name=value pairs")
            pairs[name.strip()] = val.strip()
        return pairs
    return text


def _type_name(hint: Any) -> str:
    if isinstance(hint, types.GenericAlias):
        return "a list of strings" if typing.get_origin(hint) is list else "a table of strings"
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}[hint]


def _check(key: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(hint)
    ok: bool
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):
            # TOML has nan and inf, and every comparison with nan is false: bounds miss it.
            raise ConfigError(f"{key}: {value} is not a finite number")
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif origin is list:
        if isinstance(value, str):  # `accounts = "all"`, `include = "a, b"`: as in the env
            value = [part.strip() for part in value.split(",") if part.strip()]
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif origin is dict:
        ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise ConfigError(
            f"{key}: expected {_type_name(hint)}, got {type(value).__name__} {_show(value, meta)}"
        )
    lo, hi, choices = meta.get("min"), meta.get("max"), meta.get("choices")
    if lo is not None and value < lo:
        raise ConfigError(f"{key}: {value} is below the minimum {lo:g}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key}: {value} is above the maximum {hi:g}")
    if choices and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")
    return value


def _show(value: Any, meta: Mapping[str, Any]) -> str:
    return "(redacted)" if meta.get("secret") else repr(value)


def _validate(cfg: Config) -> None:
    _validate_dsn(cfg.database.url)
    for key in ("mirror_schema", "state_schema", "app_schema", "history_schema"):
        name = getattr(cfg.database, key)
        if not _IDENT.match(name):
            raise ConfigError(f"database.{key}: {name!r} is not a plain lower-case SQL identifier")
    schemas = [cfg.database.mirror_schema, cfg.database.state_schema, cfg.database.app_schema]
    if len(set(schemas)) != 3:
        raise ConfigError("database.mirror_schema, state_schema and app_schema must differ")
    if cfg.database.history_schema in schemas:
        raise ConfigError("database.history_schema: must differ from the other schemas")
    for key, names in (
        ("sync.include", cfg.sync.include),
        ("sync.exclude", cfg.sync.exclude),
        ("history.tables", cfg.history.tables),
    ):
        unknown = [name for name in names if name not in BY_TABLE]
        if unknown:
            raise ConfigError(
                f"{key}: unknown table(s) {', '.join(map(repr, unknown))}"
                f"{_suggest(unknown[0], BY_TABLE)} (known: {', '.join(BY_TABLE)})"
            )
    if cfg.database.pool_min_size > cfg.database.pool_max_size:
        raise ConfigError("database.pool_min_size: larger than database.pool_max_size")
    # Each resync writer holds a pooled connection for the whole listing; the event stream, the
    # usage flush and the resync's own bookkeeping need the rest.
    if cfg.sync.writers > cfg.database.pool_max_size - 2:
        raise ConfigError(
            f"sync.writers: {cfg.sync.writers} leaves too few of database.pool_max_size"
            f" ({cfg.database.pool_max_size}) connections; at most pool_max_size - 2"
        )
    _validate_key("stripe.api_key", cfg.stripe.api_key, cfg.stripe.mode)
    _validate_key("usage.api_key", cfg.usage.api_key, cfg.stripe.mode)
    for key in ("api_base", "meter_events_base"):
        url = getattr(cfg.stripe, key)
        if url and urlsplit(url).scheme not in ("http", "https"):
            raise ConfigError(f"stripe.{key}: {url!r} is not an http(s) address")
    if cfg.stripe.api_version and not re.match(
        r"^\d{4}-\d{2}-\d{2}(\.\w+)?$", cfg.stripe.api_version
    ):
        raise ConfigError(
            f"stripe.api_version: {cfg.stripe.api_version!r} is not a Stripe API version"
        )
    if cfg.stripe.account and not cfg.stripe.account.startswith("acct_"):
        raise ConfigError(f"stripe.account: {cfg.stripe.account!r} is not an account id (acct_...)")
    _validate_accounts(cfg)
    if cfg.events.warn_cursor_age_days >= cfg.events.max_cursor_age_days:
        raise ConfigError("events.warn_cursor_age_days: must be below events.max_cursor_age_days")
    if cfg.events.notify_channel and not _IDENT.match(cfg.events.notify_channel):
        raise ConfigError(
            f"events.notify_channel: {cfg.events.notify_channel!r} is not a plain identifier"
        )
    if cfg.usage.cron and len(cfg.usage.cron.split()) != 5:
        raise ConfigError(
            f"usage.cron: {cfg.usage.cron!r} must have 5 fields (minute hour day month weekday)"
        )
    if cfg.usage.cron:
        _validate_cron(cfg.usage.cron)
    _host, sep, port = cfg.http.bind.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"http.bind: {cfg.http.bind!r} is not host:port")


def _validate_accounts(cfg: Config) -> None:
    accounts = cfg.stripe.accounts
    if not accounts:
        return
    if cfg.stripe.account:
        raise ConfigError(
            "stripe.accounts: set with stripe.account; use one (stripe.accounts lists them all)"
        )
    if "all" in accounts and len(accounts) > 1:
        raise ConfigError("stripe.accounts: 'all' takes no account ids beside it")
    for account in accounts:
        if account != "all" and not re.fullmatch(r"acct_[A-Za-z0-9]+", account):
            raise ConfigError(
                f"stripe.accounts: {account!r} is not an account id (acct_...) or 'all'"
            )
    if len(set(accounts)) != len(accounts):
        raise ConfigError("stripe.accounts: an account is listed twice")
    if cfg.verify.interval > 0:
        raise ConfigError(
            "verify.interval: not with stripe.accounts yet (verify compares one account)"
        )


def _suggest(name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f", did you mean {close[0]!r}?" if close else ""


def _validate_cron(expr: str) -> None:
    from apscheduler.triggers.cron import CronTrigger  # the scheduler that will run it

    try:
        CronTrigger.from_crontab(expr, timezone="UTC")
    except ValueError as exc:
        raise ConfigError(f"usage.cron: {expr!r} is not valid: {exc}") from None


def _validate_dsn(dsn: str) -> None:
    problem = None
    try:
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgres", "postgresql"):
            problem = "must start with postgresql://"
        else:
            _ = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        problem = str(exc)
    if problem:
        raise ConfigError(f"database.url: malformed DSN {redact_dsn(dsn)!r}: {problem}")


def _validate_key(key: str, value: str, mode: str) -> None:
    if not value:
        return
    if not re.match(r"^(sk|rk)_(test|live)_[0-9A-Za-z]+$", value):
        raise ConfigError(f"{key}: not a Stripe secret or restricted key (sk_... or rk_...)")
    key_mode = "live" if "_live_" in value[:8] else "test"
    if key_mode != mode:
        raise ConfigError(f"{key}: a {key_mode}-mode key while stripe.mode = {mode!r}")


def redacted(cfg: Config) -> dict[str, dict[str, Any]]:
    """The effective configuration as plain data, every secret redacted."""
    out: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        section = getattr(cfg, name)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if f.metadata.get("secret") and value:
                value = redact_dsn(value) if name == "database" else redact_key(value)
            values[f.name] = value
        out[name] = values
    return out


def to_toml(data: Mapping[str, Mapping[str, Any]]) -> str:
    """Render section -> key -> value as TOML (the value types config supports)."""
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        tables = {k: v for k, v in values.items() if isinstance(v, dict)}
        for key, value in values.items():
            if key not in tables:
                lines.append(f"{key} = {_toml_value(value)}")
        for key, table in tables.items():
            lines.append(f"\n[{section}.{key}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def example_toml() -> str:
    """The documented example (`config.toml`): every key, one comment each, its default shown."""
    defaults = redacted(Config())
    lines = [
        "# syncd configuration. Every key is shown with its default;",
        "# delete what you do not change.",
        "# Any key can be overridden by SYNCD_<SECTION>_<KEY> (e.g. SYNCD_EVENTS_POLL_INTERVAL=2);",
        "# DATABASE_URL and STRIPE_API_KEY work too. Other SYNCD_* variables are refused, except:",
        *(f"#   {name}: {doc}" for name, doc in NON_CONFIG_ENV.items()),
        "# Print the effective values with `syncd config`.",
        "",
    ]
    for section, cls in SECTIONS.items():
        lines.append(f"[{section}]")
        tables: list[tuple[str, str, dict[str, str]]] = []
        for f in dataclasses.fields(cls):
            value = defaults[section][f.name]
            if isinstance(value, dict):
                tables.append((f.name, f.metadata["doc"], value))
                continue
            lines.append(f"# {f.metadata['doc']}")
            lines.append(f"{f.name} = {_toml_value(value)}")
        for name, doc, table in tables:
            lines.append(f"# {doc}")
            lines.append(f"[{section}.{name}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
        lines.append("")
    return "\n".join(lines)
