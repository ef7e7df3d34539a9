"""The Stripe edge: every request to Stripe (or the emulator) goes through `StripeAPI.request`.

It goes through the official SDK's raw requestor (so authentication, versioning, headers and
encoding are Stripe's own) but skips building StripeObjects: list pages come back as bytes and
are parsed with orjson, about 50x faster than the SDK's objects. Rate limiting and retries are
ours: every request waits for the process's `ratelimit.RateLimiter` (a global budget and one per
endpoint, slowed by Stripe's 429s), and 429, 5xx and network errors are retried here with
jittered exponential backoff that honours `Stripe-Should-Retry` (the SDK retries no 429).
Errors are translated into syncd's tree once, here.

Bad answers: Stripe answers JSON objects, errors included. Anything else (a proxy's or load
balancer's HTML page, a body cut short, an object of the wrong shape) came from something in
between and is retried like a 502 (`StripeBadAnswer`): `request` checks that a body is framed as
an object (its ends only: free), and callers parse bodies with `Reply.json`, `Reply.page` or
`Reply.object`, which check the rest. Bad answers are counted per endpoint
(`syncd_stripe_bad_answers_total`) and logged once per burst, not once per answer.

A stop (SIGTERM) ends a backoff at once (`lifecycle.pause`): the request gives up with the error
it had, and the loop that sent it stops between batches as usual.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, cast

import orjson
import stripe
import stripe._api_requestor as _sdk_requestor
import stripe._util as _sdk_util

from syncd import lifecycle, metrics
from syncd.config import Config
from syncd.errors import (
    CursorExpired,
    StripeBadAnswer,
    StripeError,
    StripeNotFound,
    StripePermissionDenied,
    StripeRetryable,
)
from syncd.logs import get_logger
from syncd.ratelimit import RateLimiter, limiter_for
from syncd.storable import loads_lax
from syncd.versions import Version

log = get_logger(__name__)

_RETRY_STATUS = {409, 429, 500, 502, 503, 504}
# An id segment: a prefix (cus, sub_sched, ...) then a token with a digit or capital letter,
# which tells `/cus_NffrFeUf2` apart from a path word such as `/meter_events`.
_ID_SEGMENT = re.compile(r"/[a-z]+(?:_[a-z]+)*_[0-9A-Za-z]*[0-9A-Z][0-9A-Za-z]*")


def _sdk_log_only_when_shown() -> None:
    """stripe-python formats its request log lines, the whole response body among them
    (decoded, searched, `repr`ed), before it asks whether anything shows them: 0.3 ms of CPU for
    a list page of 100 customers, a tenth of syncd's share of a resync. Format them only when
    they would be shown (STRIPE_LOG / `stripe.log`, or the `stripe` logger enabled)."""

    def guarded(write: Callable[..., None], level: int, console: tuple[str, ...]) -> Any:
        def log(message: str, **params: Any) -> None:
            shown = _sdk_util._console_log_level()  # type: ignore[no-untyped-call]
            if shown in console or _sdk_util.logger.isEnabledFor(level):
                write(message, **params)

        return log

    _sdk_requestor.log_debug = guarded(_sdk_util.log_debug, logging.DEBUG, ("debug",))  # type: ignore[attr-defined]
    _sdk_requestor.log_info = guarded(_sdk_util.log_info, logging.INFO, ("debug", "info"))  # type: ignore[attr-defined]


_sdk_log_only_when_shown()


class StripeClock:
    """Stripe's clock, bounded from the `Date` header of its answers.

    Rows are ordered by when Stripe held their content (`syncd.versions`), and event snapshots
    carry Stripe's own `created`, so fetches must be placed on Stripe's clock too, with honest
    bounds. A header saying second S, on an answer to a request sent at local time `sent` and
    received at `received`, was written while the request was in flight: Stripe's clock minus
    ours lay in `[S - received, S + 1 - sent]` then. Each answer's band is intersected with the
    last (widened by the drift the local clock may have had since), so after answers that land
    on different fractions of a second the band narrows to about one round trip. A band that
    contradicts the last one (Stripe's clock stepped, or an emulator's was moved) starts over.
    The local clock is `time.monotonic`, which never steps.
    """

    # How far the local monotonic clock may drift from Stripe's, per second (100 ppm).
    DRIFT = 1e-4

    def __init__(self) -> None:
        # Before the first answer nothing bounds Stripe's clock (the system clock may be off).
        self.low, self.high = -math.inf, math.inf
        self._observed_at = time.monotonic()
        self._last = 0.0

    def observe(self, date_header: str | None, sent: float, received: float) -> float | None:
        """Narrow the band with an answer's `Date`; the second it names + 1 (an upper bound on
        when the answer was written), or None without a usable header."""
        if not date_header:
            return None
        try:
            server = parsedate_to_datetime(date_header).timestamp()
        except (TypeError, ValueError):
            return None
        low, high = server - received, server + 1.0 - sent
        slack = (received - self._observed_at) * self.DRIFT
        self._observed_at = received
        narrowed = max(self.low - slack, low), min(self.high + slack, high)
        self.low, self.high = narrowed if narrowed[0] <= narrowed[1] else (low, high)
        return server + 1.0

    def now(self) -> float:
        """The best single estimate of Stripe's time (the band's middle), strictly increasing."""
        if math.isinf(self.low) or math.isinf(self.high):  # no answer yet: the system clock
            middle = time.time() - time.monotonic()
        else:
            middle = (self.low + self.high) / 2
        reading = max(time.monotonic() + middle, self._last + 1e-6)
        self._last = reading
        return reading

    def earliest(self, local: float | None = None) -> float:
        """Stripe's time at local monotonic time `local` (now) is at least this."""
        return (time.monotonic() if local is None else local) + self.low

    def version(
        self, sent: float, earliest: float, received: float, written_before: float | None
    ) -> Version:
        """The version of an answer: Stripe read its content after the request left (local
        `sent`, Stripe time `earliest`: `self.earliest(sent)` taken then, before the answer
        could move the band) and before the answer arrived (`received`) or was written
        (`written_before`)."""
        latest = received + self.high
        if written_before is not None:
            latest = min(latest, written_before)
        return Version(min(earliest, latest), latest, (sent, received))

    def event_version(self, created: float, listed_before: float) -> Version:
        """The version of an event's snapshot listed by this process: Stripe's state at some
        moment of its `created` second, which came before the list's answer arrived (local
        `listed_before`)."""
        version = Version.of_event(created)
        start = min(created - self.high, listed_before)
        return Version(version.earliest, version.latest, (start, listed_before))

    def since(self, local: float) -> Version:
        """The version of something learnt between local monotonic time `local` and now
        (a 404, or a list read over several pages)."""
        return self.version(local, self.earliest(local), time.monotonic(), None)


