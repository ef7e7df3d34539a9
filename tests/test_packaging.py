"""The SQL travels inside the wheel: `syncd migrate` works from an installed wheel, outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT


def test_wheel_carries_sql_and_migrates_outside_checkout(tmp_path: Path, empty_db_url: str) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("syncd-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "syncd/sql/migrations/0001_daemon_state.sql" in names
    assert any(n.startswith("syncd/sql/queries/") for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCD_", "DATABASE_URL"))}
    env.update({"PYTHONPATH": str(site), "DATABASE_URL": empty_db_url})
    where = subprocess.run(
        [sys.executable, "-c", "import syncd.db; print(syncd.db.sql_dir())"],
        capture_output=True,
        text=True,
        env=env,
        cwd=elsewhere,
        check=True,
    )
    assert where.stdout.strip() == str(site / "syncd" / "sql")
    for args in (["--help"], ["migrate"]):
        result = subprocess.run(
            [sys.executable, "-m", "syncd", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=elsewhere,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    assert "0001_daemon_state" in result.stdout
