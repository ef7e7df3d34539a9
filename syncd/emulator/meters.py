"""Billing meters, meter events (with Stripe's synchronous validation and identifier dedup),
event summaries and exact recorded totals for tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import orjson

from .errors import StripeError, invalid
from .framework import (
    Ctx,
    Resp,
    all_of,
    field_eq,
    get_or_404,
    list_response,
    need,
    new_object,
    route,
    to_int,
    update_record,
)
from .lists import list_body, page_sequence, parse_list_params
from .state import JSON, Record, State

IDENTIFIER_TTL = 24 * 3600
PAST_LIMIT = 35 * 86400
FUTURE_LIMIT = 5 * 60


@dataclass
class MeterEvent:
    meter: str
    customer: str
    timestamp: int
    value: Decimal
    identifier: str
    created: int


@dataclass
class MeterStore:
    events: list[MeterEvent] = field(default_factory=list)
    identifiers: dict[str, int] = field(default_factory=dict)  # identifier -> created


def store(ctx: Ctx) -> MeterStore:
    st = ctx.state.meters_state
    if st is None:
        st = ctx.state.meters_state = MeterStore()
    assert isinstance(st, MeterStore)
    return st


@route("POST", "/v1/billing/meters")
def create_meter(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    event_name = str(need(params, "event_name"))
    display = str(need(params, "display_name"))
    agg = params.get("default_aggregation") or {}
    formula = agg.get("formula") if isinstance(agg, dict) else None
    if formula not in ("sum", "count", "last"):
        raise invalid(
            "Missing required param: default_aggregation[formula].",
            param="default_aggregation[formula]",
        )
    for r in ctx.state.iter_type("billing.meter"):
        if r.obj["event_name"] == event_name and r.obj["status"] == "active":
            raise invalid(
                f"A meter with event_name `{event_name}` already exists.", param="event_name"
            )
    cm = params.get("customer_mapping") or {}
    vs = params.get("value_settings") or {}
    obj = new_object(ctx, "billing.meter", "mtr_")
    obj.update(
        customer_mapping={
            "event_payload_key": cm.get("event_payload_key") or "stripe_customer_id",
            "type": cm.get("type") or "by_id",
        },
        default_aggregation={"formula": formula},
        display_name=display,
        event_name=event_name,
        event_time_window=params.get("event_time_window") or None,
        status="active",
        status_transitions={"deactivated_at": None},
        updated=obj["created"],
        value_settings={"event_payload_key": vs.get("event_payload_key") or "value"},
    )
    rec = ctx.state.insert(obj)
    ctx.emit("billing.meter.created", rec)
    return ctx.ok(rec)


@route("GET", "/v1/billing/meters/{id}")
def get_meter(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    return ctx.ok(get_or_404(ctx, "billing.meter", m["id"], "billing.meter"))


@route("POST", "/v1/billing/meters/{id}")
def update_meter(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "billing.meter", m["id"], "billing.meter")

    def mut(o: JSON) -> None:
        if params.get("display_name"):
            o["display_name"] = str(params["display_name"])

    return ctx.ok(update_record(ctx, rec, mut, "billing.meter.updated"))


@route("POST", "/v1/billing/meters/{id}/deactivate")
def deactivate_meter(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "billing.meter", m["id"], "billing.meter")
    update_record(
        ctx,
        rec,
        lambda o: o.update(status="inactive", status_transitions={"deactivated_at": ctx.now}),
        None,
    )
    ctx.emit("billing.meter.deactivated", rec)
    return ctx.ok(rec)


@route("POST", "/v1/billing/meters/{id}/reactivate")
def reactivate_meter(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = get_or_404(ctx, "billing.meter", m["id"], "billing.meter")
    update_record(
        ctx,
        rec,
        lambda o: o.update(status="active", status_transitions={"deactivated_at": None}),
        None,
    )
    ctx.emit("billing.meter.reactivated", rec)
    return ctx.ok(rec)


@route("GET", "/v1/billing/meters")
def list_meters(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    preds: list[Callable[[Record], bool]] = []
    if params.get("status"):
        preds.append(field_eq("status", params["status"]))
    return list_response(
        ctx, "billing.meter", "/v1/billing/meters", params, all_of(preds), "billing.meter"
    )


def _meter_for(ctx: Ctx, event_name: str) -> Record:
    for r in ctx.state.iter_type("billing.meter"):
        if r.obj["event_name"] == event_name and r.obj["status"] == "active":
            return r
    raise invalid(f"No active meter was found with event_name `{event_name}`.", param="event_name")


def concurrency_key(state: State, params: JSON) -> tuple[str, str] | None:
    """The (meter id, customer id) a meter event reports on, for Stripe's one-concurrent-call
    rule; None when the event names no active meter or customer (the handler answers 400)."""
    payload = params.get("payload")
    if not isinstance(payload, dict):
        return None
    for r in state.iter_type("billing.meter"):
        if r.obj["event_name"] == params.get("event_name") and r.obj["status"] == "active":
            cus = payload.get(r.obj["customer_mapping"]["event_payload_key"])
            return (r.id, str(cus)) if cus else None
    return None


@route("POST", "/v1/billing/meter_events")
def create_meter_event(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    event_name = str(need(params, "event_name"))
    payload = params.get("payload")
    if not isinstance(payload, dict):
        raise invalid("Missing required param: payload.", param="payload")
    meter = _meter_for(ctx, event_name)
    now = ctx.now
    ckey = meter.obj["customer_mapping"]["event_payload_key"]
    vkey = meter.obj["value_settings"]["event_payload_key"]
    cus = payload.get(ckey)
    if not cus:
        raise invalid(f"Missing required param: payload[{ckey}].", param=f"payload[{ckey}]")
    c = ctx.state.get("customer", str(cus))
    if c is None or c.deleted:
        raise StripeError(
            400, f"No such customer: '{cus}'", code="resource_missing", param=f"payload[{ckey}]"
        )
    formula = meter.obj["default_aggregation"]["formula"]
    raw = payload.get(vkey)
    if raw is None or raw == "":
        if formula != "count":
            raise invalid(f"Missing required param: payload[{vkey}].", param=f"payload[{vkey}]")
        raw = "1"
    try:
        value = Decimal(str(raw))
        if not value.is_finite():
            raise InvalidOperation
    except InvalidOperation:
        raise invalid(
            f"Invalid payload[{vkey}]: must be a number, got `{raw}`.", param=f"payload[{vkey}]"
        ) from None
    ts_raw = params.get("timestamp")
    ts = now if ts_raw in (None, "") else to_int(ts_raw, "timestamp")
    if ts < now - PAST_LIMIT:
        raise invalid("Timestamp must be within the past 35 calendar days.", param="timestamp")
    if ts > now + FUTURE_LIMIT:
        raise invalid("Timestamp cannot be more than 5 minutes in the future.", param="timestamp")
    ms = store(ctx)
    ident = str(params.get("identifier") or ctx.state.new_id("", 32))
    seen = ms.identifiers.get(ident)
    if seen is not None and seen > now - IDENTIFIER_TTL:
        # Stripe's wording; the event was delivered before, so callers treat this as success.
        raise StripeError(
            400,
            f"An event already exists with identifier {ident}.",
            param="identifier",
            headers={"Stripe-Should-Retry": "false"},
        )
    ms.identifiers[ident] = now
    ms.events.append(MeterEvent(meter.id, str(cus), ts, value, ident, now))
    obj = new_object(ctx, "billing.meter_event", "")
    obj.pop("id", None)
    obj.update(
        created=now,
        event_name=event_name,
        identifier=ident,
        payload={k: str(v) for k, v in payload.items()},
        timestamp=ts,
    )
    return Resp(orjson.dumps(obj))


def aggregate(events: list[MeterEvent], formula: str) -> Decimal:
    if formula == "count":
        return Decimal(len(events))
    if formula == "last":
        if not events:
            return Decimal(0)
        return max(events, key=lambda e: (e.timestamp, e.created)).value
    return sum((e.value for e in events), Decimal(0))


def totals(ms: MeterStore, formulas: dict[str, str]) -> dict[tuple[str, str], Decimal]:
    groups: dict[tuple[str, str], list[MeterEvent]] = {}
    for e in ms.events:
        groups.setdefault((e.meter, e.customer), []).append(e)
    return {k: aggregate(v, formulas.get(k[0], "sum")) for k, v in groups.items()}


def _num(d: Decimal) -> float | int:
    return int(d) if d == d.to_integral_value() else float(d)


@route("GET", "/v1/billing/meters/{id}/event_summaries")
def event_summaries(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    meter = get_or_404(ctx, "billing.meter", m["id"], "billing.meter")
    cus = str(need(params, "customer"))
    start = to_int(need(params, "start_time"), "start_time")
    end = to_int(need(params, "end_time"), "end_time")
    if end <= start:
        raise invalid("end_time must be after start_time.", param="end_time")
    window = params.get("value_grouping_window")
    step = {"hour": 3600, "day": 86400}.get(str(window), end - start) if window else end - start
    formula = meter.obj["default_aggregation"]["formula"]
    evs = [
        e
        for e in store(ctx).events
        if e.meter == meter.id and e.customer == cus and start <= e.timestamp < end
    ]
    summaries: list[Record] = []
    t = start
    while t < end:
        t2 = min(t + step, end)
        bucket = [e for e in evs if t <= e.timestamp < t2]
        obj: JSON = {
            "id": f"mtrusg_{meter.id[4:]}_{t}",
            "object": "billing.meter_event_summary",
            "aggregated_value": _num(aggregate(bucket, formula)),
            "end_time": t2,
            "livemode": False,
            "meter": meter.id,
            "start_time": t,
        }
        summaries.append(Record("billing.meter_event_summary", obj, t, 0))
        t = t2
    summaries.reverse()  # newest window first, as Stripe lists
    page, more = page_sequence(summaries, parse_list_params(params), "meter_event_summary")
    return Resp(
        list_body(
            [orjson.dumps(r.obj) for r in page],
            more,
            f"/v1/billing/meters/{meter.id}/event_summaries",
        )
    )
