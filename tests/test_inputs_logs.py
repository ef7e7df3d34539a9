"""Every log line, syncd's own or a library's (standard `logging`), goes through structlog's
processors: JSON when configured, secrets scrubbed. Checked in a subprocess, as deployed."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

KEY = "sk_test_" + "Z9" * 12
DSN = "postgresql://app:hunter2@db.internal:5432/app"

SCRIPT = f"""
import asyncio, logging, sys
import structlog
from syncd.logs import bind_context, configure, get_logger

configure(sys.argv[1], sys.argv[2])
with bind_context(resource="customers"):
    logging.getLogger("asyncpg.pool").warning("connect to %s failed", {DSN!r})
    logging.getLogger("stripe").error("request with key {KEY} refused", extra={{"x": 1}})
    try:
        raise RuntimeError("boom {KEY}")
    except RuntimeError:
        logging.getLogger("aiohttp.server").exception("handler failed")
    logging.getLogger("apscheduler.scheduler").info("job ran (info: shown at debug only)")
    logging.getLogger("stripe").debug("message='Request to Stripe api' key={KEY}")
    get_logger("syncd").warning("own_line", key={KEY!r}, nested={{"dsn": [{DSN!r}]}})
# asyncio's own logger, as uvloop and asyncio report a task that failed unobserved
async def main():
    async def fail():
        raise ValueError("secret {KEY}")
    task = asyncio.ensure_future(fail())
    await asyncio.sleep(0)
    del task
asyncio.run(main())
import gc; gc.collect()
"""


def run(level: str, fmt: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, level, fmt],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_library_log_records_are_json_and_redacted() -> None:
    result = run("info", "json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing bypasses the handler (logging.lastResort writes here)
    lines = [json.loads(line) for line in result.stdout.splitlines()]  # every line is JSON
    output = result.stdout
    assert KEY not in output and "hunter2" not in output
    by_logger = {line.get("logger"): line for line in lines}
    pool = by_logger["asyncpg.pool"]
    assert pool["level"] == "warning" and pool["resource"] == "customers" and "timestamp" in pool
    assert pool["event"] == "connect to postgresql://app:***@db.internal:5432/app failed"
    assert by_logger["stripe"]["event"] == "request with key sk_test_***" + KEY[-4:] + " refused"
    server = by_logger["aiohttp.server"]
    assert server["level"] == "error" and "RuntimeError: boom sk_test_***" in server["exception"]
    assert "asyncio" in by_logger and "secret sk_test_***" in json.dumps(by_logger["asyncio"])
    own = next(line for line in lines if line["event"] == "own_line")
    assert own["key"] == "sk_test_***" + KEY[-4:]
    assert own["nested"] == {"dsn": ["postgresql://app:***@db.internal:5432/app"]}
    # Libraries' info lines (one per request or job) stay quiet unless log.level is debug.
    assert "apscheduler.scheduler" not in by_logger
    assert len(lines) == 5


def test_library_debug_lines_show_at_debug_and_console_is_redacted() -> None:
    result = run("debug", "json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    loggers = [line.get("logger") for line in lines]
    assert "apscheduler.scheduler" in loggers and loggers.count("stripe") == 2
    assert KEY not in result.stdout
    console = run("info", "console")
    assert console.returncode == 0 and console.stderr == "", console.stderr
    assert "connect to postgresql://app:***@db.internal" in console.stdout
    assert KEY not in console.stdout and "hunter2" not in console.stdout
