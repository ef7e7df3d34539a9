"""The Python API: start the emulator in this event loop or in a background thread, and drive
its clock, faults, seeding and inspection from tests."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from aiohttp import web

from .faults import Faults, Stats
from .framework import Ctx
from .limits import LegacyRateLimiter, LimitConfig, Limits
from .state import JSON, Clock, State

if TYPE_CHECKING:
    from .server import ApiServer

T = TypeVar("T")
DEFAULT_API_KEY = "sk_test_emulator"


class StateApi:
    """Seeding, import, inspection and test helpers of one account's state: the platform's
    (the :class:`Emulator` itself) or a connected account's (``emu.account("acct_...")``)."""

    state: State

    def reset(self, seed: int | None = None) -> None:
        """Wipe the state (the emulator's: everything, connected accounts included)."""
        raise NotImplementedError

    def locked(self, fn: Callable[[], T]) -> T:
        with self.state.lock:
            return fn()

    def ctx(self) -> Ctx:
        return Ctx(self.state)

    def seed(self, **kw: Any) -> dict[str, int]:
        """Create realistic data fast, e.g. ``emu.seed(customers=100_000, events=False)``."""
        from .seed import seed

        with self.state.lock:
            return seed(self.state, **kw)

    def import_objects(self, objs: list[JSON] | JSON) -> int:
        """Load Stripe objects as the API renders them (a list, or a single object)."""
        from .importer import import_objects

        with self.state.lock:
            return import_objects(self.state, objs if isinstance(objs, list) else [objs])

    def objects(self, type_: str) -> list[JSON]:
        """Every object of a type as the API renders it, deleted ones with ``deleted: true``."""
        with self.state.lock:
            out: list[JSON] = []
            for r in reversed(self.state.coll(type_).records):
                obj: JSON = orjson.loads(r.to_bytes())
                if r.deleted:
                    obj["deleted"] = True
                out.append(obj)
            return out

    def events(self, type_: str | None = None) -> list[JSON]:
        """All events newest first, regardless of visibility or retention."""
        evs = self.objects("event")
        return [e for e in evs if type_ is None or e["type"] == type_]

    def meter_totals(self) -> dict[tuple[str, str], Decimal]:
        """Exact aggregated value per (meter id, customer id), as recorded."""
        from .meters import MeterStore, totals

        with self.state.lock:
            ms = self.state.meters_state
            if not isinstance(ms, MeterStore):
                return {}
            formulas = {
                r.id: str(r.obj["default_aggregation"]["formula"])
                for r in self.state.iter_type("billing.meter")
            }
            return totals(ms, formulas)

    def usage_totals(self) -> dict[str, int]:
        """Legacy usage-record totals per subscription item id."""
        with self.state.lock:
            return dict(self.state.usage_totals)

    def set_late_visibility(self, min_ms: float, max_ms: float) -> None:
        """Events become listable only after a uniform random real-time delay in the range."""
        with self.state.lock:
            self.state.late_visibility = (min_ms / 1000.0, max_ms / 1000.0)

    def clear_late_visibility(self) -> None:
        with self.state.lock:
            self.state.late_visibility = None

    def set_burst(self, on: bool = True) -> None:
        """While on, every new event gets the same ``created`` second (the current one)."""
        with self.state.lock:
            self.state.burst_created = self.state.clock.now() if on else None

    def complete_checkout_session(self, session_id: str, **kw: Any) -> JSON:
        from .payments import complete_checkout_session

        with self.state.lock:
            rec = complete_checkout_session(self.ctx(), session_id, **kw)
            out: JSON = orjson.loads(rec.to_bytes())
            return out

    def renew_subscriptions(self, ids: list[str] | None = None) -> JSON:
        """End the current period of ``ids`` (default: every active or trialing subscription)
        now, as Stripe does at a period end: cycle invoice, finalization, payment, events."""
        from .billing import renew_subscriptions

        with self.state.lock:
            return renew_subscriptions(self.ctx(), ids)

    def create_dispute(self, charge_id: str, reason: str = "fraudulent") -> JSON:
        from .payments import create_dispute

        with self.state.lock:
            out: JSON = orjson.loads(create_dispute(self.ctx(), charge_id, reason).to_bytes())
            return out


class AccountView(StateApi):
    """A connected account of the emulated platform (``emu.account("acct_...")``). Invalid
    after ``emu.reset()``, which drops every connected account."""

    def __init__(self, emu: Emulator, account_id: str, state: State) -> None:
        self.emu = emu
        self.id = account_id
        self.state = state

    @property
    def object(self) -> JSON:
        """The ``account`` object (``deleted: true`` once deleted)."""
        with self.state.lock:
            rec = self.emu.state.get("account", self.id)
            assert rec is not None
            obj: JSON = orjson.loads(rec.to_bytes())
            if rec.deleted:
                obj["deleted"] = True
            return obj

    @property
    def authorized(self) -> bool:
        """Connected: neither deleted nor deauthorized."""
        from .accounts import usable

        with self.state.lock:
            return usable(self.emu.state.get("account", self.id))

    def reset(self, seed: int | None = None) -> None:
        """Wipe this account's objects and events, its idempotency keys, its limit buckets and
        counters and its request counts; it stays connected."""
        with self.state.lock:
            self.state.reset(seed)
            self.emu.limits.forget_account(self.id)
            self.emu.stats.accounts.pop(self.id, None)
            server = self.emu._api_server
            if server is not None:
                for k in [k for k in server.idempotency if k[1] == self.id]:
                    del server.idempotency[k]


