"""Load Stripe objects, as the API renders them, into the state (reproduce a real account)."""

from __future__ import annotations

from typing import Any

from .state import JSON, Record, State

# Nested lists whose entries are first-class objects with their own endpoints.
_CHILD_LISTS = {"subscription": "items", "invoice": "lines", "charge": "refunds"}


def import_objects(state: State, objs: list[Any]) -> int:
    n = 0
    for obj in objs:
        if not isinstance(obj, dict) or "id" not in obj or "object" not in obj:
            raise ValueError("each imported object needs 'id' and 'object'")
        n += _import_one(state, obj)
    return n


def _import_one(state: State, obj: JSON) -> int:
    type_ = str(obj["object"])
    deleted = bool(obj.get("deleted"))
    old = state.get(type_, str(obj["id"]))
    if old is not None:
        state.coll(type_).remove(old)
    created = int(obj.get("created") or state.clock.now())
    rec = state.insert(obj, created)
    rec.deleted = deleted
    n = 1
    child_key = _CHILD_LISTS.get(type_)
    if child_key is not None:
        lst = obj.get(child_key)
        children: list[Record] = []
        if isinstance(lst, dict) and isinstance(lst.get("data"), list):
            for ch in lst["data"]:
                if isinstance(ch, dict) and "id" in ch and "object" in ch:
                    n += _import_one(state, ch)
                    crec = state.get(str(ch["object"]), str(ch["id"]))
                    if crec is not None:
                        children.append(crec)
        if type_ == "subscription":
            rec.extra["items"] = children
            first = children[0].obj if children else {}
            rec.extra["period_start"] = first.get("current_period_start", created)
            rec.extra["period_end"] = first.get("current_period_end", created)
        elif type_ == "invoice":
            rec.extra["lines"] = children
        elif type_ == "charge":
            rec.extra["refunds"] = list(reversed(children))
    return n
