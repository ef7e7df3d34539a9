"""JSON that PostgreSQL's jsonb can store, with nothing lost.

jsonb refuses one thing valid JSON may hold: the NUL character (`\\u0000`) in a string or a key.
Stripe objects can carry one (a customer's name pasted from somewhere), and refusing the object
would leave a hole in the mirror. Such strings are stored escaped, and the escaping is
reversible and unambiguous:

    a string that contains NUL, or begins with U+FFFE, is stored as
    U+FFFE + the string with every backslash doubled and every NUL written as backslash-zero

U+FFFE is a Unicode noncharacter that never begins real text; a string that does begin with it
is escaped too, so reading back (`unescape`) never mistakes an original string for an escaped
one. Every other string is stored exactly as sent. `escape`/`unescape` work on parsed objects;
`storable` on a JSON array's bytes, untouched (and without parsing) in the common case.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from syncd import metrics

MARK = "\ufffe"
# JSON text that may hold a NUL or the mark: escaped (any case of hex digits) or the mark's raw
# UTF-8 bytes. A false positive (an escaped backslash before `u0000`) only costs a parse.
_SUSPECT = re.compile(rb"\\u(?:0000|[fF][fF][fF][eE])|\xef\xbf\xbe")


def escape_str(s: str) -> str:
    if "\0" not in s and not s.startswith(MARK):
        return s
    return MARK + s.replace("\\", "\\\\").replace("\0", "\\0")


def unescape_str(s: str) -> str:
    """The string Stripe sent, from what the mirror stores."""
    if not s.startswith(MARK):
        return s
    return re.sub(r"\\(\\|0)", lambda m: "\0" if m.group(1) == "0" else "\\", s[1:])


def escape(value: Any) -> Any:
    """`value` with every string (and key) escaped where needed; other values as they are."""
    if isinstance(value, str):
        return escape_str(value)
    if isinstance(value, dict):
        return {escape_str(k): escape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escape(v) for v in value]
    return value


def unescape(value: Any) -> Any:
    """The inverse of `escape`: the object as Stripe sent it, from `raw`."""
    if isinstance(value, str):
        return unescape_str(value)
    if isinstance(value, dict):
        return {unescape_str(k): unescape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unescape(v) for v in value]
    return value


def loads_lax(body: bytes | str) -> Any:
    """JSON parsed by orjson, or, for text it refuses only for lone surrogates (an invalid
    escape such as `\\ud800`), by the standard library, which keeps them in the strings."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def storable(payload: bytes) -> bytes:
    """A JSON array's bytes ready for jsonb: as they are unless a string needs escaping."""
    if _SUSPECT.search(payload) is None:
        return payload
    objects = orjson.loads(payload)
    escaped = escape(objects)
    if escaped == objects:
        return payload
    if isinstance(objects, list):
        metrics.nul_escaped.inc(sum(1 for a, b in zip(objects, escaped, strict=True) if a != b))
    return orjson.dumps(escaped)
