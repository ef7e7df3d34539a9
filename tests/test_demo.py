"""`syncd demo` as a newcomer runs it: a subprocess, no key, no database, exits 0 by itself."""

from __future__ import annotations

import pytest

from tests.conftest import syncd_cli


@pytest.mark.slow
def test_demo_runs_end_to_end_and_exits_0() -> None:
    result = syncd_cli("demo", "--duration", "6", "--customers", "50", timeout=110)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "SIGHUP sent" in out
    assert "exit code 0" in out  # the daemon stopped gracefully on SIGTERM
    assert "syncd status for" in out and "leader      none" not in out
    assert "changes made through the stripe SDK" in out
    assert "sign-up" in out
    assert "SELECT" in out
