"""Usage input: idempotency keys are unique per owner (tried with the database roles an app
uses), and totals sent to Stripe are exact or their rows fail with the reason (the real CLI)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import orjson
import pytest

from syncd import appschema
from syncd.db import Database
from syncd.emulator import Emulator
from syncd.errors import DatabaseError
from syncd.usage import meter_value_problem, value_text
from tests.conftest import make_config
from tests.support.usage import cli, cli_env, customers, emulator_totals, insert_rows, make_meter
from tests.support.views import SUPABASE, admin, as_role

ALICE = "3f2b8e4a-1c6d-4e5f-9a7b-0c1d2e3f4a5b"
BOB = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
INSERT = (
    "INSERT INTO billing.usage_records (user_id, metric, quantity, idempotency_key)"
    " VALUES ($1, 'api_calls', 1, $2)"
)


@pytest.fixture
async def supabase_db(db_url: str) -> AsyncIterator[Database]:
    """The migrated database with Supabase's roles and syncd's row-level policies."""
    async with Database.connect(make_config(db_url).database, min_size=1) as db:
        await admin(db, SUPABASE)
        assert await appschema.apply_row_level_security(db, make_config(db_url)) == "installed"
        yield db


async def test_a_users_key_does_not_block_or_reveal_another_users(supabase_db: Database) -> None:
    db = supabase_db
    await as_role(db, "authenticated", INSERT, ALICE, "req-1", user=ALICE)
    # Bob picks the same key: his usage is recorded, and nothing tells him Alice used it.
    await as_role(db, "authenticated", INSERT, BOB, "req-1", user=BOB)
    skip = INSERT + " ON CONFLICT (user_id, idempotency_key) DO NOTHING RETURNING id"
    assert await as_role(db, "authenticated", skip, BOB, "req-2", user=BOB) != []
    # Retrying his own request is still refused (or skipped), naming only his own row.
    with pytest.raises(DatabaseError, match="idempotency_key") as refused:
        await as_role(db, "authenticated", INSERT, BOB, "req-1", user=BOB)
    assert ALICE not in str(refused.value)
    assert await as_role(db, "authenticated", skip, BOB, "req-1", user=BOB) == []
    anywhere = INSERT + " ON CONFLICT DO NOTHING RETURNING id"
    assert await as_role(db, "authenticated", anywhere, BOB, "req-1", user=BOB) == []
    assert await as_role(db, "authenticated", anywhere, ALICE, "req-2", user=ALICE) != []
    mine = await as_role(
        db, "authenticated", "SELECT user_id, idempotency_key FROM billing.usage_records", user=BOB
    )
    assert sorted((r["user_id"], r["idempotency_key"]) for r in mine) == [
        (BOB, "req-1"),
        (BOB, "req-2"),
    ]


async def test_server_rows_are_unique_per_subscription_or_customer(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        insert = (
            "INSERT INTO billing.usage_records"
            " (user_id, subscription_id, customer_id, metric, quantity, idempotency_key)"
            " VALUES ($1, $2, $3, 'api_calls', 1, $4)"
        )
        await conn.execute(insert, None, None, "cus_A", "k")
        await conn.execute(insert, None, None, "cus_B", "k")
        await conn.execute(insert, None, "sub_A", None, "k")
        await conn.execute(insert, None, "sub_B", "cus_A", "k")
        await conn.execute(insert, ALICE, None, "cus_A", "k")
        for owner in [(None, None, "cus_A"), (None, "sub_A", "cus_Z"), (ALICE, "sub_Z", None)]:
            with pytest.raises(asyncpg.UniqueViolationError, match="idempotency_key_per"):
                await conn.execute(insert, *owner, "k")
        # The daemon writes the resolved customer into customer_id: no row changes owner.
        await conn.execute(
            "UPDATE billing.usage_records SET customer_id = 'cus_A' WHERE customer_id IS NULL"
        )
        assert await conn.fetchval("SELECT count(*) FROM billing.usage_records") == 5
    finally:
        await conn.close()


async def test_totals_are_exact_or_their_rows_fail_with_the_reason(
    db_url: str, emulator: Emulator
) -> None:
    meter = await make_meter(emulator, "api_calls")
    a, b, c, d = [cus["id"] for cus in customers(emulator, 4)]
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=90)
    rows = [
        # 10^20 + 10^-10 is 31 significant digits: rounded to 1E+20 at 28, and sent as such.
        (None, None, a, "api_calls", Decimal("1E+20"), at),
        (None, None, a, "api_calls", Decimal("1E-10"), at),
        (None, None, b, "api_calls", Decimal("0.1"), at),
        (None, None, b, "api_calls", Decimal("0.2"), at),
        (None, None, c, "api_calls", Decimal("123456789012345"), at),
        (None, None, d, "api_calls", Decimal("0.1234567890123456"), at),
    ]
    await insert_rows(db_url, rows)
    code, out, err = await cli("flush-usage", "--direct", env=cli_env(db_url, emulator))
    assert code == 0, err
    assert "3 rows reported, 0 failed, 3 rejected" in out, out
    assert emulator_totals(emulator, {"api_calls": meter}) == {
        ("api_calls", b): Decimal("0.3"),
        ("api_calls", c): Decimal("123456789012345"),
    }
    conn = await asyncpg.connect(db_url)
    try:
        found = {
            (r["customer_id"], r["quantity"]): (r["status"], r["error"])
            for r in await conn.fetch(
                "SELECT customer_id, quantity, status, error FROM billing.usage_records"
            )
        }
        sent = {
            r["customer_id"]: (r["value"], orjson.loads(r["params"])["payload"]["value"])
            for r in await conn.fetch("SELECT customer_id, value, params FROM syncd.usage_events")
        }
    finally:
        await conn.close()
    for quantity in (Decimal("1E+20"), Decimal("1E-10")):
        status, error = found[(a, quantity)]
        assert status == "failed"
        assert error.startswith("rejected: the total 100000000000000000000.0000000001 of 2 rows")
        assert "31 significant digits, Stripe meter values at most 15" in error
    status, error = found[(d, Decimal("0.1234567890123456"))]
    assert status == "failed"
    assert error == (
        "rejected: quantity 0.1234567890123456 has 16 significant digits,"
        " Stripe meter values at most 15"
    )
    assert sent == {b: (Decimal("0.3"), "0.3"), c: (Decimal("123456789012345"), "123456789012345")}


def test_meter_values_are_written_exactly() -> None:
    long = Decimal("1234567890.12345678901234567890123456789")
    assert value_text(long) == "1234567890.12345678901234567890123456789"  # no rounding at 28
    assert value_text(Decimal("1E+20")) == "100000000000000000000"
    assert value_text(Decimal("2.500")) == "2.5"
    assert meter_value_problem(Decimal("999999999999999")) is None
    assert meter_value_problem(Decimal("1E+20")) is None  # one digit: a double holds it exactly
    assert "16 significant digits" in (meter_value_problem(Decimal("1234567890123456")) or "")
    assert "out of the range" in (meter_value_problem(Decimal("1E+400")) or "")
    assert "out of the range" in (meter_value_problem(Decimal("1E-400")) or "")
