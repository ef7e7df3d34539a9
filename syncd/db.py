"""The database layer: the only module that runs SQL.

Queries live in `sql/queries/*.sql` and are loaded by name (`-- name: upsert_heartbeat`). The
schema names are configurable, so SQL text says `{mirror}`, `{state}`, `{app}` and `{history}`
and they are replaced with the quoted identifiers once, at load time; a query written for any
mirror table says `{table}`, and the statements made of several queries (the writer's upserts
with a table's own columns, the plain insert, the resync's page statement) are composed here too
(`Database.statement`). Other modules get a `Tx` (`Database.transact`, `Database.session`) or a
`Dedicated` connection, never a driver connection: their methods take query names, and asyncpg
errors are translated into syncd's error tree here and nowhere else (tests/test_sql_boundary.py
holds the line).
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeAlias, TypeVar
from urllib.parse import urlsplit

import asyncpg
import orjson

from syncd import metrics
from syncd.config import DatabaseConfig
from syncd.errors import (
    DatabaseConflict,
    DatabaseDataError,
    DatabaseDuplicate,
    DatabaseError,
    DatabaseRefused,
    DatabaseUnavailable,
)

T = TypeVar("T")
# A result row, for the annotations of modules that read them (they do not import asyncpg).
Row: TypeAlias = asyncpg.Record
_TOKEN = re.compile(r"\{(mirror|state|app|history)\}")
_PLAIN_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def sql_dir() -> Path:
    """`sql/` ships inside the wheel as `syncd/sql`; in a checkout it sits beside the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "migrations").is_dir():
            return candidate
    raise DatabaseError(f"SQL files not found next to {here} (broken installation)")


@dataclass(frozen=True)
class Schemas:
    mirror: str = "stripe"
    state: str = "syncd"
    app: str = "billing"
    history: str = "stripe_history"

    @classmethod
    def from_config(cls, cfg: DatabaseConfig) -> Schemas:
        return cls(cfg.mirror_schema, cfg.state_schema, cfg.app_schema, cfg.history_schema)

    def render(self, sql: str) -> str:
        names = {
            "mirror": self.mirror,
            "state": self.state,
            "app": self.app,
            "history": self.history,
        }
        return _TOKEN.sub(lambda m: '"' + names[m.group(1)] + '"', sql)


@cache
def _query_files() -> dict[str, str]:
    queries: dict[str, str] = {}
    for path in sorted((sql_dir() / "queries").glob("*.sql")):
        parts = _NAME.split(path.read_text(encoding="utf-8"))
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in queries:
                raise DatabaseError(f"query {name!r} defined twice ({path.name})")
            queries[name] = body.strip()
    return queries


class Queries:
    """Named SQL, rendered for one set of schema names."""

    def __init__(self, schemas: Schemas):
        self._rendered = {name: schemas.render(sql) for name, sql in _query_files().items()}

    def __getitem__(self, name: str) -> str:
        try:
            return self._rendered[name]
        except KeyError:
            raise DatabaseError(f"no SQL query named {name!r} in sql/queries") from None

    def get(self, name: str, default: str) -> str:
        return self._rendered.get(name, default)


def describe_target(dsn: str) -> str:
    """Where a DSN leads, for messages: `host:port/dbname`, or `<dir>/.s.PGSQL.<port> (database
    dbname)` for a Unix socket; never the user or the password. Read as asyncpg reads it: the
    hosts (and ports) of the address, else its `host` and `port` parameters, else PGHOST/PGPORT."""
    import os
    from urllib.parse import parse_qs, unquote

    def endpoint(spec: str, default_port: str) -> str:
        if spec.startswith("/"):  # a Unix socket directory (given as a parameter)
            host, port = spec, ""
        elif spec.startswith("["):  # [IPv6]:port
            host, _, port = spec.partition("]")
            host, port = f"{host}]", port.removeprefix(":")
        else:
            host, _, port = spec.partition(":")
            host = unquote(host)  # %2Fvar%2Frun%2Fpostgresql in the address is a socket too
        if port and not port.isdigit():
            raise ValueError(port)
        port = port or default_port
        return f"{host.rstrip('/')}/.s.PGSQL.{port}" if host.startswith("/") else f"{host}:{port}"

    try:
        parts = urlsplit(dsn)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        address = parts.netloc.rpartition("@")[2]
        if address:  # as asyncpg: the address wins, and then the port parameter is ignored
            specs, ports = address.split(","), os.environ.get("PGPORT", "")
        else:
            specs = (query.get("host") or os.environ.get("PGHOST") or "localhost").split(",")
            ports = query.get("port") or os.environ.get("PGPORT", "")
        port_list = (ports or "5432").split(",")
        targets = [
            endpoint(spec, port_list[min(n, len(port_list) - 1)]) for n, spec in enumerate(specs)
        ]
        database = unquote(parts.path.lstrip("/")) or query.get("dbname") or query.get("database")
    except ValueError:
        return "the database"
    where = ", ".join(targets)
    if not database:
        return where
    return f"{where} (database {database})" if where.startswith("/") else f"{where}/{database}"


