"""Shared machinery for resource handlers: routing table, request context, object templates,
parameter coercion, expansion and generic create/retrieve/update/delete/list helpers."""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import StripeError, invalid, missing, required
from .lists import ListParams, Pred, list_body, page_collection, parse_list_params
from .state import JSON, Record, State, diff_previous, snapshot_json


@dataclass
class Resp:
    body: bytes
    status: int = 200


Handler = Callable[["Ctx", JSON, dict[str, str]], Resp]


@dataclass
class Route:
    method: str
    path: str
    handler: Handler


ROUTES: list[Route] = []


def route(method: str, path: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        ROUTES.append(Route(method, path, fn))
        return fn

    return deco


# Templates: Stripe's own example object per type (from the OpenAPI fixtures). New objects start
# as a copy, so every emulated object has exactly Stripe's top-level key set.
_TEMPLATE_BYTES: dict[str, bytes] = {
    k: orjson.dumps(v)
    for k, v in orjson.loads(
        importlib.resources.files(__package__).joinpath("templates.json").read_bytes()
    ).items()
}


def template(type_: str) -> JSON:
    out: JSON = orjson.loads(_TEMPLATE_BYTES[type_])
    return out


def template_types() -> list[str]:
    return sorted(_TEMPLATE_BYTES)


# Expansion of fields that are not plain ids (computed child lists): type -> field -> renderer.
VirtualExpand = Callable[[State, Record], Any]
VIRTUAL_EXPAND: dict[str, dict[str, VirtualExpand]] = {}


@dataclass
class Ctx:
    """Per-request context: the state plus request metadata that events record."""

    state: State
    request_id: str | None = None
    idempotency_key: str | None = None
    expand: list[str] = field(default_factory=list)
    api_key: str = ""  # for errors that name it (``account_invalid``)

    @property
    def now(self) -> int:
        return self.state.clock.now()

    def emit(self, type_: str, rec: Record, previous: JSON | None = None) -> Record:
        return self.state.emit(type_, rec, previous, self.request_id, self.idempotency_key)

    def render(self, rec: Record, paths: list[str] | None = None) -> bytes:
        return render(self.state, rec, self.expand if paths is None else paths)

    def ok(self, rec: Record) -> Resp:
        return Resp(self.render(rec))


def render(state: State, rec: Record, paths: list[str]) -> bytes:
    """Object bytes with ``expand`` applied. Unexpanded renders hit the per-object cache."""
    if not paths:
        return rec.to_bytes()
    return orjson.dumps(_expand_obj(state, rec, rec.obj, paths))


def _expand_obj(state: State, rec: Record | None, obj: JSON, paths: list[str]) -> JSON:
    groups: dict[str, list[str]] = {}
    for p in paths:
        head, _, rest = p.partition(".")
        groups.setdefault(head, [])
        if rest:
            groups[head].append(rest)
    out = dict(obj)
    virt = VIRTUAL_EXPAND.get(str(obj.get("object")), {})
    for head, rests in groups.items():
        if head in virt and rec is not None:
            val = virt[head](state, rec)
            if isinstance(val, dict) and rests:
                val = _expand_value(state, val, rests)
            out[head] = val
            continue
        if head not in obj:
            continue
        out[head] = _expand_value(state, obj[head], rests)
    return out


def _expand_value(state: State, val: Any, rests: list[str]) -> Any:
    if isinstance(val, str):
        child = state.find(val)
        if child is None:
            return val
        if child.deleted:
            return orjson.Fragment(child.deleted_stub())
        if not rests:
            return orjson.Fragment(child.to_bytes())
        return _expand_obj(state, child, child.obj, rests)
    if isinstance(val, dict):
        if val.get("object") == "list" and isinstance(val.get("data"), list):
            sub = [r[5:] for r in rests if r.startswith("data.")]
            if sub:
                val = dict(val)
                val["data"] = [
                    _expand_value(state, x, sub)
                    if not isinstance(x, dict)
                    else _expand_obj(state, state.find(str(x.get("id"))), x, sub)
                    for x in val["data"]
                ]
            return val
        if rests:
            return _expand_obj(state, state.find(str(val.get("id", ""))), val, rests)
    return val


# Parameter coercion --------------------------------------------------------------------------
def to_bool(v: Any, param: str) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).lower()
    if s in ("true", "1"):
        return True
    if s in ("false", "0"):
        return False
    raise invalid(f"Invalid boolean: {v}", param=param)


def to_int(v: Any, param: str) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    try:
        return int(str(v))
    except ValueError:
        raise invalid(f"Invalid integer: {v}", param=param) from None


def opt_int(params: JSON, key: str, default: int | None = None) -> int | None:
    v = params.get(key)
    if v is None or v == "":
        return default
    return to_int(v, key)


def merge_metadata(obj: JSON, md: Any) -> None:
    """Stripe semantics: keys merge; an empty value removes a key; ``metadata=""`` clears all."""
    if md == "" or md is None:
        obj["metadata"] = {}
        return
    if not isinstance(md, dict):
        raise invalid("Invalid hash", param="metadata")
    cur = dict(obj.get("metadata") or {})
    for k, v in md.items():
        if v == "":
            cur.pop(k, None)
        else:
            cur[k] = str(v)
    obj["metadata"] = cur


