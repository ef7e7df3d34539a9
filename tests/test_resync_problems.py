"""A resync that could not mirror everything says so: a per-parent list answering 404 for
customers the run has just listed (the endpoint missing for this account) is counted, recorded
on the table, and the run ends `done_with_problems` instead of leaving the table silently empty."""

from __future__ import annotations

import json

from syncd.emulator import Emulator
from tests.conftest import emulator_config, syncd_cli
from tests.support.resync import resyncer


async def test_per_parent_lists_answering_404_end_the_run_with_problems(
    db_url: str, emulator: Emulator
) -> None:
    emulator.seed(customers=6, products=1, subscriptions=0)
    emulator.faults.set(pattern="GET /v1/customers/*/payment_methods", status=404, error_rate=1.0)
    cfg = emulator_config(
        db_url,
        emulator,
        sync={"include": ["customers", "payment_methods"], "per_parent_lists": True},
    )
    async with resyncer(cfg) as rs:
        result = await rs.run(reason="test")
        run = await rs.db.fetchrow("resync_get_run", result.run_id)
        assert run is not None and run["status"] == "done_with_problems"
        assert "payment_methods" in run["error"] and "404" in run["error"]
        assert "payment_methods" in (result.tables["customers"].error or "")
    status = syncd_cli("status", "--json", env={"SYNCD_DATABASE_URL": db_url})
    warnings = json.loads(status.stdout)["warnings"]
    assert any("done with problems" in w and "payment_methods" in w for w in warnings)
