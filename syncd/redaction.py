"""Keep secrets out of every output: logs, `syncd config`, error messages and HTTP endpoints."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"

# Stripe secret and restricted keys (test and live), and the password part of any URL.
_STRIPE_KEY = re.compile(r"\b(sk|rk)_(test|live)_[0-9A-Za-z]+")
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@")
_PASSWORD_PARAM = re.compile(r"(?i)(password=)[^&\s]+")


def redact_key(key: str) -> str:
    """Keep the prefix (mode and kind are useful to an operator) and the last 4 characters."""
    if not key:
        return ""
    m = _STRIPE_KEY.match(key)
    if m:
        return f"{m.group(1)}_{m.group(2)}_{REDACTED}{key[-4:]}"
    return REDACTED


def redact_dsn(dsn: str) -> str:
    """Return the DSN with its password (in the netloc or as a parameter) replaced."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return scrub(dsn)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{hostinfo}" if ":" in userinfo else f"{user}@{hostinfo}"
    query = _PASSWORD_PARAM.sub(rf"\g<1>{REDACTED}", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub(text: str) -> str:
    """Remove anything that looks like a secret from free text (log lines, exception messages)."""
    text = _STRIPE_KEY.sub(lambda m: redact_key(m.group(0)), text)
    text = _URL_PASSWORD.sub(rf"\g<scheme>\g<user>:{REDACTED}@", text)
    return _PASSWORD_PARAM.sub(rf"\g<1>{REDACTED}", text)
