"""Numbered, forward-only migrations from `sql/migrations`, applied under an advisory lock.

Each file `NNNN_name.sql` runs in its own transaction and is recorded with a checksum of its
text; an applied file whose text changed afterwards is refused rather than silently skipped.
Two replicas starting together serialize on the lock: the second waits, then finds nothing to do.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from syncd.db import Database, Dedicated, sql_dir
from syncd.errors import DatabaseError, MigrationError
from syncd.logs import get_logger

log = get_logger(__name__)
_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available(directory: Path | None = None) -> list[Migration]:
    directory = directory or sql_dir() / "migrations"
    found: list[Migration] = []
    for path in sorted(directory.iterdir()):
        m = _FILE.match(path.name)
        if not m:
            if path.suffix == ".sql":
                raise MigrationError(f"migration file {path.name}: name must be NNNN_name.sql")
            continue
        found.append(Migration(int(m.group(1)), m.group(2), path.read_text(encoding="utf-8")))
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


def lock_key(db: Database) -> int:
    # One lock per state schema, so two syncd installs in one database do not block each other.
    return zlib.crc32(f"syncd:migrate:{db.schemas.state}".encode())


async def applied_versions(db: Database) -> dict[int, str]:
    exists = await db.fetchval("migrations_table_exists", f"{db.schemas.state}.schema_migrations")
    if not exists:
        return {}
    return {r["version"]: r["checksum"] for r in await db.fetch("applied_migrations")}


async def pending(db: Database) -> list[Migration]:
    done = await applied_versions(db)
    return [m for m in available() if m.version not in done]


async def migrate(db: Database, *, target: int | None = None) -> list[Migration]:
    """Apply every pending migration (up to `target`); returns those applied by this call."""
    conn = await db.dedicated_connection()
    try:
        key = lock_key(db)
        if not await conn.fetchval("try_advisory_lock", key):
            log.info("migration_lock_wait", detail="another syncd is migrating; waiting for it")
            await conn.execute("advisory_lock", key)
        try:
            return await _apply(conn, target)
        finally:
            await conn.execute("advisory_unlock", key)
    finally:
        await conn.close()


async def _apply(conn: Dedicated, target: int | None) -> list[Migration]:
    await conn.execute("create_migrations_table")
    done = {r["version"]: r["checksum"] for r in await conn.fetch("applied_migrations")}
    applied: list[Migration] = []
    for mig in available():
        if target is not None and mig.version > target:
            break
        if mig.version in done:
            if done[mig.version] != mig.checksum:
                raise MigrationError(
                    f"migration {mig.version:04d}_{mig.name}.sql was changed after it was applied "
                    "(checksum differs); restore it and add a new migration instead"
                )
            continue
        try:
            async with conn.transaction():
                await conn.execute_migration(mig.sql)
                await conn.execute("record_migration", mig.version, mig.name, mig.checksum)
        except DatabaseError as exc:
            if exc.sqlstate is None:
                raise  # not the server's refusal: the connection failed
            raise MigrationError(
                f"migration {mig.version:04d}_{mig.name}.sql failed: {exc.server_message}"
            ) from exc
        log.info("migration_applied", version=mig.version, name=mig.name)
        applied.append(mig)
    return applied
