"""Stripe-shaped API errors."""

from __future__ import annotations

from typing import Any

import orjson


class StripeError(Exception):
    """Raised by resource code; the server renders it as ``{"error": {...}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> bytes:
        err: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            err["code"] = self.code
            err["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param is not None:
            err["param"] = self.param
        return orjson.dumps({"error": err})


def missing(kind: str, id_: str, param: str = "id") -> StripeError:
    """404 ``resource_missing`` exactly as Stripe words it: ``No such customer: 'cus_x'``."""
    return StripeError(404, f"No such {kind}: '{id_}'", code="resource_missing", param=param)


def invalid(message: str, param: str | None = None, code: str | None = None) -> StripeError:
    return StripeError(400, message, param=param, code=code)


def required(param: str) -> StripeError:
    return StripeError(
        400, f"Missing required param: {param}.", param=param, code="parameter_missing"
    )


def mask_key(key: str) -> str:
    """An API key as Stripe shows it in errors: ``sk_test_****************1234``."""
    return key[:8] + "*" * max(len(key) - 12, 0) + key[-4:] if len(key) > 12 else key


def account_invalid(api_key: str, account: str) -> StripeError:
    """403 for a ``Stripe-Account`` (or ``/v1/accounts/{id}``) the key cannot act for: unknown,
    deleted, or disconnected (``account.application.deauthorized``). Stripe's wording, as its
    SDK users log it; the SDK raises ``stripe.PermissionError``."""
    return StripeError(
        403,
        f"The provided key '{mask_key(api_key)}' does not have access to account '{account}' "
        "(or that account does not exist). Application access may have been revoked.",
        code="account_invalid",
    )


def card_declined(message: str = "Your card was declined.") -> StripeError:
    return StripeError(402, message, type_="card_error", code="card_declined")


RATE_LIMIT_MESSAGE = (
    "Testmode request rate limit exceeded, the rate limits in testmode are lower than livemode. "
    "You can learn more about rate limits here https://stripe.com/docs/rate-limits."
)
LIVE_RATE_LIMIT_MESSAGE = (
    "Request rate limit exceeded. You can learn more about rate limits here "
    "https://stripe.com/docs/rate-limits."
)
# Stripe's wording for this one is not published; ours names the documented rule.
METER_CONCURRENCY_MESSAGE = (
    "Too many concurrent requests for this customer and meter: meter events allow one "
    "concurrent request per customer per meter. Send them serially. You can learn more about "
    "rate limits here https://stripe.com/docs/rate-limits."
)
LOCK_TIMEOUT_MESSAGE = (
    "This object cannot be accessed right now because another API request or Stripe process is "
    "currently accessing it. If you see this error intermittently, retry the request. If you see "
    "this error frequently and are making multiple concurrent requests to a single object, make "
    "your requests serially or at a lower rate. See https://stripe.com/docs/rate-limits for more "
    "details."
)


def rate_limited(reason: str = "global-rate", message: str = RATE_LIMIT_MESSAGE) -> StripeError:
    """The 429 of Stripe's limiters. No ``Stripe-Should-Retry``: the SDKs retry whenever it says
    true, and Stripe's SDKs do not retry real rate limits (only lock timeouts)."""
    return StripeError(
        429, message, code="rate_limit", headers={"Stripe-Rate-Limited-Reason": reason}
    )


def lock_timeout() -> StripeError:
    return StripeError(
        429, LOCK_TIMEOUT_MESSAGE, code="lock_timeout", headers={"Stripe-Should-Retry": "true"}
    )
