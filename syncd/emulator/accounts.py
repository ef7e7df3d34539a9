"""Connect: the platform's connected accounts (``/v1/accounts``), the platform's own account
(``GET /v1/account``), and the ``Stripe-Account`` header that serves a request from a connected
account's own state.

The platform's :class:`State` holds the ``account`` objects (so ``GET /v1/accounts`` is an
ordinary list) and, in ``State.connected``, one State per connected account: its own objects,
ids, events (each carrying ``"account": "acct_..."``) and realism switches, sharing the
platform's lock and clock. ``account.updated`` and ``account.application.*`` are recorded on the
platform's event list with ``account`` set to the connected account they are about: Stripe
delivers them to the platform's Connect webhook endpoints, and a client that polls
``/v1/events`` (the emulator has no webhooks) finds them there.
"""

from __future__ import annotations

import zlib

import orjson

from .errors import StripeError, account_invalid, invalid
from .framework import (
    Ctx,
    Resp,
    list_response,
    merge_metadata,
    new_object,
    route,
    template,
)
from .state import JSON, Record, State, diff_previous, snapshot_json

ACCOUNT_TYPES = ("standard", "express", "custom")
_EURO = "AT BE CY DE EE ES FI FR GR HR IE IT LT LU LV MT NL PT SI SK"
CURRENCIES = {
    "US": "usd",
    "GB": "gbp",
    "CA": "cad",
    "AU": "aud",
    "NZ": "nzd",
    "JP": "jpy",
    "CH": "chf",
    "SE": "sek",
    "NO": "nok",
    "DK": "dkk",
    "PL": "pln",
    "SG": "sgd",
    "HK": "hkd",
    "MX": "mxn",
    "BR": "brl",
    "IN": "inr",
    **dict.fromkeys(_EURO.split(), "eur"),
}
UPDATE_FIELDS = ("email", "business_type", "default_currency")


# the header ------------------------------------------------------------------------------------
def platform_of(state: State) -> State:
    return state.platform or state


def connected_state(platform: State, account_id: str) -> State:
    """The connected account's own state, made on first use (its ids differ from every other
    account's, deterministically under the platform's seed)."""
    st = platform.connected.get(account_id)
    if st is None:
        seed = zlib.crc32(f"{platform.seed_value}:{account_id}".encode())
        st = State(seed, account_id=account_id, platform=platform)
        platform.connected[account_id] = st
    return st


def usable(rec: Record | None) -> bool:
    """Connected: neither deleted nor deauthorized."""
    return rec is not None and not rec.deleted and not rec.extra.get("deauthorized")


def resolve(platform: State, account: str | None, api_key: str) -> State:
    """The state a request with ``Stripe-Account: account`` is served from: the platform's
    without the header (or with the platform's own id), else the connected account's; an
    unknown, deleted or deauthorized account answers 403 ``account_invalid``."""
    if not account or account == platform.account_id:
        return platform
    if not usable(platform.get("account", account)):
        raise account_invalid(api_key, account)
    return connected_state(platform, account)


# objects ---------------------------------------------------------------------------------------
def _controller(type_: str) -> JSON:
    if type_ == "standard":
        return {"type": "account"}  # Stripe's example: the account controls itself
    return {
        "fees": {"payer": "application"},
        "is_controller": True,
        "losses": {"payments": "application"},
        "requirement_collection": "stripe" if type_ == "express" else "application",
        "stripe_dashboard": {"type": "express" if type_ == "express" else "none"},
        "type": "application",
    }


def own_account(state: State) -> JSON:
    """The platform's own account (``GET /v1/account``): onboarded, nothing due."""
    obj = template("account")
    obj.update(
        id=state.account_id,
        created=state.created,
        email=None,
        charges_enabled=True,
        payouts_enabled=True,
        details_submitted=True,
        metadata={},
        type="standard",
    )
    obj["external_accounts"]["url"] = f"/v1/accounts/{state.account_id}/external_accounts"
    req = obj["requirements"]
    req.update(currently_due=[], eventually_due=[], past_due=[], disabled_reason=None)
    return obj


def application(platform: State) -> Record:
    """The platform's Connect application, the ``data.object`` of ``account.application.*``."""
    obj: JSON = {"id": platform.application_id, "name": None, "object": "application"}
    return Record("application", obj, platform.clock.now(), 0)


def _platform_only(ctx: Ctx) -> State:
    if ctx.state.platform is not None:
        # Our wording: a connected account has no connected accounts of its own here.
        raise invalid(
            "This request is for platforms: it cannot be made for a connected account "
            "(Stripe-Account header)."
        )
    return ctx.state


