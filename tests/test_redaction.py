from __future__ import annotations

from syncd.redaction import redact_dsn, redact_key, scrub


def test_redact_dsn_variants() -> None:
    assert redact_dsn("postgresql://u:pw@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert redact_dsn("postgresql://u@h/d") == "postgresql://u@h/d"
    assert redact_dsn("postgresql://h/d?password=pw&sslmode=require") == (
        "postgresql://h/d?password=***&sslmode=require"
    )


def test_redact_key_keeps_mode_and_tail() -> None:
    assert redact_key("rk_live_abcdefgh1234") == "rk_live_***1234"
    assert redact_key("whatever") == "***"


def test_scrub_free_text() -> None:
    text = "failed with sk_test_abc123XYZ at postgres://me:secret@db/x password=pw"
    out = scrub(text)
    assert "abc123" not in out and "secret" not in out and "=pw" not in out