# deadlock_detected, serialization_failure
_TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})


def translate(exc: BaseException, dsn: str) -> DatabaseError:
    """Map a driver or socket error to syncd's tree: unreachable servers are retryable. A
    server's refusal keeps its SQLSTATE and message on the error (`sqlstate`, `server_message`)."""
    error = _translated(exc, dsn)
    if isinstance(exc, asyncpg.PostgresError):
        error.sqlstate, error.server_message = exc.sqlstate, str(exc)
    return error


def _translated(exc: BaseException, dsn: str) -> DatabaseError:
    target = describe_target(dsn)
    if isinstance(exc, (OSError, socket.gaierror, TimeoutError, asyncpg.CannotConnectNowError)):
        return DatabaseUnavailable(
            f"cannot reach PostgreSQL at {target}: {exc.__class__.__name__}: {exc}"
        )
    if isinstance(
        exc,
        (asyncpg.InterfaceError, asyncpg.ConnectionDoesNotExistError, asyncpg.InternalClientError),
    ):
        # InternalClientError: a pooled connection left mid-protocol by a server that went away.
        return DatabaseUnavailable(f"connection to PostgreSQL at {target} lost: {exc}")
    if isinstance(
        exc, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidPasswordError
    ):
        return DatabaseError(f"PostgreSQL at {target} refused the login: {exc}")
    if isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.AdminShutdownError):
        return DatabaseUnavailable(f"PostgreSQL at {target} went away: {exc}")
    if isinstance(exc, asyncpg.PostgresError) and exc.sqlstate in _TRANSIENT_SQLSTATES:
        # Concurrent writers (resync, event stream, usage) can deadlock on overlapping rows;
        # PostgreSQL aborts one transaction whole, and every write is idempotent under the
        # version guard, so trying again later is correct.
        return DatabaseConflict(f"PostgreSQL error {exc.sqlstate}: {exc}")
    if isinstance(exc, asyncpg.UniqueViolationError):
        return DatabaseDuplicate(f"PostgreSQL error {exc.sqlstate}: {exc}")
    if isinstance(exc, asyncpg.PostgresError) and is_data_error(exc.sqlstate):
        return DatabaseDataError(f"PostgreSQL error {exc.sqlstate}: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        # Privileges, disk, a read-only server, timeouts, a dropped table: the server's state,
        # not the data. Retried (the event cursor does not move meanwhile) and shown in health.
        return DatabaseRefused(f"PostgreSQL error {exc.sqlstate}: {exc}")
    return DatabaseError(f"database error at {target}: {exc}")


def is_data_error(sqlstate: str | None) -> bool:
    """SQLSTATEs that blame the data written, not the server: data exceptions (class 22, e.g. a
    NUL character jsonb refuses), integrity constraints (class 23, e.g. a user's CHECK), and
    program limits (54000, e.g. a value too large for an index)."""
    if not sqlstate:
        return False
    return sqlstate[:2] in ("22", "23") or sqlstate == "54000"


_TRANSLATED = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb travels as text; orjson is much faster than the json module both ways.
    await conn.set_type_codec("jsonb", encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


_UNFIT = "syncd_unfit: "


def _count_unfit_values(_conn: Any, message: Any) -> None:
    """The mirror's typed columns send a notice for each value Stripe sent that does not fit
    them (stored as NULL, kept in `raw`; migration 0061): counted by the column's kind."""
    text = getattr(message, "message", "") or ""
    if text.startswith(_UNFIT):
        metrics.unfit_values.labels(text[len(_UNFIT) :]).inc()


def _dumps(value: Any) -> str:
    if isinstance(value, (str, bytes)):
        # Already-serialized JSON (a whole page of objects from Stripe) passes through as is.
        return value.decode() if isinstance(value, bytes) else value
    return orjson.dumps(value).decode()


# The statements composed of named queries (`Database.statement`), each for a mirror table: the
# upserts of whole objects with the table's own columns spliced in, the upsert without its
# conflict clause (`insert_objects`), the resync's page statement with either one embedded.
COMPOSED = (
    "upsert_objects",
    "upsert_objects_each",
    "insert_objects",
    "resync_write_page",
    "resync_insert_page",
)
_EXTRA_PARTS = ("columns", "values", "updates")
# Where the upsert of whole objects reads the source of its changes (`{source}`, recorded in
# `changed_by`): its own parameter when alone, the run id when the resync's page statement
# embeds it (the page's parameters $1-$16 are fixed). The plain insert alone (tests, tools;
# the resync embeds it) records none.
_SOURCES = {
    "upsert_objects": "$5::text",
    "insert_objects": "NULL::text",
    "resync_write_page": "('resync run ' || $7::bigint)",
    "resync_insert_page": "('resync run ' || $7::bigint)",
}


class Database:
    """A pool plus the named queries; every statement goes through here."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        cfg: DatabaseConfig,
        dsn: str,
        server_settings: Mapping[str, str] | None = None,
    ):
        self.pool = pool
        self.server_settings = dict(server_settings or {"application_name": "syncd"})
        self.cfg = cfg
        self.dsn = dsn
        self.schemas = Schemas.from_config(cfg)
        self.queries = Queries(self.schemas)
        self._statements: dict[tuple[str, str | None], str] = {}

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        cfg: DatabaseConfig,
        *,
        min_size: int | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> AsyncIterator[Database]:
        """A pool; `settings` become session settings (e.g. syncd.user_id_key for a trigger)."""
        server_settings = {
            "application_name": "syncd",
            "default_toast_compression": "lz4",
            **(settings or {}),
        }
        try:
            pool = await asyncpg.create_pool(
                cfg.url,
                min_size=min_size if min_size is not None else cfg.pool_min_size,
                max_size=cfg.pool_max_size,
                timeout=cfg.connect_timeout,
                init=_init_connection,
                server_settings=server_settings,
            )
        except _TRANSLATED as exc:
            raise translate(exc, cfg.url) from None
        try:
            yield cls(pool, cfg, cfg.url, server_settings)
        finally:
            await pool.close()

    async def dedicated_connection(self) -> Dedicated:
        """A connection outside the pool, for advisory locks and LISTEN (the pool would unlock)."""
        try:
            conn = await asyncpg.connect(
                self.dsn,
                timeout=self.cfg.connect_timeout,
                server_settings={"application_name": "syncd"},
            )
        except _TRANSLATED as exc:
            raise translate(exc, self.dsn) from None
        await _init_connection(conn)
        return Dedicated(self, conn)

    def statement(self, name: str, table: str | None = None) -> str:
        """The SQL of a named query, rendered for `table` (its `{table}`) when it is written for
        any mirror table; cached. The statements in `COMPOSED` are put together here and
        nowhere else:

        * `upsert_objects`, `upsert_objects_each`: the columns the table computes itself spliced
          in (`{extra_columns}`, `{extra_values}`, `{extra_updates}`: the queries
          `<table>_extra_*` of writer_<table>.sql; nothing for most tables);
        * `insert_objects`: `upsert_objects` without its conflict clause, for objects the table
          does not hold yet. The upsert's speculative insertion (probe, insert, confirm: an
          extra WAL record a row) and its update machinery cost about 13% of PostgreSQL's time
          per new row. Without them the statement fails with a unique violation
          (`DatabaseDuplicate`) if a row is there after all, having changed nothing: the caller
          then writes the same objects with the upsert;
        * `resync_write_page`, `resync_insert_page`: resync.sql's page statement with the
          table's `upsert_objects`, or its `insert_objects`, embedded (`{upsert}`);
        * in each of these, the source of the changes (`{source}`): see `_SOURCES`.
        """
        key = (name, table)
        sql = self._statements.get(key)
        if sql is None:
            sql = self._compose(name, table)
            if "{source}" in sql:
                if name not in _SOURCES:
                    raise DatabaseError(f"query {name!r}: no source for its {{source}}")
                sql = sql.replace("{source}", _SOURCES[name])
            self._statements[key] = sql
        return sql

    def _compose(self, name: str, table: str | None) -> str:
        """`statement` before its `{source}` is filled in (that depends on the outermost
        statement: an embedded upsert reads the page's parameters)."""
        if name == "insert_objects":
            upsert = self._compose("upsert_objects", table)
            head, conflict, _ = upsert.partition("\nON CONFLICT")
            if not conflict:
                raise DatabaseError(f"{table}: upsert_objects has no ON CONFLICT clause")
            return head + "\nRETURNING t.id, 'insert' AS op"
        if name in ("resync_write_page", "resync_insert_page"):
            inner = "upsert_objects" if name == "resync_write_page" else "insert_objects"
            written = self._compose(inner, table).rstrip().rstrip(";")
            return self.queries["resync_write_page"].replace("{upsert}", written)
        sql = self.queries[name].replace("{version_set}", self.queries["version_set"].strip())
        if "{table}" not in sql:
            return sql
        if table is None or not _PLAIN_IDENT.match(table):
            raise DatabaseError(f"query {name!r} needs a mirror table, not {table!r}")
        sql = sql.replace("{table}", f'"{table}"')
        for part in _EXTRA_PARTS:
            extra = f"{table}_extra_{part}"
            sql = sql.replace(f"{{extra_{part}}}", self.queries.get(extra, ""))
        return sql

    async def transact(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """`fn` in one transaction on a pooled connection; errors translated."""
        async with self.session() as conn, conn.transaction():
            return await fn(conn)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Tx]:
        """A pooled connection held for many statements and transactions (a resync writer, a
        few reads in a row); outside `Tx.transaction` each statement commits alone."""
        async with self.connection() as conn:
            yield Tx(self, conn)

    async def run(
        self, fn: Callable[[asyncpg.Connection], Awaitable[T]], *, transaction: bool = True
    ) -> T:
        """`fn` on a pooled driver connection (in one transaction by default), errors
        translated: for tests and tools. syncd's modules use `transact` and `session`."""
        async with self.connection() as conn:
            if not transaction:
                return await fn(conn)
            async with conn.transaction():
                return await fn(conn)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled driver connection, errors translated (under `session`; tests and tools)."""
        try:
            async with self.pool.acquire() as conn:
                # Taken off before the connection goes back (asyncpg warns of listeners left).
                conn.add_log_listener(_count_unfit_values)
                try:
                    yield conn
                finally:
                    conn.remove_log_listener(_count_unfit_values)
        except _TRANSLATED as exc:
            raise translate(exc, self.dsn) from exc

    async def execute(self, name: str, *args: Any, table: str | None = None) -> str:
        async with self.session() as conn:
            return await conn.execute(name, *args, table=table)

    async def fetch(self, name: str, *args: Any, table: str | None = None) -> list[Row]:
        async with self.session() as conn:
            return await conn.fetch(name, *args, table=table)

    async def fetchrow(self, name: str, *args: Any, table: str | None = None) -> Row | None:
        async with self.session() as conn:
            return await conn.fetchrow(name, *args, table=table)

    async def fetchval(self, name: str, *args: Any, table: str | None = None) -> Any:
        async with self.session() as conn:
            return await conn.fetchval(name, *args, table=table)


class Tx:
    """A connection as syncd's modules get it (`Database.transact`, `Database.session`): it runs
    named queries only (`Database.statement`; `table` renders a query written for any mirror
    table), and every driver error comes out translated (`translate`), so callers catch syncd's
    classes alone (`DatabaseDataError`, `DatabaseDuplicate`, `DatabaseRefused`, ...)."""

    __slots__ = ("_conn", "_db")

    def __init__(self, db: Database, conn: asyncpg.Connection):
        self._db = db
        self._conn = conn

    async def execute(self, name: str, *args: Any, table: str | None = None) -> str:
        status: str = await self._call(self._conn.execute, self._db.statement(name, table), *args)
        return status

    async def fetch(self, name: str, *args: Any, table: str | None = None) -> list[Row]:
        rows: list[Row] = await self._call(self._conn.fetch, self._db.statement(name, table), *args)
        return rows

    async def fetchrow(self, name: str, *args: Any, table: str | None = None) -> Row | None:
        row: Row | None = await self._call(
            self._conn.fetchrow, self._db.statement(name, table), *args
        )
        return row

    async def fetchval(self, name: str, *args: Any, table: str | None = None) -> Any:
        return await self._call(self._conn.fetchval, self._db.statement(name, table), *args)

    async def execute_migration(self, text: str) -> None:
        """A migration file's text (`migrations` reads and checks the files), its schema names
        rendered."""
        await self._call(self._conn.execute, self._db.schemas.render(text))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """A transaction, committed when the block ends and rolled back when it raises; inside
        another one, a savepoint (what failed in it rolls back alone)."""
        try:
            async with self._conn.transaction():
                yield
        except _TRANSLATED as exc:
            raise translate(exc, self._db.dsn) from exc

    async def _call(self, method: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        try:
            return await method(*args)
        except _TRANSLATED as exc:
            raise translate(exc, self._db.dsn) from exc


class Dedicated(Tx):
    """A connection outside the pool (`Database.dedicated_connection`) for session advisory
    locks and LISTEN, which the pool would drop when a connection goes back."""

    __slots__ = ()

    async def listen(self, channel: str, on_payload: Callable[[str], object]) -> None:
        """LISTEN on `channel`: `on_payload` gets each notification's payload."""
        await self._call(
            self._conn.add_listener, channel, lambda _c, _pid, _ch, payload: on_payload(payload)
        )

    def on_close(self, callback: Callable[[], object]) -> None:
        """`callback` runs when the connection closes, for whatever reason."""
        self._conn.add_termination_listener(lambda _conn: callback())

    def is_closed(self) -> bool:
        return bool(self._conn.is_closed())

    def terminate(self) -> None:
        """Cut the connection at once (the server then frees its session locks)."""
        self._conn.terminate()

    async def close(self) -> None:
        await self._call(self._conn.close)
