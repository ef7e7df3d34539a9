"""`syncd run` loads what the daemon needs and nothing else: not the emulator, not the demo
(each is imported by its own command only). Run in a subprocess, so that this test's own
imports do not count; no PostgreSQL needed."""

from __future__ import annotations

import subprocess
import sys

import orjson

from tests.conftest import ROOT

# Show a command's help through `main`, parse a command line, print the modules then loaded.
SCRIPT = r"""
import sys
import orjson
from syncd import cli

try:
    cli.main([{command!r}, "--help"])
except SystemExit:
    pass
argv = {argv!r}
assert cli.build_parser(argv[0]).parse_args(argv).command == argv[0]
print(orjson.dumps(sorted(sys.modules)).decode())
"""


def loaded_by(command: str, argv: list[str]) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(command=command, argv=argv)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return set(orjson.loads(result.stdout.splitlines()[-1]))


def test_run_imports_neither_the_emulator_nor_the_demo() -> None:
    modules = loaded_by("run", ["run"])
    assert "syncd.daemon" in modules
    unwanted = sorted(m for m in modules if m.startswith(("syncd.emulator", "syncd.demo")))
    assert not unwanted, f"`syncd run` imported {unwanted}"


def test_the_demo_and_the_emulator_still_get_their_arguments() -> None:
    modules = loaded_by("emulator", ["demo", "--keep"])
    assert {"syncd.demo", "syncd.emulator"} <= modules
