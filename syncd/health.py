"""The daemon's HTTP face (`http.bind`): /healthz, /readyz and /metrics, on every replica.

- `/healthz`: the process is alive: the event loop answers and the heartbeat loop keeps ticking
  (a wedged loop or a dead task group fails it). Orchestrators restart on failure.
- `/readyz`: the replica can do its job: PostgreSQL answers, no migration is pending, it is the
  leader or a standby, and (leader only) the event stream polled successfully within
  `http.ready_max_poll_age`. Standbys are ready: they are the spare wheel, not a fault.
- `/metrics`: Prometheus text from `syncd.metrics.REGISTRY`.

Bodies say what failed in a few words: no DSN, no key, no customer data (a test checks).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import aiohttp
import anyio
import orjson
from aiohttp import web
from anyio.abc import TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from syncd import metrics, migrations, quarantine
from syncd.config import Config
from syncd.errors import ConfigError, SyncdError
from syncd.logs import get_logger
from syncd.runtime import Runtime

log = get_logger(__name__)
# The loop whose last success tells whether the mirror is current (the event stream's poll).
POLL_LOOP = "events"
CHECK_TIMEOUT = 2.0
DB_GAUGES_EVERY = 5.0


def parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"http.bind: {bind!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class Health:
    """The rules behind the endpoints, read from the runtime's `State` (never from the
    Prometheus gauges, which are outputs only)."""

    def __init__(self, runtime: Runtime):
        self.cfg = runtime.cfg
        self.db = runtime.db
        self.state = runtime.state
        self.runtime = runtime
        self._refreshed = -DB_GAUGES_EVERY

    def alive(self) -> dict[str, Any]:
        cfg, state = self.cfg, self.state
        # The heartbeat loop stamps every round, even when the database is down; a round may
        # spend up to connect_timeout reaching an unreachable host.
        limit = max(3 * cfg.daemon.heartbeat_interval, 10.0) + cfg.database.connect_timeout
        age = anyio.current_time() - state.last_beat
        return {"ok": age <= limit, "heartbeat_loop_age": round(age, 3), "role": state.role}

    async def ready(self) -> dict[str, Any]:
        state = self.state
        role = state.role
        checks: dict[str, str] = {}
        try:
            with anyio.fail_after(CHECK_TIMEOUT):
                pending = await migrations.pending(self.db)
            checks["database"] = "ok"
            checks["migrations"] = f"{len(pending)} pending" if pending else "ok"
        except (SyncdError, TimeoutError):
            checks["database"] = "unreachable"
        checks["role"] = role if role in ("leader", "standby") else f"not ready ({role})"
        if role == "leader":
            checks["poll"] = self._poll_check()
        if role == "leader" or self.cfg.stripe.accounts:
            # A loop that cannot do its job (the event stream unable to commit; Connect: every
            # replica syncs accounts, and one that cannot lease any): not ready.
            for key, problem in state.problems.blocking().items():
                checks[key] = problem.message
        ok = all(
            v == "ok" or (k == "role" and v in ("leader", "standby")) for k, v in checks.items()
        )
        return {"ok": ok, "checks": checks}

    def _poll_check(self) -> str:
        if not self.cfg.events.enabled or POLL_LOOP not in {n for n, _ in self.runtime.loops}:
            return "ok"
        limit = self.cfg.http.ready_max_poll_age
        last = self.state.last_success.get(POLL_LOOP)
        since = self.state.leader_since
        # A new leader gets one allowance to make its first poll.
        newest = max(last or 0.0, since)
        age = time.time() - newest
        return "ok" if age <= limit else f"last successful poll {age:.0f}s ago (> {limit:.0f}s)"

    async def healthz(self, _request: web.Request) -> web.Response:
        body = self.alive()
        return _json(200 if body["ok"] else 503, body)

    async def readyz(self, _request: web.Request) -> web.Response:
        body = await self.ready()
        return _json(200 if body["ok"] else 503, body)

    async def refresh_from_database(self) -> None:
        """Gauges only the database knows (the usage backlog), at most every few seconds."""
        now = anyio.current_time()
        if now - self._refreshed < DB_GAUGES_EVERY:
            return
        self._refreshed = now
        db = self.db
        try:
            with anyio.fail_after(CHECK_TIMEOUT):
                if await db.fetchval("relation_exists", f'"{db.schemas.app}".usage_records'):
                    row = await db.fetchrow("metrics_usage_backlog")
                    for status in ("pending", "sending", "failed"):
                        metrics.usage_backlog.labels(status).set(row[status] if row else 0)
                if await db.fetchval("relation_exists", f'"{db.schemas.state}".rejected_objects'):
                    metrics.quarantine_open.clear()
                    for q in await quarantine.summary(db):
                        metrics.quarantine_open.labels(q["table"], q["reason"]).set(q["objects"])
        except (SyncdError, TimeoutError) as exc:
            # Stale gauges beat a failed scrape: the database being down shows in /readyz.
            log.debug("metrics_refresh_failed", error=str(exc))

    async def metrics(self, _request: web.Request) -> web.Response:
        await self.refresh_from_database()
        return web.Response(
            body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


async def serve(
    runtime: Runtime, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve until a stop is requested; `runtime.state.http_bind` gets the bound address."""
    host, port = parse_bind(runtime.cfg.http.bind)
    health = Health(runtime)
    app = web.Application()
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/metrics", health.metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, shutdown_timeout=1.0)
        try:
            await site.start()
        except OSError as exc:
            raise SyncdError(f"http.bind {runtime.cfg.http.bind}: {exc.strerror or exc}") from None
        # Port 0 asks for any free port (tests): report the one the server got.
        server: Any = site._server
        sockets = server.sockets if server is not None else ()
        bound = sockets[0].getsockname() if sockets else (host, port)
        runtime.state.http_bind = f"{host}:{bound[1]}"
        log.info("http_listening", bind=runtime.state.http_bind)
        task_status.started()
        await runtime.lifecycle.stopping.wait()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


async def cmd_health(cfg: Config, args: argparse.Namespace) -> int:
    """`syncd health`: probe this host's /healthz (or /readyz): the container HEALTHCHECK."""
    host, port = parse_bind(cfg.http.bind)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    path = "/readyz" if args.ready else "/healthz"
    url = f"http://{host}:{port}{path}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.timeout)) as session,
            session.get(url) as resp,
        ):
            body = await resp.text()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"syncd health: {url}: {exc.__class__.__name__}: {exc}")
        return 1
    print(f"{status} {path} {body}")
    return 0 if status == 200 else 1


def health_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ready", action="store_true", help="probe /readyz instead of /healthz")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