def coerce_like(current: Any, v: Any, param: str) -> Any:
    """Coerce a form string to the JSON type of the field it replaces."""
    if v == "":
        return None
    if isinstance(current, bool):
        return to_bool(v, param)
    if isinstance(current, int):
        return to_int(v, param)
    if isinstance(current, float):
        try:
            return float(str(v))
        except ValueError:
            raise invalid(f"Invalid decimal: {v}", param=param) from None
    if isinstance(v, list):
        return v
    return v


def apply_params(obj: JSON, params: JSON, fields: set[str] | frozenset[str]) -> None:
    """Copy allowed top-level params onto ``obj`` with type coercion."""
    for k, v in params.items():
        if k not in fields:
            continue
        if k == "metadata":
            merge_metadata(obj, v)
        elif k in _BOOL_FIELDS:
            obj[k] = to_bool(v, k)
        elif k in _INT_FIELDS:
            obj[k] = None if v == "" else to_int(v, k)
        else:
            obj[k] = coerce_like(obj.get(k), v, k)


_BOOL_FIELDS = {
    "active",
    "livemode",
    "shippable",
    "cancel_at_period_end",
    "discountable",
    "auto_advance",
    "valid",
}
_INT_FIELDS = {
    "amount",
    "unit_amount",
    "balance",
    "quantity",
    "trial_period_days",
    "interval_count",
    "max_redemptions",
    "redeem_by",
    "expires_at",
    "amount_off",
    "duration_in_months",
    "trial_end",
    "cancel_at",
    "days_until_due",
    "due_date",
    "next_invoice_sequence",
    "application_fee_amount",
}


# Generic resource helpers ---------------------------------------------------------------------
def new_object(ctx: Ctx, type_: str, prefix: str, id_: str | None = None) -> JSON:
    obj = template(type_)
    obj["id"] = id_ or ctx.state.new_id(prefix)
    if "created" in obj:
        obj["created"] = ctx.now
    if "livemode" in obj:
        obj["livemode"] = False
    if "metadata" in obj:
        obj["metadata"] = {}
    return obj


def get_or_404(
    ctx: Ctx,
    type_: str,
    id_: str,
    kind: str | None = None,
    param: str = "id",
    allow_deleted: bool = False,
) -> Record:
    rec = ctx.state.get(type_, id_)
    if rec is None or (rec.deleted and not allow_deleted):
        raise missing(kind or type_, id_, param)
    return rec


def need(params: JSON, key: str) -> Any:
    v = params.get(key)
    if v is None or v == "":
        raise required(key)
    return v


def update_record(
    ctx: Ctx, rec: Record, mutate: Callable[[JSON], None], event: str | None
) -> Record:
    """Mutate, invalidate the cached bytes and emit ``event`` with ``previous_attributes``."""
    old = snapshot_json(rec.obj)
    mutate(rec.obj)
    rec.invalidate()
    if "updated" in rec.obj and isinstance(rec.obj["updated"], int):
        rec.obj["updated"] = ctx.now
    prev = diff_previous(old, rec.obj)
    prev.pop("updated", None)
    if event is not None and prev:
        ctx.emit(event, rec, prev)
    return rec


def delete_record(ctx: Ctx, rec: Record, event: str | None) -> Resp:
    """Soft delete: the record stays (tombstone) so retrieve answers ``deleted: true``."""
    if event is not None:
        ctx.emit(event, rec)
    rec.deleted = True
    return Resp(rec.deleted_stub())


def list_response(
    ctx: Ctx,
    type_: str,
    url: str,
    params: JSON,
    pred: Pred | None,
    kind: str | None = None,
    lp: ListParams | None = None,
) -> Resp:
    lp = lp or parse_list_params(params)
    coll = ctx.state.coll(type_)
    page, has_more = page_collection(coll, lp, pred, kind or type_)
    data_paths = [p[5:] for p in ctx.expand if p.startswith("data.")]
    if data_paths:
        items = [render(ctx.state, r, data_paths) for r in page]
    else:
        items = [r.to_bytes() for r in page]
    return Resp(list_body(items, has_more, url))


def filters(params: JSON, mapping: dict[str, str]) -> list[Callable[[Record], bool]]:
    """Equality filters ``param -> object field`` (e.g. ``customer=`` on many lists)."""
    preds: list[Callable[[Record], bool]] = []
    for param, fld in mapping.items():
        v = params.get(param)
        if v is None or v == "":
            continue
        if fld in ("active", "valid"):
            b = to_bool(v, param)
            preds.append(field_is(fld, b))
        else:
            preds.append(field_eq(fld, v))
    return preds


def field_is(fld: str, value: Any) -> Callable[[Record], bool]:
    return lambda r: r.obj.get(fld) is value


def field_eq(fld: str, value: Any) -> Callable[[Record], bool]:
    """Equality on a field holding an id or an expanded object."""
    return lambda r: _id_of(r.obj.get(fld)) == value


def _id_of(v: Any) -> Any:
    return v.get("id") if isinstance(v, dict) else v


def all_of(preds: list[Callable[[Record], bool]]) -> Pred:
    preds = list(preds)
    if not preds:
        return lambda r: not r.deleted
    if len(preds) == 1:
        p0 = preds[0]
        return lambda r: not r.deleted and p0(r)
    return lambda r: not r.deleted and all(p(r) for p in preds)


def unknown_endpoint(method: str, path: str) -> StripeError:
    return StripeError(
        404,
        f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or we "
        "can help at https://support.stripe.com/.",
    )