@dataclass(frozen=True)
class Reply:
    body: bytes
    # When Stripe held the content it carries (`syncd.versions`).
    version: Version
    # The request's path (for bad-answer errors and their metric).
    path: str = ""

    def json(self) -> dict[str, Any]:
        """The body as the JSON object Stripe sends; StripeBadAnswer when it is not one."""
        return parse_json(self.body, self.path)

    def page(self) -> dict[str, Any]:
        """A list answer: `data` a list and `has_more` a boolean, or StripeBadAnswer."""
        return parse_page(self.body, self.path)

    def object(self) -> dict[str, Any]:
        """A retrieved object: `id` and `object` strings, or StripeBadAnswer."""
        obj = parse_json(self.body, self.path)
        if not isinstance(obj.get("id"), str) or not isinstance(obj.get("object"), str):
            raise bad_answer(self.path, "an object without id/object", self.body)
        return obj


class _BadAnswers:
    """Bad answers come in bursts (a proxy failing over, a load balancer's error page): one
    warning when a burst starts, a reminder each minute while it lasts, one line when a good
    answer ends it. Process-wide, like the metrics."""

    REMIND_EVERY = 60.0

    def __init__(self) -> None:
        self.count = 0
        self._reminded = 0.0

    def seen(self, endpoint: str, why: str, status: int, body: bytes) -> None:
        metrics.stripe_bad_answers.labels(endpoint).inc()
        self.count += 1
        now = time.monotonic()
        if self.count == 1 or now - self._reminded >= self.REMIND_EVERY:
            self._reminded = now
            log.warning(
                "stripe_bad_answers" if self.count == 1 else "stripe_bad_answers_continue",
                endpoint=endpoint,
                status=status,
                reason=why,
                answers=self.count,
                body=_excerpt(body),
            )

    def good(self) -> None:
        if self.count:
            log.info("stripe_bad_answers_ended", answers=self.count)
            self.count = 0


_bad_answers = _BadAnswers()