class Emulator(StateApi):
    """An emulated Stripe account behind an aiohttp server.

    ``api_key=None`` accepts any key starting with ``sk_test_`` or ``rk_test_``; a string accepts
    exactly that key.

    Stripe's limits are off unless asked for: ``stripe_limits="test"|"live"`` applies Stripe's
    documented numbers, then ``global_rate``, ``endpoint_rate``, ``meter_event_rate`` and
    ``meter_event_concurrency`` override them; ``rate_limit`` is the older name of
    ``global_rate``. ``connect_limits`` says how a request for a connected account
    (``Stripe-Account``) counts: ``"shared"`` (default) against its own limits and the
    platform's, ``"account"`` against its own only.

    Connect: ``POST /v1/accounts`` makes connected accounts; a request with
    ``Stripe-Account: acct_...`` is served from that account's own state (``emu.account(id)``).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        api_key: str | None = None,
        rate_limit: float | None = None,
        latency_ms: float = 0.0,
        late_visibility_ms: tuple[float, float] | None = None,
        stripe_limits: str | None = None,
        global_rate: float | None = None,
        endpoint_rate: float | None = None,
        meter_event_rate: float | None = None,
        meter_event_concurrency: bool | None = None,
        connect_limits: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.state = State(seed)
        self.faults = Faults(seed)
        self.faults.base_latency_ms = latency_ms
        self.limits = Limits()
        base = LimitConfig.stripe(stripe_limits) if stripe_limits else LimitConfig()
        overrides: dict[str, Any] = {
            "global_rate": global_rate if global_rate is not None else rate_limit,
            "endpoint_rate": endpoint_rate,
            "meter_event_rate": meter_event_rate,
            "meter_event_concurrency": meter_event_concurrency,
            "connect_limits": connect_limits,
        }
        self.limits.set_config(
            dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
        )
        self.limiter = LegacyRateLimiter(self.limits)
        self.stats = Stats()
        self.accepted_key = api_key
        self._api_server: ApiServer | None = None
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        if late_visibility_ms is not None:
            self.set_late_visibility(*late_visibility_ms)

    # lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        from .server import build_app

        app = build_app(self)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @classmethod
    @asynccontextmanager
    async def running(cls, **kw: Any) -> AsyncIterator[Emulator]:
        """``async with Emulator.running(port=0, seed=1) as emu:`` — server in this loop."""
        emu = cls(**kw)
        await emu.start()
        try:
            yield emu
        finally:
            await emu.stop()

    @classmethod
    @contextmanager
    def in_thread(cls, **kw: Any) -> Iterator[Emulator]:
        """Run the server on its own loop in a daemon thread (for sync SDK calls in tests)."""
        emu = cls(**kw)
        loop = asyncio.new_event_loop()
        started = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(emu.start())
            except BaseException as e:  # surfaced in the caller
                errors.append(e)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(emu.stop())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        t = threading.Thread(target=run, name="stripe-emulator", daemon=True)
        t.start()
        started.wait()
        if errors:
            t.join()
            loop.close()
            raise errors[0]
        try:
            yield emu
        finally:
            loop.call_soon_threadsafe(loop.stop)
            t.join(timeout=10)

    # addresses ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_key(self) -> str:
        return self.accepted_key or DEFAULT_API_KEY

    def key_ok(self, key: str) -> bool:
        if self.accepted_key is not None:
            return key == self.accepted_key
        return key.startswith(("sk_test_", "rk_test_"))

    @property
    def clock(self) -> Clock:
        return self.state.clock

    def client(self, **kw: Any) -> Any:
        """A ``stripe.StripeClient`` pointed at this emulator (both base addresses)."""
        import stripe

        kw.setdefault("max_network_retries", 0)
        return stripe.StripeClient(
            self.api_key, base_addresses={"api": self.url, "meter_events": self.url}, **kw
        )

    # state helpers -----------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        with self.state.lock:
            self.state.reset(seed)
            self.faults.clear()
            self.limits.clear()
            self.limits.reset_counters()
            self.stats.reset()
            if self._api_server is not None:
                self._api_server.idempotency.clear()

    # Connect -----------------------------------------------------------------------------
    @property
    def account_id(self) -> str:
        """The platform's own account id (``GET /v1/account``)."""
        return self.state.account_id

    def account(self, account_id: str) -> AccountView:
        """A connected account's own state, seeding and inspection: the same helpers as the
        emulator's, on that account. Deleted and deauthorized accounts too (their data stays)."""
        from .accounts import connected_state

        with self.state.lock:
            if self.state.get("account", account_id) is None:
                raise KeyError(f"no such connected account: {account_id!r}")
            return AccountView(self, account_id, connected_state(self.state, account_id))

    def create_account(self, **params: Any) -> JSON:
        """A connected account, as ``POST /v1/accounts`` makes it (e.g. ``type="express"``)."""
        from .accounts import create_account

        with self.state.lock:
            out: JSON = orjson.loads(create_account(self.ctx(), params, {}).body)
            return out

    def deauthorize_account(self, account_id: str) -> JSON:
        """The account disconnects from the platform: ``account.application.deauthorized`` on
        the platform, and 403 ``account_invalid`` for its ``Stripe-Account`` from now on."""
        from .accounts import set_authorized

        with self.state.lock:
            return set_authorized(self.state, account_id, False)

    def authorize_account(self, account_id: str) -> JSON:
        """A deauthorized account connects again: ``account.application.authorized``."""
        from .accounts import set_authorized

        with self.state.lock:
            return set_authorized(self.state, account_id, True)
