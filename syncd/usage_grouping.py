"""What claimed usage rows become: each row checked (bad input rejected with a reason, rows
that cannot go yet left waiting), the rest summed exactly per (customer or item, metric, time
bucket) into events, and each event's request to Stripe (a meter event or a legacy usage record).
An event goes to the account of its customer (Connect): `accounts` maps customers to it, ''
is the key's own account; each account has meters of its own.
No I/O: `usage.UsageFlusher` claims the rows, stores the requests and sends them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, Inexact, localcontext
from typing import Any

from syncd.config import Config
from syncd.db import Row

METER_EVENTS_PATH = "/v1/billing/meter_events"
# Stripe accepts meter events at most this far in the future; rows further ahead are bad input
# beyond FUTURE_REJECT, and wait until they are due in between.
FUTURE_LIMIT = 300
FUTURE_REJECT = 3600
# Stripe keeps meter event values as doubles: it refuses (API 2026-04-22 and later) or rounds
# (earlier versions) a value with more significant digits than this.
METER_VALUE_DIGITS = 15
# Sums of quantities are exact: Python's default decimal context rounds to 28 significant digits
# without a word. This one never rounds (additions of numerics PostgreSQL can hold fit many times
# over), and would raise rather than round if it ever had to.
EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[Inexact])


@dataclass(frozen=True)
class Meter:
    id: str
    event_name: str
    customer_key: str
    value_key: str


@dataclass
class Event:
    """One request to Stripe, being assembled from rows."""

    customer_id: str
    metric: str
    event_name: str | None
    item: str | None
    ts: int
    account: str = ""  # the Stripe account the request goes to ('': the key's own)
    value: Decimal = Decimal(0)
    row_ids: list[int] = field(default_factory=list)


def value_text(value: Decimal) -> str:
    """A decimal as Stripe wants it in a meter payload: plain digits, no exponent, exact."""
    text = format(value.normalize(EXACT), "f")
    return text if text != "-0" else "0"


def meter_value_problem(value: Decimal) -> str | None:
    """Why Stripe cannot take this meter value exactly, or None when it can."""
    if not value.is_finite():
        return "is not a finite number"
    shape = value.as_tuple()
    if len(shape.digits) <= METER_VALUE_DIGITS and -290 < int(shape.exponent) < 290:
        # The common case, without arithmetic: 15 digits well inside a double's normal range
        # come back from a double unchanged.
        return None
    digits = len(value.normalize(EXACT).as_tuple().digits)
    if digits > METER_VALUE_DIGITS:
        return f"has {digits} significant digits, Stripe meter values at most {METER_VALUE_DIGITS}"
    if value and Decimal(repr(float(value))) != value:
        return "is out of the range of Stripe meter values (double precision)"
    return None


def classify(
    cfg: Config,
    rows: Sequence[Row],
    meters: Mapping[str, Mapping[str, Meter]],
    items: Mapping[str, list[tuple[str, str | None]]],
    accounts: Mapping[str, str],
) -> tuple[list[Event], list[tuple[int, str]], int]:
    """Group good rows into events; bad ones get a reason; others wait for a later flush.
    `meters`: per account, the metrics whose meter exists; `accounts`: customer -> connected
    account (absent: the key's own, ''). Totals are exact; an event whose total Stripe cannot
    take exactly fails its rows."""
    events: dict[tuple[str, str, int], Event] = {}
    rejected: list[tuple[int, str]] = []
    with localcontext(EXACT):
        waiting = _group(cfg, rows, meters, items, accounts, events, rejected)
    good: list[Event] = []
    for event in events.values():
        reason = _unsendable(cfg, event)
        if reason is not None:
            rejected.extend((row_id, reason) for row_id in event.row_ids)
        else:
            good.append(event)
    return good, rejected, waiting


def _group(
    cfg: Config,
    rows: Sequence[Row],
    meters: Mapping[str, Mapping[str, Meter]],
    items: Mapping[str, list[tuple[str, str | None]]],
    accounts: Mapping[str, str],
    events: dict[tuple[str, str, int], Event],
    rejected: list[tuple[int, str]],
) -> int:
    """Add the rows to their events (exactly: run in the EXACT context); returns how many
    rows wait for a later flush."""
    usage = cfg.usage
    bucket = usage.bucket_seconds
    legacy = usage.target == "legacy"
    grace = usage.unresolved_grace
    waiting = 0
    for r in rows:
        row_id, metric, ts, now = r["id"], r["metric"], r["ts"], r["now"]
        customer = r["customer_id"]
        if customer and cfg.stripe.accounts and customer not in accounts and r["age"] < grace:
            # Connect: whose account the customer is in is known once the mirror has it (a
            # customer just created in a connected account); after the grace, the key's own.
            waiting += 1
            continue
        account = accounts.get(customer, "") if customer else ""
        if not legacy and metric not in usage.meters:
            rejected.append((row_id, f"rejected: unknown metric {metric!r} (not in usage.meters)"))
            continue
        if ts > now + FUTURE_REJECT:
            rejected.append((row_id, "rejected: timestamp more than an hour in the future"))
            continue
        if ts > now + FUTURE_LIMIT:
            waiting += 1  # due soon: Stripe takes it once it is within 5 minutes
            continue
        if not legacy and metric not in meters.get(account, {}):
            waiting += 1  # the meter is missing in (this account of) Stripe: see usage_meters
            continue
        problem = None if legacy else meter_value_problem(r["quantity"])
        if problem is not None:
            rejected.append((row_id, f"rejected: quantity {r['quantity']} {problem}"))
            continue
        if customer is None:
            if r["age"] < grace:
                waiting += 1  # the mirror may not have the subscription or customer yet
            else:
                rejected.append((row_id, _unresolved_reason(r, cfg)))
            continue
        item = None
        if legacy:
            item, reason = _legacy_item(r["subscription_id"], metric, items)
            if item is None:
                # No item yet may be mirror lag: wait out the grace, unless it cannot help.
                if r["age"] >= grace or r["subscription_id"] is None:
                    rejected.append((row_id, reason or "rejected: no metered item"))
                else:
                    waiting += 1
                continue
        start = ts - ts % bucket
        # A customer (and its items) belongs to one account: the key needs no account.
        key = (item or customer, metric, start)
        event = events.get(key)
        if event is None:
            event_name = None if legacy else meters[account][metric].event_name
            event = events[key] = Event(customer, metric, event_name, item, start, account)
        event.value += r["quantity"]
        event.row_ids.append(row_id)
    return waiting


def _unsendable(cfg: Config, event: Event) -> str | None:
    """Why an event's exact total cannot be sent to Stripe (its rows then fail), or None."""
    if cfg.usage.target == "legacy":
        if event.value != event.value.to_integral_value():
            return f"rejected: legacy usage records take whole quantities, got {event.value}"
        return None
    problem = meter_value_problem(event.value)
    if problem is None:
        return None
    return (
        f"rejected: the total {value_text(event.value)} of {len(event.row_ids)} rows"
        f" (customer {event.customer_id}, {event.metric}, bucket {event.ts}) {problem};"
        " it cannot be sent exactly"
    )


def event_request(
    e: Event, identifier: str, meters: Mapping[str, Meter]
) -> tuple[str, str, dict[str, Any]]:
    """(path, base address, parameters) of the event's request to Stripe; `meters`: those of
    the event's account."""
    if e.item is not None:
        params: dict[str, Any] = {
            "quantity": int(e.value),
            "timestamp": e.ts,
            "action": "increment",
        }
        return f"/v1/subscription_items/{e.item}/usage_records", "api", params
    # Only metrics whose meter was found get here (see classify). The payload keys are the
    # meter's own (customer_mapping / value_settings), stored with the request.
    meter = meters[e.metric]
    params = {
        "event_name": meter.event_name,
        "identifier": identifier,
        "timestamp": e.ts,
        "payload": {meter.customer_key: e.customer_id, meter.value_key: value_text(e.value)},
    }
    return METER_EVENTS_PATH, "meter_events", params


def _legacy_item(
    subscription_id: str | None, metric: str, items: Mapping[str, list[tuple[str, str | None]]]
) -> tuple[str | None, str | None]:
    """The metered item of the subscription for this metric: the one whose price's lookup_key
    is the metric, else the subscription's only metered item."""
    if subscription_id is None:
        return None, "rejected: the legacy target needs subscription_id on each row"
    candidates = items.get(subscription_id, [])
    for item, lookup_key in candidates:
        if lookup_key == metric:
            return item, None
    if len(candidates) == 1:
        return candidates[0][0], None
    if not candidates:
        reason = f"no metered item on subscription {subscription_id} in the mirror"
    else:
        reason = f"several metered items on {subscription_id}; none has lookup_key {metric!r}"
    return None, f"rejected: {reason}"


def _unresolved_reason(row: Row, cfg: Config) -> str:
    mirror = cfg.database.mirror_schema
    tried = []
    if row["subscription_id"]:
        tried.append(f"subscription {row['subscription_id']} not in {mirror}.subscriptions")
    if row["user_id"]:
        tried.append(f"no live customer with user_id {row['user_id']} in {mirror}.customers")
    return "rejected: no customer: " + "; ".join(tried)