def _excerpt(body: bytes, size: int = 120) -> str:
    text = body[:size].decode(errors="replace")
    return " ".join(text.split()) + (" ..." if len(body) > size else "")


def bad_answer(path: str, why: str, body: bytes, status: int = 200) -> StripeBadAnswer:
    """Count and log (once per burst) a bad answer; the error to raise for it."""
    endpoint = endpoint_label(path)
    _bad_answers.seen(endpoint, why, status, body)
    return StripeBadAnswer(
        f"bad answer on {endpoint} (HTTP {status}): {why}: {_excerpt(body, 80)!r}", status=status
    )


def parse_json(body: bytes, path: str) -> dict[str, Any]:
    """The one place a Stripe body is parsed: a JSON object, or StripeBadAnswer (retryable).
    Parsed as `storable.loads_lax` does: a lone surrogate escape (`\\ud800`) is the object's
    own oddity (it is stored or quarantined), not a bad answer."""
    try:
        doc = loads_lax(body)
    except ValueError as exc:  # orjson's, json's and UnicodeDecodeError alike
        raise bad_answer(path, f"not JSON ({exc})", body) from None
    if not isinstance(doc, dict):
        raise bad_answer(path, f"JSON {type(doc).__name__}, not an object", body)
    return doc


def parse_page(body: bytes, path: str) -> dict[str, Any]:
    """A list answer with `data` (a list) and `has_more` (a boolean), or StripeBadAnswer."""
    doc = parse_json(body, path)
    if not isinstance(doc.get("data"), list) or not isinstance(doc.get("has_more"), bool):
        raise bad_answer(path, "a list answer without data/has_more", body)
    return doc


_SPACE = b" \t\r\n"


def _framed(body: bytes) -> bool:
    """Whether a body is framed as a JSON object (`{` ... `}`), as every Stripe answer is. Reads
    its ends only (a list page is parsed later, or not at all: see lister); catches HTML pages,
    empty bodies and most bodies cut short. The parse (`parse_json`) catches the rest."""
    start, end = 0, len(body) - 1
    while start <= end and body[start] in _SPACE:
        start += 1
    while end > start and body[end] in _SPACE:
        end -= 1
    return start < end and body[start] == 0x7B and body[end] == 0x7D


def endpoint_label(path: str) -> str:
    """`/v1/customers/cus_123/tax_ids` -> `/v1/customers/{id}/tax_ids` (bounded label set)."""
    return _ID_SEGMENT.sub("/{id}", path.split("?", 1)[0])


