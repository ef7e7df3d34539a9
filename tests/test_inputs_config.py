"""Bad configuration input through the real CLI: non-finite numbers, unknown tables, unknown
SYNCD_* variables. Each stops `syncd` with one line naming the key (or variable) and exit 2."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from pathlib import Path

import pytest

from syncd.config import NON_CONFIG_ENV, SECTIONS, StripeConfig, env_names, load_config
from syncd.errors import ConfigError
from syncd.registry import BY_TABLE
from tests.conftest import ROOT, syncd_cli


def one_line_exit_2(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def config_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


FLOAT_KEYS = [
    f"{section}.{f.name}"
    for section, cls in SECTIONS.items()
    for f in dataclasses.fields(cls)
    if f.type in (float, "float")
]


@pytest.mark.parametrize("value", ["nan", "inf", "+inf", "-inf"])
def test_toml_nan_and_infinity_are_refused_naming_the_key(tmp_path: Path, value: str) -> None:
    # reconcile_interval has no upper bound and nan compares false with every bound: both got in.
    for key in ("sync.reconcile_interval", "events.poll_interval"):
        section, name = key.split(".")
        path = config_file(tmp_path, f"[{section}]\n{name} = {value}\n")
        line = one_line_exit_2(syncd_cli("--config", path, "config"))
        assert line.startswith(f"syncd: error: {key}: "), line
        assert "not a finite number" in line, line


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "Infinity", "-inf", "1e999"])
def test_env_nan_and_infinity_are_refused_naming_the_variable(tmp_path: Path, value: str) -> None:
    env = {"SYNCD_SYNC_RECONCILE_INTERVAL": value}
    line = one_line_exit_2(syncd_cli("config", env=env, cwd=tmp_path))
    assert "sync.reconcile_interval: SYNCD_SYNC_RECONCILE_INTERVAL=" in line, line
    assert "not a finite number" in line, line


def test_every_float_key_refuses_nan() -> None:
    assert "events.poll_interval" in FLOAT_KEYS and len(FLOAT_KEYS) > 10
    for key in FLOAT_KEYS:
        section, name = key.split(".")
        variable = f"SYNCD_{section.upper()}_{name.upper()}"
        with pytest.raises(
            ConfigError, match=rf"^{re.escape(key)}: {variable}='nan' is not a finite"
        ):
            load_config(None, {variable: "nan"})


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        (
            "[sync]\ninclude = ['customers', 'custmers']\n",
            {},
            "sync.include: unknown table(s) 'custmers'",
        ),
        (
            "[sync]\nexclude = ['invoice_lines']\n",
            {},
            "sync.exclude: unknown table(s) 'invoice_lines'",
        ),
        ("", {"SYNCD_SYNC_INCLUDE": "prices,product"}, "sync.include: unknown table(s) 'product'"),
    ],
)
def test_unknown_tables_are_refused_listing_the_valid_ones(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    line = one_line_exit_2(syncd_cli("--config", config_file(tmp_path, text), "config", env=env))
    assert expected in line, line
    assert "did you mean" in line, line
    assert "known: " + ", ".join(BY_TABLE) in line, line


def test_known_tables_are_accepted(tmp_path: Path) -> None:
    path = config_file(tmp_path, "[sync]\ninclude = ['customers', 'invoices']\n")
    result = syncd_cli("--config", path, "config")
    assert result.returncode == 0, result.stderr


def test_config_and_docs_name_only_tables_that_exist() -> None:
    """Table names in config.toml and the docs (sync.include examples, --type, --include,
    stripe.<table>) are all mirrored tables."""
    not_tables = {f.name for f in dataclasses.fields(StripeConfig)} | {"com", "log"}  # stripe.log
    patterns = [
        re.compile(r"--type[ =]([a-z_]+)"),
        re.compile(r"--include[ =]([a-z_,]+)"),
        re.compile(r"(?:include|exclude)\s*=\s*\[([^\]]*)\]"),
        re.compile(r"SYNCD_SYNC_(?:INCLUDE|EXCLUDE)=([a-z_, ]+)"),
        re.compile(r"tables? (?:to mirror|not to mirror) \(e\.g\. ([a-z_, ]+)\)"),
        re.compile(r"\bstripe\.([a-z_]+)\b"),
    ]
    files = [ROOT / "config.toml", ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    seen: set[str] = set()
    wrong: list[str] = []
    for path in files:
        text = path.read_text()
        for pattern in patterns:
            for match in pattern.finditer(text):
                for name in re.findall(r"[a-z_]+", match.group(1)):
                    if name in not_tables:
                        continue
                    seen.add(name)
                    if name not in BY_TABLE:
                        wrong.append(f"{path.relative_to(ROOT)}: {name}")
    assert wrong == []
    assert {"customers", "subscription_items"} <= seen  # the scan finds what is there


def test_unknown_syncd_variable_names_the_closest_valid_one(tmp_path: Path) -> None:
    env = {"SYNCD_EVENTS_POLL_INTERVALL": "2"}
    line = one_line_exit_2(syncd_cli("config", env=env, cwd=tmp_path))
    assert line == (
        "syncd: error: SYNCD_EVENTS_POLL_INTERVALL: unknown environment variable"
        " (did you mean SYNCD_EVENTS_POLL_INTERVAL?)"
    )
    line = one_line_exit_2(syncd_cli("config", env={"SYNCD_STRIPE_KEY": "sk_x"}, cwd=tmp_path))
    assert (
        "SYNCD_STRIPE_KEY: unknown environment variable (did you mean SYNCD_STRIPE_API_KEY?)"
        in (line)
    )
    assert "sk_x" not in line  # the value is never shown (it may be a secret)
    line = one_line_exit_2(syncd_cli("config", env={"SYNCD_ZZZ": "1"}, cwd=tmp_path))
    assert "SYNCD_ZZZ: unknown environment variable (settings are SYNCD_<SECTION>_<KEY>" in line


def syncd_names_in_repository() -> set[str]:
    """SYNCD_* names in the code, docs, tests, benchmarks, Dockerfile and compose file."""
    skip = {".venv", ".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
    kinds = {".py", ".md", ".toml", ".yml", ".yaml", ".cfg", ".sh", ""}
    used: set[str] = set()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in files:
            file = Path(folder, name)
            if file.suffix not in kinds or file == Path(__file__).resolve():  # misspelt above
                continue
            text = file.read_text(encoding="utf-8", errors="replace")
            used |= set(re.findall(r"SYNCD_[A-Z0-9_]*[A-Z0-9]", text))
    return used


def test_known_and_documented_non_config_variables_are_accepted(tmp_path: Path) -> None:
    path = config_file(tmp_path, "")
    env = {name: "1" for name in NON_CONFIG_ENV if name != "SYNCD_CONFIG"}
    env |= {"SYNCD_CONFIG": path, "SYNCD_EVENTS_POLL_INTERVAL": "2", "SYNCD_LOG_FORMAT": "json"}
    result = syncd_cli("config", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # Every SYNCD_* name the repository uses is a setting or one of the documented exceptions.
    used = syncd_names_in_repository()
    assert {"SYNCD_CONFIG", "SYNCD_TEST_DATABASE_URL", "SYNCD_LOG_FORMAT"} <= used
    assert used - set(env_names()) - set(NON_CONFIG_ENV) == set()
    shipped = (ROOT / "config.toml").read_text()
    assert all(name in shipped for name in NON_CONFIG_ENV)
