"""The private parts of stripe-python that `syncd/stripe_api.py` relies on still exist.

syncd goes through the SDK's raw requestor (no StripeObjects) and patches two of its module
globals at import time (its request log lines). None of that is public API, so a new stripe-python
release may move it: these tests name the missing piece instead of failing somewhere deep in a
resync. No PostgreSQL; the last two talk to the emulator or to a closed port.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import socket
import types
from typing import Any

import stripe

from syncd.emulator import Emulator
from tests.conftest import emulator_config

UNUSED_DB = "postgresql://unused@127.0.0.1:1/unused"


def _names_used(cls: type) -> set[str]:
    """Global names read by the methods of `cls` (and by functions nested in them)."""
    names: set[str] = set()
    stack = [
        f.__code__
        for f in vars(cls).values()
        if isinstance(f, types.FunctionType) and hasattr(f, "__code__")
    ]
    while stack:
        code = stack.pop()
        names.update(code.co_names)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return names


def _missing_pieces() -> list[str]:
    missing: list[str] = []

    def need(ok: object, piece: str) -> None:
        if not ok:
            missing.append(piece)

    modules: dict[str, Any] = {}
    for name in ("stripe._api_requestor", "stripe._util", "stripe._requestor_options"):
        try:
            modules[name] = importlib.import_module(name)
        except ImportError:
            missing.append(f"module {name}")
    util = modules.get("stripe._util")
    requestor_mod = modules.get("stripe._api_requestor")
    options_mod = modules.get("stripe._requestor_options")

    if util is not None:
        need(
            callable(getattr(util, "_console_log_level", None)), "stripe._util._console_log_level()"
        )
        need(isinstance(getattr(util, "logger", None), logging.Logger), "stripe._util.logger")
        for fn in ("log_debug", "log_info"):
            need(callable(getattr(util, fn, None)), f"stripe._util.{fn}()")
    if requestor_mod is not None:
        # The import-time patch replaces these module globals; it only works while the
        # requestor calls them by their global name (`from stripe._util import log_debug`).
        for fn in ("log_debug", "log_info"):
            need(hasattr(requestor_mod, fn), f"stripe._api_requestor.{fn} (module global)")
        cls = getattr(requestor_mod, "_APIRequestor", None)
        need(cls is not None, "stripe._api_requestor._APIRequestor")
        if cls is not None:
            used = _names_used(cls)
            for fn in ("log_debug", "log_info"):
                need(fn in used, f"_APIRequestor calling the module global {fn}()")
    if options_mod is not None:
        keys = getattr(getattr(options_mod, "BaseAddresses", None), "__annotations__", {})
        for key in ("api", "meter_events"):
            need(key in keys, f"stripe._requestor_options.BaseAddresses[{key!r}]")

    client_params = inspect.signature(stripe.StripeClient.__init__).parameters
    for kw in (
        "stripe_version",
        "stripe_account",
        "base_addresses",
        "max_network_retries",
        "http_client",
    ):
        need(kw in client_params, f"stripe.StripeClient(..., {kw}=)")
    client = stripe.StripeClient("sk_test_surface", max_network_retries=0)
    raw = getattr(getattr(client, "_requestor", None), "request_raw_async", None)
    need(raw is not None, "stripe.StripeClient()._requestor.request_raw_async")
    if raw is not None:
        need(inspect.iscoroutinefunction(raw), "_APIRequestor.request_raw_async being async")
        params = inspect.signature(raw).parameters
        for kw in ("method", "url", "params", "options", "base_address", "api_mode", "usage"):
            need(kw in params, f"_APIRequestor.request_raw_async(..., {kw}=)")

    aiohttp_client = getattr(stripe, "AIOHTTPClient", None)
    need(aiohttp_client is not None, "stripe.AIOHTTPClient")
    if aiohttp_client is not None:
        need("timeout" in inspect.signature(aiohttp_client).parameters, "AIOHTTPClient(timeout=)")
        need(callable(getattr(aiohttp_client, "close_async", None)), "AIOHTTPClient.close_async()")
    need(hasattr(stripe, "APIConnectionError"), "stripe.APIConnectionError")
    need(
        "user_message" in dir(getattr(stripe, "APIConnectionError", object)),
        "stripe.APIConnectionError.user_message",
    )
    return missing


def test_private_sdk_pieces_exist() -> None:
    missing = _missing_pieces()
    assert not missing, (
        f"stripe-python {stripe.VERSION} lacks what syncd/stripe_api.py relies on: "
        + "; ".join(missing)
    )


def test_import_time_log_patch_is_applied() -> None:
    import stripe._api_requestor as sdk_requestor
    import stripe._util as sdk_util

    import syncd.stripe_api  # noqa: F401  (applies the patch)

    for fn in ("log_debug", "log_info"):
        assert getattr(sdk_requestor, fn) is not getattr(sdk_util, fn), (
            f"syncd.stripe_api did not replace stripe._api_requestor.{fn}"
        )


async def test_raw_request_returns_status_bytes_and_headers(emulator: Emulator) -> None:
    from syncd.stripe_api import StripeAPI

    async with StripeAPI(emulator_config(UNUSED_DB, emulator)) as api:
        status, body, headers = await api._send("GET", "/v1/customers", {"limit": 1}, None, "api")
        assert status == 200
        assert isinstance(body, bytes), (
            f"request_raw_async returned {type(body).__name__}, not the whole body as bytes"
        )
        assert any(k.lower() == "date" for k in headers), dict(headers)
        page = await api.get("/v1/customers", {"limit": 1})
        assert page["object"] == "list"


async def test_network_error_is_an_api_connection_error(emulator: Emulator) -> None:
    from syncd.stripe_api import StripeAPI

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    cfg = emulator_config(UNUSED_DB, emulator, stripe={"api_base": closed})
    async with StripeAPI(cfg) as api:
        status, body, _ = await api._send("GET", "/v1/customers", None, None, "api")
    assert status == 0, "a refused connection must surface as stripe.APIConnectionError"
    assert body
