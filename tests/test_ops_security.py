"""Security as deployed: TLS to PostgreSQL with certificate verification (sslmode=verify-full and
a CA file in the DSN), a wrong CA refused with one clear line, and restricted keys accepted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import asyncpg
import pytest

from syncd.config import load_config
from syncd.emulator import Emulator
from syncd.pgserver import LocalPostgres, find_bindir
from tests.conftest import syncd_cli


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(cwd: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=cwd,
    )  # fmt: skip


def _make_server_cert(cwd: Path, ca: str) -> None:
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "server.key", "-out", "server.csr", cwd=cwd,
    )  # fmt: skip
    (cwd / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=cwd,
    )  # fmt: skip


@pytest.fixture
def tls_postgres(tmp_path: Path):  # type: ignore[no-untyped-def]
    bindir = find_bindir()
    if bindir is None or shutil.which("openssl") is None:
        pytest.skip("needs local PostgreSQL server binaries and openssl")
    certs = tmp_path / "certs"
    certs.mkdir()
    _make_ca(certs, "ca")
    _make_ca(certs, "other_ca")
    _make_server_cert(certs, "ca")
    server = LocalPostgres(bindir)
    try:
        server.init()
        for name in ("server.crt", "server.key"):
            shutil.copy(certs / name, server.dir / name)
            os.chmod(server.dir / name, 0o600)
            if server.as_root:
                shutil.chown(server.dir / name, "postgres", "postgres")
        with (server.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nssl = on\nssl_cert_file = '{server.dir / 'server.crt'}'\n"
                f"ssl_key_file = '{server.dir / 'server.key'}'\n"
            )
        server.start()
        yield server, certs
    finally:
        server.destroy()


async def test_tls_verify_full_works_and_a_wrong_ca_is_refused(tls_postgres) -> None:  # type: ignore[no-untyped-def]
    server, certs = tls_postgres
    base = f"postgresql://postgres@localhost:{server.port}/postgres"
    good = f"{base}?sslmode=verify-full&sslrootcert={certs / 'ca.pem'}"
    result = syncd_cli("migrate", env={"DATABASE_URL": good})
    assert result.returncode == 0, result.stderr
    conn = await asyncpg.connect(good)
    try:
        assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await conn.close()
    status = syncd_cli("status", "--json", env={"DATABASE_URL": good})
    assert json.loads(status.stdout)["schema"]["version"] >= 40, status.stderr

    bad = f"{base}?sslmode=verify-full&sslrootcert={certs / 'other_ca.pem'}"
    refused = syncd_cli("migrate", env={"DATABASE_URL": bad})
    assert refused.returncode != 0
    assert refused.stderr.startswith("syncd: error:")
    assert "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    print(refused.stderr)


def test_restricted_keys_are_accepted(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        {"STRIPE_API_KEY": "rk_test_51Restricted0000", "SYNCD_USAGE_API_KEY": "rk_test_51Meter000"},
    )
    assert cfg.stripe.api_key.startswith("rk_test_")
    assert cfg.usage_api_key == "rk_test_51Meter000"
    with Emulator.in_thread(port=0, seed=1) as emu:
        result = syncd_cli(
            "check",
            env={
                "STRIPE_API_KEY": "rk_test_51Restricted0000",
                "SYNCD_STRIPE_API_BASE": emu.url,
                "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
                "SYNCD_DATABASE_CONNECT_TIMEOUT": "1",
            },
        )
    assert "ok   stripe" in result.stdout, result.stdout + result.stderr
    assert "rk_test_51Restricted0000" not in result.stdout + result.stderr
