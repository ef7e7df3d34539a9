"""Decode Stripe's bracketed form encoding (``a[b][0][c]=v``) into nested dicts and lists.

stripe-python encodes lists with explicit indices (``items[0][price]``); curl users write
``expand[]=``. Both become Python lists. Values stay strings, as Stripe receives them; resource
code coerces per field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

from .errors import invalid

_SEG = re.compile(r"\[([^\]]*)\]")


def _split(key: str) -> list[str]:
    i = key.find("[")
    if i < 0:
        return [key]
    head = key[:i]
    rest = key[i:]
    segs = _SEG.findall(rest)
    if "".join(f"[{s}]" for s in segs) != rest:
        raise invalid(f"Invalid parameter name: {key}", param=key)
    return [head, *segs]


def decode_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for key, value in pairs:
        segs = _split(key)
        node: dict[str, Any] = root
        for j, seg in enumerate(segs):
            last = j == len(segs) - 1
            if seg == "":
                # "x[]" appends: give it a fresh numeric index
                seg = str(len(node))
            if last:
                node[seg] = value
            else:
                nxt = node.get(seg)
                if not isinstance(nxt, dict):
                    nxt = {}
                    node[seg] = nxt
                node = nxt
    return _listify(root)  # type: ignore[no-any-return]


def _listify(v: Any) -> Any:
    if isinstance(v, dict):
        conv = {k: _listify(x) for k, x in v.items()}
        if conv and all(k.isdigit() for k in conv):
            return [conv[k] for k in sorted(conv, key=int)]
        return conv
    return v


def decode(body: str) -> dict[str, Any]:
    return decode_pairs(parse_qsl(body, keep_blank_values=True))
