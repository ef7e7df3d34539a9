"""sql/schema.sql is the schema the migrations build today: regenerate it with `make schema`.

The session's migrated template database (a fresh copy of it) is dumped the way
scripts/dump_schema.py dumps it and compared with the file.
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path
from types import ModuleType

from syncd.pgserver import find_bindir
from tests.conftest import ROOT


def _dump_schema() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "dump_schema", ROOT / "scripts" / "dump_schema.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_schema_file_matches_the_migrations(db_url: str) -> None:
    dump_schema = _dump_schema()
    bindir = find_bindir()
    assert bindir is not None, "pg_dump not found (install the PostgreSQL server binaries)"
    expected = dump_schema.pg_dump(db_url, bindir)
    path: Path = dump_schema.SCHEMA_FILE
    assert path.exists(), f"{path.relative_to(ROOT)} is missing: run `make schema`"
    actual = path.read_text(encoding="utf-8")
    if actual != expected:
        diff = difflib.unified_diff(
            actual.splitlines(), expected.splitlines(), "sql/schema.sql", "migrations", lineterm=""
        )
        shown = "\n".join(list(diff)[:80])
        raise AssertionError(f"sql/schema.sql is out of date: run `make schema`\n{shown}")
