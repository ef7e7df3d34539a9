"""structlog, configured once: JSON lines off a terminal, readable on one, secrets scrubbed.

Event names are stable snake_case (`events_page_applied`); context such as the resource, the
account and the event id is bound with `bind_context` (contextvars), so every line of a batch
carries it without passing loggers around.

Libraries log through the standard `logging` module (asyncpg, aiohttp, apscheduler, stripe,
asyncio under uvloop). The root logger's one handler renders their records with structlog's
`ProcessorFormatter`: the same processors (level, time, context, exception, secret scrubbing)
and the same renderer as syncd's own lines, on the same stream, so a JSON log holds only JSON.
Libraries speak at `log.level` when it is debug, else from warning up: their info lines are one
per request or job (a Stripe request, a health probe, a scheduler run).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

import orjson
import structlog

from syncd.redaction import scrub

get_logger = structlog.get_logger
# What ProcessorFormatter adds to a standard library record's event dict (removed before rendering).
_FORMATTER_META = frozenset({"_record", "_from_structlog"})


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, BaseException):
        return scrub(repr(value))
    if isinstance(value, Mapping):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_scrub_value(v) for v in value]
    return value


def _scrub_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # Last line of defence: a key or DSN that slipped into a message or a value never leaves.
    for key, value in event_dict.items():
        if key not in _FORMATTER_META:
            event_dict[key] = _scrub_value(value)
    return event_dict


def _as_text(obj: Any) -> str:
    return scrub(str(obj))  # a value orjson cannot serialize is shown as its text, scrubbed


def _json_dumps(obj: Any, **_kw: Any) -> str:
    return orjson.dumps(obj, default=_as_text).decode()


class _StdlibHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root logger's handler, installed by `configure` (and replaced by a second call)."""


def configure(level: str = "info", fmt: str = "auto") -> None:
    as_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _scrub_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json_dumps)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    threshold = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    _configure_stdlib(processors, renderer, threshold)


def _configure_stdlib(processors: list[Any], renderer: Any, threshold: int) -> None:
    """Route every `logging` record through the same processors and renderer."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            structlog.processors.StackInfoRenderer(),
            *processors,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = _StdlibHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(threshold if threshold <= logging.DEBUG else max(threshold, logging.WARNING))


@contextmanager
def bind_context(**values: Any) -> Iterator[None]:
    """Bind context (resource=..., event_id=...) to every log line inside the block."""
    with structlog.contextvars.bound_contextvars(**values):
        yield
