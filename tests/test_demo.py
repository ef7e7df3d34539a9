"""`syncd demo` as a newcomer runs it: a subprocess, no key, no database, exits 0 by itself,
and what it shows is real: changes reach the mirror, usage is counted once by the meter."""

from __future__ import annotations

import re

import pytest

from tests.conftest import syncd_cli


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_demo_runs_end_to_end_and_exits_0() -> None:
    result = syncd_cli("demo", "--duration", "8", "--customers", "50", timeout=140)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "SIGHUP sent" in out and "SIGUSR1 sent" in out
    assert "exit code 0" in out  # the daemon stopped gracefully on SIGTERM
    assert "syncd status for" in out and ": ok" in out and "leader      none" not in out
    assert "resync      #2 all done" in out  # the SIGHUP resync, after the first one
    synced = re.search(r"end-to-end lag p50 ([\d.]+)s p95 ([\d.]+)s over (\d+) synced", out)
    assert synced is not None, out
    assert int(synced.group(3)) >= 10
    assert "not (yet) in the mirror" not in out
    customers = re.search(r"^  customers\s+(\d+)", out, re.M)
    assert customers is not None and int(customers.group(1)) > 50
    usage = re.search(
        r"usage: (\d+) api_calls recorded in rows, (\d+) reported by syncd \(\d+ rows\), "
        r"(\d+) counted by the Stripe meter",
        out,
    )
    assert usage is not None, out
    assert usage.group(1) == usage.group(2) == usage.group(3) != "0"
    assert "SELECT" in out