def _get(ctx: Ctx, id_: str) -> Record:
    """A connected account the request may act on (the header's own one, when it has one)."""
    platform = platform_of(ctx.state)
    rec = platform.get("account", id_)
    own = ctx.state.platform is None or id_ == ctx.state.account_id
    if not own or rec is None or not usable(rec):
        raise account_invalid(ctx.api_key, id_)
    return rec


def _apply(obj: JSON, params: JSON) -> None:
    for k in UPDATE_FIELDS:
        if k in params:
            obj[k] = params[k] or None
    if "metadata" in params:
        merge_metadata(obj, params["metadata"])
    bp = params.get("business_profile")
    if isinstance(bp, dict):
        obj["business_profile"] = {**obj["business_profile"], **bp}


# routes ----------------------------------------------------------------------------------------
@route("POST", "/v1/accounts")
def create_account(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    platform = _platform_only(ctx)
    type_ = str(params.get("type") or "standard")
    if type_ not in ACCOUNT_TYPES:
        raise invalid(f"Invalid type: must be one of {', '.join(ACCOUNT_TYPES)}", param="type")
    country = str(params.get("country") or "US").upper()
    obj = new_object(ctx, "account", "acct_", platform.new_id("acct_1", 15))
    obj.update(type=type_, country=country, email=None, controller=_controller(type_))
    obj["default_currency"] = CURRENCIES.get(country, "usd")
    obj["external_accounts"]["url"] = f"/v1/accounts/{obj['id']}/external_accounts"
    caps = params.get("capabilities")
    if isinstance(caps, dict):  # requested capabilities wait for onboarding
        obj["capabilities"] = {k: "inactive" for k in caps}
    elif type_ != "standard":
        obj["capabilities"] = {}
    _apply(obj, params)
    rec = platform.insert(obj)  # its own state is made on first use
    platform.emit(
        "account.application.authorized",
        application(platform),
        None,
        ctx.request_id,
        ctx.idempotency_key,
        account=rec.id,
    )
    return ctx.ok(rec)


@route("GET", "/v1/accounts")
def list_accounts(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    # A connected account's own list is empty: it has no connected accounts here.
    return list_response(ctx, "account", "/v1/accounts", params, usable)


@route("GET", "/v1/accounts/{id}")
def get_account(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    if m["id"] == platform_of(ctx.state).account_id and ctx.state.platform is None:
        return Resp(orjson.dumps(own_account(ctx.state)))
    return ctx.ok(_get(ctx, m["id"]))


@route("GET", "/v1/account")
def get_own_account(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    if ctx.state.platform is None:
        return Resp(orjson.dumps(own_account(ctx.state)))
    return ctx.ok(_get(ctx, ctx.state.account_id))


@route("POST", "/v1/accounts/{id}")
def update_account(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    rec = _get(ctx, m["id"])
    old = snapshot_json(rec.obj)
    _apply(rec.obj, params)
    rec.invalidate()
    prev = diff_previous(old, rec.obj)
    if prev:
        platform_of(ctx.state).emit(
            "account.updated", rec, prev, ctx.request_id, ctx.idempotency_key, account=rec.id
        )
    return ctx.ok(rec)


@route("DELETE", "/v1/accounts/{id}")
def delete_account(ctx: Ctx, params: JSON, m: dict[str, str]) -> Resp:
    platform = _platform_only(ctx)
    rec = _get(ctx, m["id"])
    # The platform loses the account: Stripe's disconnect event, then a deleted stub. Its
    # objects stay inspectable (``emu.account(id)``) but the API answers 403 for it.
    platform.emit(
        "account.application.deauthorized",
        application(platform),
        None,
        ctx.request_id,
        ctx.idempotency_key,
        account=rec.id,
    )
    rec.deleted = True
    return Resp(rec.deleted_stub())


# control ---------------------------------------------------------------------------------------
def set_authorized(platform: State, account_id: str, authorized: bool) -> JSON:
    """Disconnect (``account.application.deauthorized``) or reconnect
    (``account.application.authorized``) a connected account; answers the event."""
    rec = platform.get("account", account_id)
    if rec is None or rec.deleted:
        raise StripeError(
            404, f"No such account: '{account_id}'", code="resource_missing", param="id"
        )
    if bool(rec.extra.get("deauthorized")) != authorized:
        raise invalid(
            f"Account {account_id} is already {'connected' if authorized else 'deauthorized'}."
        )
    rec.extra["deauthorized"] = not authorized
    kind = "authorized" if authorized else "deauthorized"
    ev = platform.emit(f"account.application.{kind}", application(platform), account=account_id)
    out: JSON = orjson.loads(ev.to_bytes())
    return out
