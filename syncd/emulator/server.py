"""aiohttp application: auth, the ``Stripe-Account`` header (which account's state serves a
request), Stripe's limits, faults, form decoding, idempotency, errors."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from . import accounts, billing, catalog, events, meters, payments  # noqa: F401  (register routes)
from .accounts import resolve
from .errors import StripeError, lock_timeout, mask_key
from .forms import decode
from .framework import ROUTES, Ctx, Handler, Resp, unknown_endpoint
from .limits import METER_EVENTS, REASON_ENDPOINT_CONCURRENCY, endpoint_template
from .meters import concurrency_key
from .state import API_VERSION, State

if TYPE_CHECKING:
    from .emulator import Emulator

IDEMPOTENCY_TTL = 24 * 3600
JSON_CT = "application/json"


@dataclass
class IdemEntry:
    fingerprint: str
    status: int
    body: bytes
    created: int


def _error_response(err: StripeError, extra_headers: dict[str, str] | None = None) -> web.Response:
    headers = dict(err.headers)
    if extra_headers:
        headers.update(extra_headers)
    return web.Response(body=err.body(), status=err.status, content_type=JSON_CT, headers=headers)


def _html_page(status: int) -> bytes:
    """What a proxy or load balancer answers instead of the API (the emulator's `bad_body`)."""
    title = f"{status} {HTTPStatus(status).phrase}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode()


class ApiServer:
    """Binds the resource routes to an :class:`Emulator`'s state, faults and counters."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        # (API key, account id or "" for the platform, Idempotency-Key): keys are per account
        self.idempotency: dict[tuple[str, str, str], IdemEntry] = {}

    # authentication ----------------------------------------------------------------------
    def check_key(self, request: web.Request) -> str:
        auth = request.headers.get("Authorization", "")
        key = ""
        if auth.startswith("Bearer "):
            key = auth[7:].strip()
        elif auth.startswith("Basic "):
            try:
                key = base64.b64decode(auth[6:]).decode().split(":", 1)[0]
            except ValueError:
                key = ""
        if not key:
            raise StripeError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, "
                "or we can help at https://support.stripe.com/.",
            )
        if not self.emu.key_ok(key):
            raise StripeError(401, f"Invalid API Key provided: {mask_key(key)}", code=None)
        return key

    # request handling --------------------------------------------------------------------
    def wrap(self, handler: Handler, template: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            endpoint = (
                f"{request.method} {request.match_info.route.resource.canonical}"
                if request.match_info.route.resource is not None
                else request.path
            )
            resp = await self.serve(request, handler, endpoint, template)
            if resp is None:
                self.emu.stats.dropped[endpoint] += 1
                tr = request.transport
                if tr is not None:
                    tr.abort()
                # the transport is gone; aiohttp discards whatever is returned
                return web.Response(status=500)
            self.emu.stats.record(endpoint, resp.status, self._account(request))
            # Stripe's clock is the emulator's clock: clients that read the Date header (syncd
            # stamps fetched rows with it) see frozen or advanced time as they would see Stripe's.
            resp.headers["Date"] = formatdate(self.emu.state.clock.time(), usegmt=True)
            return resp

        return handle

    def _account(self, request: web.Request) -> str | None:
        """The connected account a request names in ``Stripe-Account`` (None: the platform)."""
        account = request.headers.get("Stripe-Account", "").strip()
        return account if account and account != self.emu.state.account_id else None

    def _meter_slot(self, state: State, body: str) -> tuple[str, str] | None:
        try:
            params = decode(body) if body else {}
        except StripeError:
            return None  # the handler answers the malformed body
        with state.lock:
            return concurrency_key(state, params)

    async def serve(
        self, request: web.Request, handler: Handler, endpoint: str, template: str
    ) -> web.Response | None:
        emu = self.emu
        version = request.headers.get("Stripe-Version", API_VERSION)
        base_headers = {"Stripe-Version": version}
        slot: tuple[str, ...] | None = None
        try:
            api_key = self.check_key(request)
            account = self._account(request)
            with emu.state.lock:
                state = resolve(emu.state, account, api_key)
            reason = emu.limits.admit(template, account)
            if reason is not None:
                raise emu.limits.error(reason)
            body = await request.text() if request.can_read_body else ""
            if template == METER_EVENTS and emu.limits.meter_concurrency:
                # Taken before the injected latency, so a slow request holds its slot as long as
                # it is in flight, like a slow request at Stripe.
                pair = self._meter_slot(state, body)
                if pair is not None:
                    slot = (account or "", *pair)
                    if not emu.limits.acquire(template, slot, account):
                        slot = None
                        raise emu.limits.error(REASON_ENDPOINT_CONCURRENCY)
            return await self._execute(
                request, handler, body, api_key, base_headers, state, account
            )
        except StripeError as e:
            return _error_response(e, base_headers)
        finally:
            if slot is not None:
                emu.limits.release(slot)

    async def _execute(
        self,
        request: web.Request,
        handler: Handler,
        body: str,
        api_key: str,
        base_headers: dict[str, str],
        state: State,
        account: str | None,
    ) -> web.Response | None:
        """What follows the limiters: faults, decoding, idempotency and the handler, on the
        state of the account the request is for."""
        emu = self.emu
        query = request.query_string
        d = emu.faults.decide(request.method, request.path, query + "&" + body, state.account_id)
        if d.delay > 0:
            await asyncio.sleep(d.delay)
        if d.drop:
            return None
        if d.lock:
            raise lock_timeout()
        if d.bad_body == "html" and d.status is not None:
            # A proxy or load balancer answered instead of the API.
            return web.Response(
                body=_html_page(d.status), status=d.status, content_type="text/html"
            )
        if d.status is not None:
            raise StripeError(
                d.status,
                "Too many requests hit the API too quickly."
                if d.status == 429
                else "An unknown error occurred (injected by the emulator).",
                type_="invalid_request_error" if d.status == 429 else "api_error",
                code="rate_limit" if d.status == 429 else None,
                # Stripe asks for a retry of 429 and 5xx only (an injected 403 is final).
                headers={"Stripe-Should-Retry": "true"}
                if d.status == 429 or d.status >= 500
                else {},
            )
        params = decode(query) if query else {}
        if body:
            params.update(decode(body))
        idem_key = request.headers.get("Idempotency-Key")
        idem_slot: tuple[str, str, str] | None = None
        fingerprint = ""
        if idem_key and request.method == "POST":
            base_headers["Idempotency-Key"] = idem_key
            idem_slot = (api_key, account or "", idem_key)
            fingerprint = hashlib.sha256(
                orjson.dumps([request.method, request.path, params], option=orjson.OPT_SORT_KEYS)
            ).hexdigest()
            with state.lock:
                now = state.clock.now()
                prior = self.idempotency.get(idem_slot)
                if prior is not None and prior.created > now - IDEMPOTENCY_TTL:
                    if prior.fingerprint != fingerprint:
                        raise StripeError(
                            400,
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with. Try using a key other "
                            f"than '{idem_key}' if you meant to execute a different "
                            "request.",
                            type_="idempotency_error",
                        )
                    return web.Response(
                        body=prior.body,
                        status=prior.status,
                        content_type=JSON_CT,
                        headers={
                            **base_headers,
                            "Idempotent-Replayed": "true",
                            "Request-Id": state.new_id("req_", 14),
                        },
                    )
        expand = params.pop("expand", [])
        if isinstance(expand, str):
            expand = [expand]
        with state.lock:
            request_id = state.new_id("req_", 14)
            ctx = Ctx(state, request_id, idem_key, list(expand), api_key=api_key)
            try:
                result: Resp = handler(ctx, params, dict(request.match_info))
                status, out = result.status, result.body
                headers = {}
            except StripeError as e:
                status, out, headers = e.status, e.body(), dict(e.headers)
            if idem_slot is not None and status < 500:
                self.idempotency[idem_slot] = IdemEntry(fingerprint, status, out, state.clock.now())
        base_headers["Request-Id"] = request_id
        if d.after > 0:
            await asyncio.sleep(d.after)  # the request took effect; the answer is late
        if d.bad_body == "truncated":
            out = out[: len(out) // 2]  # the answer cut short on its way
        return web.Response(
            body=out, status=status, content_type=JSON_CT, headers={**base_headers, **headers}
        )

    def add_routes(self, app: web.Application) -> None:
        for r in ROUTES:
            template = endpoint_template(r.method, r.path)
            app.router.add_route(r.method, r.path, self.wrap(r.handler, template))


@web.middleware
async def not_found_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Unknown URLs answer in Stripe's error shape rather than aiohttp's HTML."""
    try:
        resp: web.StreamResponse = await handler(request)
        return resp
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        if request.path.startswith("/_emulator"):
            raise
        return _error_response(unknown_endpoint(request.method, request.path))


def build_app(emu: Emulator) -> web.Application:
    from .control import add_control_routes

    app = web.Application(middlewares=[not_found_middleware], client_max_size=64 * 1024**2)
    api = ApiServer(emu)
    emu._api_server = api
    add_control_routes(app, emu)
    api.add_routes(app)
    return app
