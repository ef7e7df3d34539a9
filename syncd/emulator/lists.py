"""List endpoints: Stripe's cursor pagination, ``created`` filters, list bodies built from bytes.

Semantics reproduced (see SYNC_PITFALLS.md 1, 10, 11):
* newest first: reverse ``created``; equal ``created`` → the later inserted comes first;
* ``starting_after=X`` → the items just *older* than X; ``ending_before=X`` → the items just
  *newer* than X, still rendered newest first, ``has_more`` telling whether even newer ones exist;
* ``limit`` 1..100, default 10; an unknown cursor id → 400 ``No such <type>: 'id'``.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import StripeError, invalid
from .state import Collection, Record

Pred = Callable[[Record], bool]
_BIG = 1 << 62


@dataclass
class ListParams:
    limit: int = 10
    starting_after: str | None = None
    ending_before: str | None = None
    created_lo: int = -_BIG  # inclusive bounds on created
    created_hi: int = _BIG


def parse_int(v: Any, param: str) -> int:
    try:
        return int(str(v))
    except ValueError:
        raise invalid(f"Invalid integer: {v}", param=param) from None


def parse_range(v: Any, param: str) -> tuple[int, int]:
    """``created=<int>`` or ``created[gt|gte|lt|lte]=<int>`` → inclusive (lo, hi)."""
    lo, hi = -_BIG, _BIG
    if isinstance(v, dict):
        for op, raw in v.items():
            n = parse_int(raw, f"{param}[{op}]")
            if op == "gt":
                lo = max(lo, n + 1)
            elif op == "gte":
                lo = max(lo, n)
            elif op == "lt":
                hi = min(hi, n - 1)
            elif op == "lte":
                hi = min(hi, n)
            else:
                raise invalid(f"Received unknown parameter: {param}[{op}]", param=f"{param}[{op}]")
    else:
        n = parse_int(v, param)
        lo = hi = n
    return lo, hi


def parse_list_params(params: dict[str, Any]) -> ListParams:
    lp = ListParams()
    if "limit" in params:
        lp.limit = parse_int(params["limit"], "limit")
        if not 1 <= lp.limit <= 100:
            raise invalid(
                f"Invalid limit: must be between 1 and 100 (got {lp.limit})",
                param="limit",
            )
    sa = params.get("starting_after") or None
    eb = params.get("ending_before") or None
    if sa and eb:
        raise invalid(
            "Received both starting_after and ending_before parameters. Please pass in only one."
        )
    lp.starting_after = sa
    lp.ending_before = eb
    if "created" in params:
        lp.created_lo, lp.created_hi = parse_range(params["created"], "created")
    return lp


def cursor_error(kind: str, id_: str, param: str) -> StripeError:
    # Stripe answers 400 (not 404) for an unknown cursor, with the object kind in the text.
    return StripeError(400, f"No such {kind}: '{id_}'", code="resource_missing", param=param)


def page_collection(
    coll: Collection,
    lp: ListParams,
    pred: Pred | None,
    kind: str,
    cursor_check: Callable[[Record, str], None] | None = None,
) -> tuple[list[Record], bool]:
    """One page from a sorted collection, newest first."""
    keys = coll.keys
    recs = coll.records
    lo_i = bisect.bisect_left(keys, (lp.created_lo, -1)) if lp.created_lo > -_BIG else 0
    hi_i = bisect.bisect_right(keys, (lp.created_hi, _BIG)) if lp.created_hi < _BIG else len(keys)
    for param, cid in (("starting_after", lp.starting_after), ("ending_before", lp.ending_before)):
        if cid is None:
            continue
        crec = coll.get(cid)
        if crec is None:
            raise cursor_error(kind, cid, param)
        if cursor_check is not None:
            cursor_check(crec, param)
        p = coll.index(crec)
        if param == "starting_after":
            hi_i = min(hi_i, p)
        else:
            lo_i = max(lo_i, p + 1)
    want = lp.limit + 1
    out: list[Record] = []
    if lp.ending_before is not None:
        i = lo_i
        while i < hi_i and len(out) < want:
            r = recs[i]
            if pred is None or pred(r):
                out.append(r)
            i += 1
        has_more = len(out) > lp.limit
        page = out[: lp.limit]
        page.reverse()
        return page, has_more
    i = hi_i - 1
    if pred is None:
        start = max(lo_i, hi_i - want)
        out = recs[start:hi_i]
        out.reverse()
    else:
        while i >= lo_i and len(out) < want:
            r = recs[i]
            if pred(r):
                out.append(r)
            i -= 1
    return out[: lp.limit], len(out) > lp.limit


def page_sequence(items: Sequence[Record], lp: ListParams, kind: str) -> tuple[list[Record], bool]:
    """Page a child list kept in display order (invoice lines, subscription items...)."""
    start, end = 0, len(items)
    if lp.starting_after is not None or lp.ending_before is not None:
        cid = lp.starting_after or lp.ending_before
        idx = next((i for i, r in enumerate(items) if r.id == cid), None)
        if idx is None:
            raise cursor_error(
                kind, str(cid), "starting_after" if lp.starting_after else "ending_before"
            )
        if lp.starting_after is not None:
            start = idx + 1
        else:
            end = idx
    if lp.ending_before is not None:
        s = max(start, end - lp.limit)
        return list(items[s:end]), s > start
    return list(items[start : start + lp.limit]), start + lp.limit < end


def plain_list_body(objs: Sequence[dict[str, Any]], lp: ListParams, kind: str, url: str) -> bytes:
    """One page of a child list kept as plain objects (credit note lines, checkout line items)."""
    page, more = page_sequence([Record(kind, o, 0, 0) for o in objs], lp, kind)
    return list_body([orjson.dumps(r.obj) for r in page], more, url)


def list_body(
    items: list[bytes], has_more: bool, url: str, extra: dict[str, Any] | None = None
) -> bytes:
    """Join cached object bytes into a list envelope without re-serializing the objects."""
    tail: dict[str, Any] = {"has_more": has_more, "url": url}
    if extra:
        tail.update(extra)
    t = orjson.dumps(tail)
    return b'{"object":"list","data":[' + b",".join(items) + b"]," + t[1:]


def nested_list(children: list[Any], url: str, total: bool = True) -> dict[str, Any]:
    """An embedded list (``subscription.items``, ``invoice.lines``): first 10 + has_more."""
    out: dict[str, Any] = {
        "object": "list",
        "data": children[:10],
        "has_more": len(children) > 10,
        "url": url,
    }
    if total:
        out["total_count"] = len(children)
    return out
