"""The ``/_emulator/`` control API (no API key): clock, faults, Stripe's limits, seeding,
import, inspection, counters, realism switches and test helpers.

Routes about one account's data take ``?account=acct_...`` (or a ``Stripe-Account`` header) to
act on that connected account instead of the platform; an unknown account answers 404.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from .errors import StripeError
from .forms import decode
from .limits import ENDPOINT_RATE, LimitConfig

if TYPE_CHECKING:
    from .emulator import Emulator, StateApi


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
    )


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return {k: v for k, v in request.query.items() if k != "account"}
    if request.content_type == "application/json" or raw[:1] in (b"{", b"["):
        return orjson.loads(raw)
    return decode(raw.decode())


def _rate(v: Any, default: float | None = None) -> float | None:
    if v is True:
        if default is None:
            raise ValueError("a rate must be a number, or null to turn it off")
        return default
    return float(v) if v not in (None, "", 0) else None  # False == 0: off


def _truthy(v: Any) -> bool:
    return v in (True, "true", "1", 1)


def limit_config(current: LimitConfig, b: Any) -> LimitConfig:
    """The configuration a ``POST /_emulator/limits`` body asks for: ``stripe_limits`` (a preset,
    or null for all off) first, then the individual fields; absent fields keep their value."""
    if not isinstance(b, dict):
        raise ValueError("expected a JSON object")
    unknown = set(b) - {"stripe_limits", *LimitConfig.__dataclass_fields__}
    if unknown:
        raise ValueError(f"unknown fields: {sorted(unknown)}")
    cfg = current
    if "stripe_limits" in b:
        cfg = LimitConfig.stripe(str(b["stripe_limits"])) if b["stripe_limits"] else LimitConfig()
    changes: dict[str, Any] = {}
    for k in ("global_rate", "global_burst", "meter_event_rate"):
        if k in b:
            changes[k] = _rate(b[k])
    if "endpoint_rate" in b:
        changes["endpoint_rate"] = _rate(b["endpoint_rate"], ENDPOINT_RATE)
    if "endpoint_rates" in b:
        rates = b["endpoint_rates"] or {}
        if not isinstance(rates, dict):
            raise ValueError("endpoint_rates must map 'METHOD /path' to a rate")
        changes["endpoint_rates"] = {k: float(v) for k, v in rates.items()}
    if "meter_event_concurrency" in b:
        changes["meter_event_concurrency"] = _truthy(b["meter_event_concurrency"])
    if "mode" in b:
        changes["mode"] = b["mode"] or None
    if "connect_limits" in b:
        changes["connect_limits"] = b["connect_limits"]
    return dataclasses.replace(cfg, **changes)


def add_control_routes(app: web.Application, emu: Emulator) -> None:
    r = app.router

    def _account(req: web.Request) -> str | None:
        """The connected account a control request is about (None: the platform)."""
        account = req.query.get("account") or req.headers.get("Stripe-Account") or None
        return None if account == emu.account_id else account

    def scope(req: web.Request) -> StateApi:
        """The platform (the emulator) or the connected account the request names."""
        account = _account(req)
        if account is None:
            return emu
        try:
            return emu.account(account)
        except KeyError:
            raise web.HTTPNotFound(
                text=orjson.dumps({"error": f"no such connected account: {account}"}).decode(),
                content_type="application/json",
            ) from None

    async def reset(req: web.Request) -> web.Response:
        b = await _body(req)
        seed = b.get("seed") if isinstance(b, dict) else None
        scope(req).reset(int(seed) if seed is not None else None)
        return _json({"ok": True})

    async def clock_get(req: web.Request) -> web.Response:
        return _json(emu.clock.as_json())

    async def clock_post(req: web.Request) -> web.Response:
        b = await _body(req)
        action = b.get("action")
        with emu.state.lock:
            if action == "freeze":
                emu.clock.freeze(float(b["at"]) if b.get("at") is not None else None)
            elif action == "unfreeze":
                emu.clock.unfreeze()
            elif action == "advance":
                emu.clock.advance(float(b.get("seconds", 0)))
            elif action == "set":
                emu.clock.set(float(b["time"]))
            else:
                return _json({"error": "action must be freeze|unfreeze|advance|set"}, 400)
        return _json(emu.clock.as_json())

    async def faults_get(req: web.Request) -> web.Response:
        return _json(emu.faults.as_json())

    async def faults_post(req: web.Request) -> web.Response:
        b = await _body(req)
        rules = (
            b
            if isinstance(b, list)
            else b.get("rules", [b] if "pattern" in b or "lock_object_id" in b else [])
        )
        if isinstance(b, dict) and "latency_ms" in b and not rules:
            emu.faults.base_latency_ms = float(b["latency_ms"])
        try:
            for rule in rules:
                emu.faults.set(**rule)
        except (TypeError, ValueError) as e:
            return _json({"error": str(e)}, 400)
        return _json(emu.faults.as_json())

    async def faults_delete(req: web.Request) -> web.Response:
        emu.faults.clear()
        emu.faults.base_latency_ms = 0.0
        return _json(emu.faults.as_json())

    async def ratelimit_get(req: web.Request) -> web.Response:
        return _json(emu.limiter.as_json())

    async def ratelimit_post(req: web.Request) -> web.Response:
        b = await _body(req)
        rate = b.get("rate")
        burst = b.get("burst")
        emu.limiter.configure(
            float(rate) if rate not in (None, "", 0) else None,
            float(burst) if burst not in (None, "") else None,
        )
        return _json(emu.limiter.as_json())

    async def limits_get(req: web.Request) -> web.Response:
        return _json(emu.limits.as_json(_account(req)))

    async def limits_post(req: web.Request) -> web.Response:
        try:
            emu.limits.set_config(limit_config(emu.limits.config, await _body(req)))
        except (TypeError, ValueError) as e:
            return _json({"error": str(e)}, 400)
        return _json(emu.limits.as_json())

    async def limits_delete(req: web.Request) -> web.Response:
        emu.limits.clear()
        return _json(emu.limits.as_json())

    async def limit_counters_delete(req: web.Request) -> web.Response:
        emu.limits.reset_counters()
        return _json(emu.limits.as_json())

    async def seed(req: web.Request) -> web.Response:
        b = await _body(req)
        kw = {
            k: (v if isinstance(v, bool) else int(v))
            if k != "events"
            else (v in (True, "true", "1", 1))
            for k, v in b.items()
        }
        return _json(scope(req).seed(**kw))

    async def import_(req: web.Request) -> web.Response:
        b = await _body(req)
        objs = b.get("objects", b) if isinstance(b, dict) and "objects" in b else b
        return _json({"imported": scope(req).import_objects(objs)})

    async def objects(req: web.Request) -> web.Response:
        type_ = req.match_info["type"]
        data = scope(req).objects(type_)
        return _json({"object": "list", "data": data, "count": len(data)})

    async def stats_get(req: web.Request) -> web.Response:
        return _json(emu.stats.as_json(_account(req)))

    async def stats_delete(req: web.Request) -> web.Response:
        account = _account(req)
        if account is None:
            emu.stats.reset()
        else:
            emu.stats.accounts.pop(account, None)
        return _json(emu.stats.as_json(account))

    async def visibility_get(req: web.Request) -> web.Response:
        state = scope(req).state
        lv = state.late_visibility
        return _json(
            {
                "late_visibility_ms": None if lv is None else [lv[0] * 1000, lv[1] * 1000],
                "burst": state.burst_created is not None,
            }
        )

    async def visibility_post(req: web.Request) -> web.Response:
        b = await _body(req)
        target = scope(req)
        if "late_visibility_ms" in b:
            lv = b["late_visibility_ms"]
            if lv in (None, "", False):
                target.clear_late_visibility()
            else:
                target.set_late_visibility(float(lv[0]), float(lv[1]))
        if "min_ms" in b:
            target.set_late_visibility(float(b["min_ms"]), float(b.get("max_ms", b["min_ms"])))
        if "burst" in b:
            target.set_burst(b["burst"] in (True, "true", "1", 1))
        return await visibility_get(req)

    async def meter_totals(req: web.Request) -> web.Response:
        target = scope(req)
        tot = target.meter_totals()
        return _json(
            {
                "totals": [
                    {"meter": m, "customer": c, "value": str(v)}
                    for (m, c), v in sorted(tot.items())
                ],
                "usage_records": target.usage_totals(),
            }
        )

    async def complete_checkout(req: web.Request) -> web.Response:
        b = await _body(req)
        try:
            return _json(scope(req).complete_checkout_session(req.match_info["id"], **b))
        except StripeError as e:
            return web.Response(body=e.body(), status=e.status, content_type="application/json")

    async def renew(req: web.Request) -> web.Response:
        b = await _body(req)
        ids = b.get("ids") if isinstance(b, dict) else b
        if ids is not None and (
            not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)
        ):
            return _json({"error": "ids must be a list of subscription ids"}, 400)
        try:
            return _json(scope(req).renew_subscriptions(ids))
        except StripeError as e:
            return web.Response(body=e.body(), status=e.status, content_type="application/json")

    async def dispute(req: web.Request) -> web.Response:
        b = await _body(req)
        try:
            target = scope(req)
            return _json(
                target.create_dispute(str(b["charge"]), str(b.get("reason", "fraudulent")))
            )
        except StripeError as e:
            return web.Response(body=e.body(), status=e.status, content_type="application/json")

    r.add_post("/_emulator/reset", reset)
    r.add_get("/_emulator/clock", clock_get)
    r.add_post("/_emulator/clock", clock_post)
    r.add_get("/_emulator/faults", faults_get)
    r.add_post("/_emulator/faults", faults_post)
    r.add_delete("/_emulator/faults", faults_delete)
    r.add_get("/_emulator/ratelimit", ratelimit_get)
    r.add_post("/_emulator/ratelimit", ratelimit_post)
    r.add_get("/_emulator/limits", limits_get)
    r.add_post("/_emulator/limits", limits_post)
    r.add_delete("/_emulator/limits", limits_delete)
    r.add_delete("/_emulator/limits/counters", limit_counters_delete)
    r.add_post("/_emulator/seed", seed)
    r.add_post("/_emulator/import", import_)
    r.add_get("/_emulator/objects/{type}", objects)
    r.add_get("/_emulator/stats", stats_get)
    r.add_delete("/_emulator/stats", stats_delete)
    r.add_get("/_emulator/events/visibility", visibility_get)
    r.add_post("/_emulator/events/visibility", visibility_post)
    r.add_get("/_emulator/meter_totals", meter_totals)
    r.add_post("/_emulator/checkout/sessions/{id}/complete", complete_checkout)
    r.add_post("/_emulator/disputes", dispute)
    r.add_post("/_emulator/renew", renew)

    async def deauthorize(req: web.Request) -> web.Response:
        try:
            return _json(emu.deauthorize_account(req.match_info["id"]))
        except StripeError as e:
            return web.Response(body=e.body(), status=e.status, content_type="application/json")

    async def authorize(req: web.Request) -> web.Response:
        try:
            return _json(emu.authorize_account(req.match_info["id"]))
        except StripeError as e:
            return web.Response(body=e.body(), status=e.status, content_type="application/json")

    r.add_post("/_emulator/accounts/{id}/deauthorize", deauthorize)
    r.add_post("/_emulator/accounts/{id}/authorize", authorize)
