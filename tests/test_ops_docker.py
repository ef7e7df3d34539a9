"""The Dockerfile cannot rot on machines without a Docker engine: its build-stage steps (COPY,
WORKDIR, RUN) run here in a temporary virtualenv, then the installed `syncd` answers `--help`
and migrates a database from outside the checkout. The runtime stage is checked for the
properties operators rely on (non-root, entrypoint, stop signal, health check)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import ROOT

VENV_IN_IMAGE = "/opt/syncd"


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages(text: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for word, rest in _instructions(text):
        if word == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word, rest))
    return stages


def test_runtime_stage_is_what_operators_rely_on() -> None:
    stages = _stages((ROOT / "Dockerfile").read_text())
    assert len(stages) == 2, "multi-stage: build, then runtime"
    runtime = dict(stages[1])
    assert "slim" in (ROOT / "Dockerfile").read_text().split("PYTHON_IMAGE=")[1].split()[0]
    assert runtime["USER"].split(":")[0] not in ("", "0", "root")
    assert runtime["ENTRYPOINT"] == '["syncd"]'
    assert runtime["CMD"] == '["run"]'
    assert runtime["STOPSIGNAL"] == "SIGTERM"
    assert "syncd" in runtime["HEALTHCHECK"] and "health" in runtime["HEALTHCHECK"]
    assert runtime["COPY"].startswith("--from=build")
    # Dependencies are installed before the code is copied (their layer survives code changes).
    build = stages[0]
    order = [f"{w} {r}" for w, r in build]
    deps = next(i for i, s in enumerate(order) if "-r requirements.txt" in s)
    code = next(i for i, s in enumerate(order) if s.startswith("COPY syncd"))
    assert deps < code
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and ".venv" in ignored and "config.toml" in ignored
    compose = (ROOT / "docker-compose.yml").read_text()
    for service in ("postgres:", "stripe-emulator:", "syncd:", "syncd-standby:"):
        assert f"\n  {service}" in compose


def test_build_stage_installs_a_working_syncd(tmp_path: Path, empty_db_url: str) -> None:
    build = _stages((ROOT / "Dockerfile").read_text())[0]
    venv = tmp_path / "venv"
    context = tmp_path / "src"
    context.mkdir()
    workdir = context
    # The test machine has no network: the dependencies come from this interpreter's
    # site-packages (linked into the new venv), builds are not isolated, nothing is downloaded.
    site = sysconfig.get_paths()["purelib"]
    path = (
        f"{venv / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    env = {**os.environ, "PATH": path, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    ran = 0
    for word, rest in build:
        if word == "WORKDIR":
            workdir = context / rest.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif word == "COPY":
            *sources, dest = shlex.split(rest)
            for src in sources:
                target = workdir / dest if dest not in ("./", ".") else workdir
                if (ROOT / src).is_dir():
                    shutil.copytree(
                        ROOT / src,
                        target / src if dest.endswith("/") else target,
                        ignore=shutil.ignore_patterns("__pycache__"),
                    )
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / src, target / Path(src).name)
        elif word == "RUN":
            command = rest.replace(VENV_IN_IMAGE, str(venv))
            if "pip install" in command:
                command = command.replace("pip install", "pip install --no-build-isolation -q")
            result = subprocess.run(
                ["sh", "-c", command],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert result.returncode == 0, f"RUN {command}\n{result.stdout}\n{result.stderr}"
            ran += 1
            if command.startswith("python -m venv"):
                # Link the dependencies we already have, instead of downloading them.
                purelib = next((venv / "lib").glob("python*/site-packages"))
                (purelib / "_deps_from_test_env.pth").write_text(site + "\n")
    assert ran >= 4
    requirements = (context / "src" / "requirements.txt").read_text().split()
    assert any(r.startswith("asyncpg") for r in requirements)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    syncd = str(venv / "bin" / "syncd")
    helped = subprocess.run(
        [syncd, "--help"], cwd=elsewhere, env=env, capture_output=True, text=True, check=False
    )
    assert helped.returncode == 0, helped.stderr
    for command in ("run", "status", "health", "demo", "migrate"):
        assert command in helped.stdout
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import syncd.db; print(syncd.db.sql_dir())"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(venv)), where.stdout  # sql/ inside the install
    migrated = subprocess.run(
        [syncd, "migrate"],
        cwd=elsewhere,
        env={**env, "DATABASE_URL": empty_db_url},
        capture_output=True,
        text=True,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr
    assert "0040_instance_leadership" in migrated.stdout