class StripeAPI:
    def __init__(
        self, cfg: Config, *, api_key: str | None = None, limiter: RateLimiter | None = None
    ):
        self.cfg = cfg
        self.limiter = limiter or limiter_for(cfg)
        self._http = stripe.AIOHTTPClient(timeout=cfg.stripe.request_timeout)
        self._client = stripe.StripeClient(
            api_key or cfg.require_api_key(),
            stripe_version=cfg.stripe.api_version,
            stripe_account=cfg.stripe.account or None,
            base_addresses={"api": cfg.stripe.api_base, "meter_events": cfg.meter_events_base},
            max_network_retries=0,
            http_client=self._http,
        )
        self.max_retries = cfg.stripe.max_retries
        self.clock = StripeClock()
        self.account: str | None = cfg.stripe.account or None  # the Stripe-Account header
        # Connect: whether this client's requests go ahead of others waiting for the same
        # endpoint now (an active account's, before the quiet accounts' polls).
        self.urgent: Callable[[], bool] = lambda: False

    def for_account(self, account: str | None, limiter: RateLimiter | None = None) -> StripeAPI:
        """This client acting for `account` (its Stripe-Account header; None: the key's own),
        over the same connections and Stripe clock; with `limiter`, under a budget of its own
        (`stripe.connect_limits = "account"`), else under this client's. Not to be closed."""
        view = copy.copy(self)
        view.account = account
        if limiter is not None:
            view.limiter = limiter
        return view

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> StripeAPI:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        base: str = "api",
        retry: bool = True,
    ) -> Reply:
        """Send one request (retried as policy allows); the 2xx answer's raw body and version.

        A body that is not framed as a JSON object, whatever the status, is a bad answer
        (retried). A stop (SIGTERM) ends a backoff at once: the last error is raised.
        """
        backoff = lifecycle.Backoff(0.5, 20.0)
        label = endpoint_label(path)
        key = f"{method.upper()} {label}"  # the endpoint Stripe limits
        while True:
            await self.limiter.acquire(key, first=self.urgent())
            sent = time.monotonic()
            # Stripe's time as the request leaves, from the band as it is now: an answer that
            # shows Stripe's clock jumped (an emulator's, moved) says nothing of before.
            earliest = self.clock.earliest(sent)
            status, body, headers = await self._send(method, path, params, idempotency_key, base)
            received = time.monotonic()
            metrics.api_requests.labels(label, str(status)).inc()
            written_before = self.clock.observe(_header(headers, "date"), sent, received)
            framed = _framed(body)
            if 200 <= status < 300 and framed:
                _bad_answers.good()
                version = self.clock.version(sent, earliest, received, written_before)
                return Reply(body, version, path)
            if status and not framed:
                kind = _header(headers, "content-type") or "no content type"
                err: StripeError = bad_answer(path, f"not a JSON object ({kind})", body, status)
            else:
                err = _translate(status, body, headers, path)
            if status == 429:  # slows this endpoint, or everyone when the global limit was hit
                reason = _header(headers, "stripe-rate-limited-reason")
                self.limiter.limited(key, reason, err.code)
            if not (retry and err.retryable and backoff.attempt < self.max_retries):
                raise err
            attempt = backoff.attempt
            delay = backoff.next()
            bad = isinstance(err, StripeBadAnswer)
            metrics.api_retries.labels("bad_answer" if bad else str(status or "network")).inc()
            if not bad:  # bad answers are logged once per burst (`_BadAnswers`)
                log.info(
                    "stripe_retry",
                    endpoint=label,
                    status=status,
                    attempt=attempt + 1,
                    delay=round(delay, 2),
                    error=str(err),
                )
            if not await lifecycle.pause(delay):
                log.info("stripe_retry_abandoned", endpoint=label, reason="stopping")
                raise err

    async def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        idempotency_key: str | None,
        base: str,
    ) -> tuple[int, bytes, Mapping[str, str]]:
        options: dict[str, Any] = {}
        if idempotency_key:
            options["idempotency_key"] = idempotency_key
        if self.account:
            options["stripe_account"] = self.account
        started = time.monotonic()
        try:
            content, status, headers = await self._client._requestor.request_raw_async(
                method.lower(),
                path,
                params=dict(params or {}),
                options=options,  # type: ignore[arg-type]
                base_address=base,  # type: ignore[arg-type]
                api_mode="V1",
                usage=["syncd"],
            )
        except stripe.APIConnectionError as exc:
            return 0, str(exc.user_message or exc).encode(), {}
        finally:
            metrics.request_seconds.observe(time.monotonic() - started)
        # Not streaming: the SDK hands back the whole body as bytes despite its annotation.
        return int(status), cast(bytes, content), headers

    async def get(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return (await self.request("GET", path, params)).json()

    async def get_page(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A list page: `data` (a list) and `has_more` (a boolean) checked."""
        return (await self.request("GET", path, params)).page()

    async def post(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        base: str = "api",
    ) -> dict[str, Any]:
        reply = await self.request("POST", path, params, idempotency_key=idempotency_key, base=base)
        return reply.json()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _translate(status: int, body: bytes, headers: Mapping[str, str], path: str) -> StripeError:
    if status == 0:
        return StripeRetryable(
            f"network error talking to Stripe ({path}): {body.decode(errors='replace')}"
        )
    try:
        error = orjson.loads(body).get("error", {})
    except (orjson.JSONDecodeError, AttributeError):
        error = {}
    message = str(error.get("message") or body[:200].decode(errors="replace") or f"HTTP {status}")
    code = error.get("code")
    text = f"Stripe answered {status} on {endpoint_label(path)}: {message}"
    should_retry = _header(headers, "stripe-should-retry")
    if should_retry == "false":
        return StripeError(text, status=status, code=code)
    if status in _RETRY_STATUS or should_retry == "true":
        return StripeRetryable(text, status=status, code=code)
    if status in (401, 403):
        return StripePermissionDenied(text, status=status, code=code)
    if status == 404:
        return StripeNotFound(text, status=status, code=code)
    if (
        status == 400
        and "/v1/events" in path
        and ("30 days" in message or "expired" in message.lower())
    ):
        return CursorExpired(text, status=status, code=code)
    return StripeError(text, status=status, code=code)
