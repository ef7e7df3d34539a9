"""Only `db` runs SQL (docs/architecture.md, invariant 4). Every other module of syncd gets a
`db.Tx` or `db.Dedicated`, whose methods take query names and translate every driver error; so
outside db.py (and pgserver.py, which drives a throwaway server, and the emulator) no module
imports asyncpg, reaches a driver connection (`Database.run`, `Database.connection`, the pool,
a wrapper's `_conn`), handles SQL text (`Database.statement`, `Database.queries`), or runs
anything but a named query: `execute`/`fetch`/`fetchrow`/`fetchval` take a string literal that
names a query of sql/queries (or a statement `db` composes) first; `executemany`, `copy_*` and
`cursor` are the driver's alone. Read from the source with `ast`; no PostgreSQL needed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from syncd.config import DatabaseConfig
from syncd.db import COMPOSED, Database, _query_files
from syncd.errors import DatabaseError
from syncd.registry import RESOURCES
from tests.conftest import ROOT

PACKAGE = ROOT / "syncd"
ALLOWED = ("syncd/db.py", "syncd/pgserver.py", "syncd/emulator/")
NAMED = {"execute", "fetch", "fetchrow", "fetchval"}
DRIVER_ONLY = {"executemany", "cursor", "copy_from_table", "copy_from_query", "copy_to_table"}
RAW = {"connection", "pool", "queries", "statement", "_conn"}
QUERY_NAMES = set(_query_files()) | set(COMPOSED)


def _receiver(node: ast.expr) -> str:
    return ast.unparse(node)


def violations(source: str, where: str, names: set[str] = QUERY_NAMES) -> list[str]:
    """Each place in `source` that goes around the database layer, as `where:line: what`."""
    found: list[str] = []

    def say(node: ast.AST, what: str) -> None:
        found.append(f"{where}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "asyncpg":
                    say(node, "imports asyncpg")
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] == "asyncpg":
                say(node, "imports from asyncpg")
        elif isinstance(node, ast.Attribute):
            owner = _receiver(node.value)
            if node.attr in RAW and owner != "self":
                say(node, f"reaches past the database layer: {owner}.{node.attr}")
            if node.attr == "run" and (owner == "db" or owner.endswith(".db")):
                say(node, f"uses a driver connection: {owner}.run (use transact or session)")
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        method, owner = node.func.attr, _receiver(node.func.value)
        if owner == "self":
            continue  # a class's own method (a Stripe GET, the events cursor), not a connection's
        if method in DRIVER_ONLY or method.startswith("copy_"):
            say(node, f"calls the driver's {owner}.{method}")
        elif method in NAMED:
            first = node.args[0] if node.args else None
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                say(node, f"{owner}.{method} without a query name (a string literal) first")
            elif first.value not in names:
                say(node, f"{owner}.{method}: no query named {first.value!r} in sql/queries")
    return found


def sources() -> dict[str, Path]:
    found = {p.relative_to(ROOT).as_posix(): p for p in sorted(PACKAGE.rglob("*.py"))}
    return {name: path for name, path in found.items() if not name.startswith(ALLOWED)}


def test_only_db_runs_sql() -> None:
    found = [
        line
        for name, path in sources().items()
        for line in violations(path.read_text(encoding="utf-8"), name)
    ]
    assert not found, "SQL outside syncd/db.py:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "import asyncpg",
        "import asyncpg.exceptions as e",
        "from asyncpg import Record",
        "async def f(db):\n    await db.run(lambda c: c.execute('x'))",
        "async def f(self):\n    await self.db.run(go, transaction=False)",
        "async def f(db):\n    async with db.connection() as c: pass",
        "async def f(db):\n    await db.pool.acquire()",
        "def f(db):\n    return db.statement('upsert_objects', 'customers')",
        "def f(self):\n    return self.db.queries['notify_changes']",
        "async def f(tx):\n    await tx._conn.execute('SELECT 1')",
        "async def f(conn):\n    await conn.execute('SELECT 1')",
        "async def f(conn, sql):\n    await conn.fetch(sql)",
        "async def f(conn):\n    await conn.fetchval(f'{q}')",
        "async def f(self):\n    await self.db.fetchrow('no_such_query')",
        "async def f(conn):\n    await conn.copy_records_to_table('t', records=[])",
        "async def f(conn):\n    await conn.executemany('notify_changes', [])",
    ],
)
def test_the_rule_sees_each_way_around_the_layer(source: str) -> None:
    assert violations(source, "m.py")


def test_the_rule_lets_named_queries_through() -> None:
    source = (
        "async def f(self, conn, db):\n"
        "    await conn.fetch('upsert_objects', b'[]', '', None, 1.0, table='customers')\n"
        "    await db.execute('notify_changes', 'c', 'p')\n"
        "    await self.db.transact(go)\n"
        "    async with self.db.session() as conn:\n"
        "        await conn.fetchval('relation_exists', 't')\n"
        "    await self.fetch(path, params)  # the class's own (a Stripe GET)\n"
        "    return self._conn\n"
    )
    assert violations(source, "m.py") == []


def offline_db() -> Database:
    """A Database without a pool: enough to render statements."""
    cfg = DatabaseConfig(url="postgresql://syncd@localhost/syncd")
    return Database(None, cfg, cfg.url)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", COMPOSED)
def test_composed_statements_are_rendered_whole_for_every_table(name: str) -> None:
    """Nothing left to fill in; the plain insert has no conflict clause, the rest have one;
    customers' own column spliced in (tests/test_db.py PREPAREs them on a migrated database)."""
    db = offline_db()
    for res in RESOURCES:
        sql = db.statement(name, res.table)
        assert sql is db.statement(name, res.table)  # cached
        for token in ("{table}", "{extra_", "{upsert}", "{mirror}", "{state}"):
            assert token not in sql, (name, res.table, token)
        assert ("ON CONFLICT" in sql) is ("insert" not in name), (name, res.table)
        assert ("user_id" in sql) is (res.table == "customers"), (name, res.table)


def test_the_wrapper_takes_names_not_sql() -> None:
    db = offline_db()
    with pytest.raises(DatabaseError, match="no SQL query named"):
        db.statement("SELECT 1")
    with pytest.raises(DatabaseError, match="needs a mirror table"):
        db.statement("upsert_objects")
    with pytest.raises(DatabaseError, match="needs a mirror table"):
        db.statement("versions_of", 'customers"; DROP TABLE x; --')
