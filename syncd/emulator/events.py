"""``GET /v1/events`` and ``/v1/events/{id}``: newest first, type wildcards, ``types[]``,
30-day retention and late visibility (SYNC_PITFALLS 1-3, 6)."""

from __future__ import annotations

import fnmatch
import time

from .errors import StripeError, invalid, missing
from .framework import Ctx, Resp, route
from .lists import list_body, page_collection, parse_list_params
from .state import JSON, RETENTION_SECONDS, Record


def expired_cursor(id_: str, param: str) -> StripeError:
    return StripeError(
        400,
        f"The event {id_} passed in `{param}` is older than 30 days and is no longer available. "
        "Events are only retained for 30 days; use the `created` filter to page older data.",
        param=param,
    )


@route("GET", "/v1/events")
def list_events(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    lp = parse_list_params(params)
    state = ctx.state
    now = state.clock.now()
    lp.created_lo = max(lp.created_lo, now - RETENTION_SECONDS)
    patterns: list[str] = []
    if params.get("type"):
        patterns.append(str(params["type"]))
    types = params.get("types")
    if types is not None:
        if not isinstance(types, list):
            types = [types]
        if len(types) > 20:
            raise invalid("You may only pass up to 20 types.", param="types")
        if params.get("type"):
            raise invalid("You cannot pass both `type` and `types`.", param="types")
        patterns.extend(str(t) for t in types)
    exact = {p for p in patterns if "*" not in p}
    wild = [p for p in patterns if "*" in p]
    mono = time.monotonic()
    late = state.ever_late

    def pred(r: Record) -> bool:
        if late:
            va = r.extra.get("visible_at")
            if va is not None and va > mono:
                return False
        if not patterns:
            return True
        t = r.obj["type"]
        return t in exact or any(fnmatch.fnmatchcase(t, w) for w in wild)

    def cursor_check(r: Record, param: str) -> None:
        if r.created < now - RETENTION_SECONDS:
            raise expired_cursor(r.id, param)

    # No deleted flag on events; pred None keeps the fast slicing path when nothing filters.
    use_pred = pred if (patterns or late) else None
    page, more = page_collection(state.coll("event"), lp, use_pred, "event", cursor_check)
    return Resp(list_body([r.to_bytes() for r in page], more, "/v1/events"))


@route("GET", "/v1/events/{id}")
def get_event(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = ctx.state.get("event", m["id"])
    if rec is None or ctx.state.event_expired(rec):
        raise missing("event", m["id"])
    return Resp(rec.to_bytes())
