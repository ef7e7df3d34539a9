"""Reading list pages: the plain-page path (entries checked without building objects) gives
exactly what the full path gives, and every irregular page goes the full path."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from syncd.lister import Page, PageReader, Slice, read_plain_page
from syncd.registry import BY_TABLE
from syncd.stripe_api import Reply
from syncd.versions import Version

CUSTOMERS = BY_TABLE["customers"]


def customer(i: int, created: int = 1_700_000_000) -> dict[str, Any]:
    return {
        "id": f"cus_{i:04d}",
        "object": "customer",
        "created": created - i,
        "email": f"user{i}@example.com",
        "metadata": {"n": str(i)},
        "invoice_settings": {"default_payment_method": None},
        "name": "Zoë \u2603",
    }


def body(data: list[Any], has_more: bool = True, indent: bool = False) -> bytes:
    doc = {"object": "list", "data": data, "has_more": has_more, "url": "/v1/customers"}
    # Stripe itself answers indented JSON
    return json.dumps(doc, indent=2 if indent else None, ensure_ascii=False).encode()


async def both(data: bytes, lo: int = 0) -> tuple[Page, Page, Slice, Slice]:
    reader = PageReader(CUSTOMERS, [], None, set())  # type: ignore[arg-type]
    plain, full = Slice("customers", 0, 0, lo=lo), Slice("customers", 0, 0, lo=lo)
    reply = Reply(data, Version.at(1234.5))
    return await reader.read(plain, reply), await reader.read_objects(full, reply), plain, full


def same(a: Page, b: Page) -> None:
    assert orjson.loads(a.data) == orjson.loads(b.data)
    assert (a.count, a.version, a.done, a.checkpoint) == (b.count, b.version, b.done, b.checkpoint)
    assert (a.children, a.rejected) == (b.children, b.rejected)


@pytest.mark.parametrize("has_more", [True, False])
@pytest.mark.parametrize("indent", [False, True])
async def test_plain_pages_read_as_the_full_path_reads_them(has_more: bool, indent: bool) -> None:
    data = body([customer(i) for i in range(100)], has_more=has_more, indent=indent)
    plain, full, s1, s2 = await both(data)
    same(plain, full)
    assert (
        (s1.cursor, s1.cursor_created)
        == (s2.cursor, s2.cursor_created)
        == ("cus_0099", 1_700_000_000 - 99)
    )
    assert plain.done is not has_more
    # The page's own bytes go to PostgreSQL, not a re-serialization of parsed objects.
    text = data.decode()
    assert plain.data.decode() == text[text.index("[") : text.rindex("]") + 1]


async def test_an_empty_page_ends_the_slice() -> None:
    plain, full, s1, _ = await both(body([], has_more=False))
    same(plain, full)
    assert plain.done and plain.count == 0 and s1.cursor is None


# One irregular entry, then a regular last one (the cursor pages on the last entry's id).
IRREGULAR: dict[str, list[Any]] = {
    "not an object": ["cus_x", customer(1)],
    "no id": [{"object": "customer", "created": 1}, customer(1)],
    "empty id": [{**customer(2), "id": ""}, customer(1)],
    "id not a string": [{**customer(2), "id": 7}, customer(1)],
    "another type": [{**customer(2), "object": "charge"}, customer(1)],
    "created not an integer": [{**customer(2), "created": "yesterday"}, customer(1)],
    "older than the slice": [customer(1), customer(2, created=10)],
}


@pytest.mark.parametrize("entries", IRREGULAR.values(), ids=IRREGULAR.keys())
async def test_irregular_pages_take_the_full_path(entries: list[Any]) -> None:
    data = body(entries)
    assert read_plain_page(CUSTOMERS, data, lo=1_000) is None
    plain, full, s1, s2 = await both(data, lo=1_000)
    same(plain, full)
    assert (s1.cursor, s1.cursor_created) == (s2.cursor, s2.cursor_created)


@pytest.mark.parametrize(
    "text", [b"not json", b"[]", b'{"data": []}', b'{"data": {}, "has_more": false}']
)
def test_answers_that_are_not_lists_are_not_plain(text: bytes) -> None:
    assert read_plain_page(CUSTOMERS, text, lo=0) is None


async def test_bad_entries_are_rejected_with_their_reason() -> None:
    plain, _, s, _ = await both(body(IRREGULAR["another type"][:1] + IRREGULAR["no id"]))
    assert [(r.object_id, r.reason) for r in plain.rejected] == [
        ("cus_0002", "object is 'charge', expected 'customer'"),
        (None, "no id"),
    ]
    assert plain.count == 1 and s.rejected == 2
