"""Messages name the database syncd really talks to, also when the DSN gives the host and port
as query parameters (a Unix socket directory, or a host name), and never show the password."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from syncd.db import describe_target
from syncd.pgserver import free_port
from tests.conftest import PgServer, syncd_cli


def cli_env(dsn: str) -> dict[str, str]:
    # PGHOST/PGPORT would stand in for a DSN without a host: keep the harness's out.
    return {"DATABASE_URL": dsn, "SYNCD_DATABASE_CONNECT_TIMEOUT": "2", "PGHOST": "", "PGPORT": ""}


def test_unreachable_host_and_port_from_query_parameters(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    dsn = f"postgresql://app:hunter2@/appdb?host=127.0.0.1&port={port}&password=hunter2"
    for command in ("migrate", "status"):
        result = syncd_cli(command, env=cli_env(dsn), cwd=tmp_path)
        assert result.returncode != 0
        assert f"cannot reach PostgreSQL at 127.0.0.1:{port}/appdb" in result.stderr, result.stderr
        assert "5432" not in result.stderr and "localhost" not in result.stderr
        assert "hunter2" not in result.stderr + result.stdout


def test_unreachable_unix_socket_from_query_parameters(tmp_path: Path) -> None:
    sockets = tmp_path / "sockets"  # no server there
    dsn = f"postgresql:///appdb?host={sockets}&port=5433"
    result = syncd_cli("check", env=cli_env(dsn), cwd=tmp_path)
    assert result.returncode == 1
    expected = f"FAIL database: cannot reach PostgreSQL at {sockets}/.s.PGSQL.5433 (database appdb)"
    assert expected in result.stdout, result.stdout


def test_reachable_unix_socket_is_named(pg_server: PgServer, tmp_path: Path) -> None:
    if pg_server.local is None:
        pytest.skip("the test server is not a local cluster with a Unix socket")
    socket_dir, port = pg_server.local.dir, pg_server.local.port
    dsn = f"postgresql://postgres:hunter2@/postgres?host={socket_dir}&port={port}"
    with tempfile.TemporaryDirectory() as cwd:
        result = syncd_cli("status", "--json", env=cli_env(dsn), cwd=Path(cwd))
    assert "hunter2" not in result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["database"] == f"{socket_dir}/.s.PGSQL.{port} (database postgres)", report


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://u:pw@db.internal:5432/app", "db.internal:5432/app"),
        (
            "postgresql:///db?host=/var/run/postgresql&port=5433",
            "/var/run/postgresql/.s.PGSQL.5433 (database db)",
        ),
        ("postgresql://u:pw@/db?host=db.example&port=6543&password=pw", "db.example:6543/db"),
        (
            "postgresql://%2Fvar%2Frun%2Fpostgresql:5434/db",
            "/var/run/postgresql/.s.PGSQL.5434 (database db)",
        ),
        ("postgresql://h1:5432,h2:5433/db", "h1:5432, h2:5433/db"),
        ("postgresql://[::1]:6000/db", "[::1]:6000/db"),
        ("postgresql://h/db?port=7777", "h:5432/db"),  # asyncpg: the address's host wins
        ("postgresql://?host=/tmp&dbname=foo", "/tmp/.s.PGSQL.5432 (database foo)"),
        ("postgresql:///x", "localhost:5432/x"),
        ("postgresql://u@h:notaport/d", "the database"),
    ],
)
def test_describe_target_reads_the_dsn_as_asyncpg_does(
    dsn: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGHOST", raising=False)
    monkeypatch.delenv("PGPORT", raising=False)
    assert describe_target(dsn) == expected
