"""A throwaway PostgreSQL server for tests, benchmarks and `syncd demo`.

Found in this order: a Docker engine through testcontainers (when both are present), else the
local PostgreSQL server binaries (`pg_config --bindir`, or /usr/lib/postgresql/*/bin), started as
a private cluster in a temporary directory on a free loopback port. initdb refuses to run as
root, so as root the cluster belongs to the `postgres` user and is driven through `runuser`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from syncd.errors import DatabaseUnavailable

HOW_TO = (
    "no PostgreSQL available: set SYNCD_TEST_DATABASE_URL to a server you own, start a Docker "
    "engine, or install the PostgreSQL server binaries (apt-get install postgresql)"
)


def find_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return versions[-1].parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalPostgres:
    """A private cluster run from the local server binaries; `stop`/`start` allow restart tests."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="syncd-pg-"))
        self.data = self.dir / "data"
        self.as_root = os.geteuid() == 0

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise DatabaseUnavailable(
                f"{args[0]} failed: {(result.stderr or result.stdout).strip()[-500:]}"
            )

    def init(self) -> None:
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -h 127.0.0.1 -k {self.dir} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=300 -c shared_buffers=256MB"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "server.log"),
            "-o",
            options,
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(DatabaseUnavailable):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def _docker_answers() -> bool:
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker  # type: ignore[import-untyped]
    except ImportError:
        return False
    client = None
    try:
        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:  # any failure means "no usable engine": fall back to local binaries
        return False
    finally:
        if client is not None:
            client.close()


@contextlib.contextmanager
def throwaway_postgres(prefer_local: bool = False) -> Iterator[tuple[str, LocalPostgres | None]]:
    """Yield (admin DSN, the local server or None when Docker runs it); removed afterwards."""
    if not prefer_local and _docker_answers():
        try:
            from testcontainers.postgres import PostgresContainer
        except ImportError:
            pass
        else:
            with PostgresContainer("postgres:16-alpine", driver=None) as container:
                yield container.get_connection_url(), None
            return
    bindir = find_bindir()
    if bindir is None:
        raise DatabaseUnavailable(HOW_TO)
    server = LocalPostgres(bindir)
    try:
        server.init()
        server.start()
        yield server.dsn, server
    finally:
        server.destroy()


async def create_database(admin_dsn: str, name: str) -> str:
    """A new, empty database on the throwaway server; returns its DSN."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return admin_dsn.rpartition("/")[0] + "/" + name
