"""The registry is the single declaration of mirrored types; it must agree with the schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from syncd.db import Database
from syncd.errors import ConfigError
from syncd.registry import BY_OBJECT, BY_TABLE, RESOURCES, selected

FIXTURES = Path(__file__).resolve().parent / "data" / "stripe" / "openapi" / "fixtures3.json"


async def test_every_resource_has_a_table_and_owned_children_a_parent_id(db: Database) -> None:
    rows = await db.run(
        lambda c: c.fetch(
            "SELECT table_name, array_agg(column_name::text) AS cols FROM information_schema.columns "
            "WHERE table_schema = 'stripe' GROUP BY table_name"
        ),
        transaction=False,
    )
    tables = {r["table_name"]: set(r["cols"]) for r in rows}
    assert set(tables) == set(BY_TABLE)
    assert len(RESOURCES) >= 24
    for r in RESOURCES:
        assert ("parent_id" in tables[r.table]) == r.owned, r.table
        assert {"raw", "fetched_at", "deleted_at", "account_id", "synced_at"} <= tables[r.table]


def test_every_object_name_is_a_stripe_type() -> None:
    known = json.loads(FIXTURES.read_text())["resources"]
    for name in BY_OBJECT:
        assert name in known, name


def test_children_point_at_resources_and_back() -> None:
    for r in RESOURCES:
        for child in r.children:
            assert BY_TABLE[child.table].parent == r.table
        if r.parent:
            assert any(c.table == r.table for c in BY_TABLE[r.parent].children), r.table
        assert r.list_path or r.parent, f"{r.table} cannot be reached by any list"


def test_selection_by_config() -> None:
    chosen = [r.table for r in selected(["customers", "subscriptions", "subscription_items"], [])]
    assert chosen == ["customers", "subscriptions", "subscription_items"]
    # A child without its parent is dropped: it can only be listed through the parent.
    assert [r.table for r in selected(["subscription_items"], [])] == []
    assert "charges" not in [r.table for r in selected([], ["charges"])]
    with pytest.raises(ConfigError, match=r"^sync.include: unknown table\(s\) custmers"):
        selected(["custmers"], [])
