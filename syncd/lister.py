"""Reading Stripe lists for the full resync: one page at a time, never as SDK objects.

The common page (a type without children, every entry a well-formed object of the listed type
inside the slice) is checked without building its objects: msgspec reads only `id`, `object`
and `created` of each entry and skips the rest unread, and the page's own `data` bytes go to
PostgreSQL (0.2 ms for 100 customers; parsing them with orjson, checking them and writing them
out again took 0.5 ms, a fifth of syncd's CPU in a resync). Any other page is parsed with orjson,
each object checked (an id, the listed type), the bad ones recorded with their reason, and the
accepted ones re-serialized as one JSON array. Children that a parent carries only partly (an
inline list with `has_more`) or not at all (per-parent lists such as a customer's tax ids) are
fetched here, so the page and all its children are written in one transaction.

Slices: a (table, list variant) is walked newest first inside a created-time range [lo, hi).
`Slice` is the in-memory state; `split` hands the older half of a running slice to an idle
worker. The split and the per-page cursor update are synchronous code (no await between the
decision and the change), so a page never keeps objects that now belong to another slice: the
slices never overlap and never leave a gap, and their counts add up exactly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
import orjson

from syncd.errors import StripeError, StripeNotFound
from syncd.registry import BY_TABLE, Child, Embed, Resource
from syncd.stripe_api import Reply, parse_page
from syncd.versions import Version

PAGE_LIMIT = 100
# A child pager that has not ended after this many pages is looping (SYNC_PITFALLS 5).
MAX_CHILD_PAGES = 1000

Fetch = Callable[[str, Mapping[str, Any]], Awaitable[Reply]]


@dataclass
class Slice:
    table: str
    variant: int
    no: int
    lo: int = 0
    hi: int | None = None
    cursor: str | None = None
    cursor_created: int | None = None
    objects: int = 0
    pages: int = 0
    rejected: int = 0
    children: int = 0
    done: bool = False
    busy: bool = False
    # The slice's last page held only objects new to the mirror: the next one probably does
    # too, and is tried as a plain insert (`insert_objects`, Database.statement). In memory only.
    fresh: bool = False

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.table, self.variant, self.no)

    def remaining_estimate(self, now: float) -> float:
        """Objects probably left: the density seen so far over the range not yet walked."""
        if self.cursor_created is None or self.done:
            return 0.0
        top = self.hi if self.hi is not None else now
        covered = max(1.0, top - self.cursor_created)
        return self.objects / covered * (self.cursor_created - self.lo)

    def split(self, next_no: int) -> Slice | None:
        """Give the older half of the range still to walk to a new slice (None: too small)."""
        if self.cursor_created is None or self.done or self.cursor_created - self.lo < 2:
            return None
        mid = self.lo + (self.cursor_created - self.lo) // 2
        older = Slice(self.table, self.variant, next_no, lo=self.lo, hi=mid)
        self.lo = mid
        return older


@dataclass
class Rejected:
    object_id: str | None
    reason: str
    raw: Any


@dataclass
class ChildWrite:
    """Children to write with a page: the complete set of one parent (owned) or loose objects."""

    resource: Resource
    parent_id: str | None
    objects: list[dict[str, Any]]
    version: Version


@dataclass
class Page:
    slice: Slice
    resource: Resource
    data: bytes  # JSON array of the accepted objects
    count: int
    version: Version
    done: bool
    # The slice's state once this page is written: (cursor, cursor_created, objects, pages,
    # rejected, children, done), saved in the page's transaction.
    checkpoint: tuple[str | None, int | None, int, int, int, int, bool]
    children: list[ChildWrite] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    committed: anyio.Event = field(default_factory=anyio.Event)


def list_params(
    resource: Resource,
    variant: int,
    s: Slice,
    children: Sequence[Child] | None = None,
    embeds: Sequence[Embed] = (),
) -> dict[str, Any]:
    """The list request for slice `s`; inline child lists that need an expand are expanded
    for `children` (None: every child of the type), only for mirrored children: an expanded
    list is taken out of the stored object, so one nobody reads would be stored in `raw`.
    `embeds`: objects of mirrored types expanded in place (`PageReader` puts their ids back)."""
    params: dict[str, Any] = {"limit": PAGE_LIMIT, **resource.list_variants[variant]}
    created: dict[str, int] = {}
    if s.lo > 0:
        created["gte"] = s.lo
    if s.hi is not None:
        created["lt"] = s.hi
    if created:
        params["created"] = created
    if s.cursor:
        params["starting_after"] = s.cursor
    expand = [
        f"data.{child.parent_expand}"
        for child in (resource.children if children is None else children)
        if child.parent_expand
    ]
    expand.extend(e.expand for e in embeds)
    if expand:
        params["expand"] = expand
    return params


def parse_list(body: bytes, what: str) -> tuple[list[Any], bool]:
    """`data` and `has_more` of a list body; any other body is a bad answer (retryable)."""
    doc = parse_page(body, what)
    return doc["data"], doc["has_more"]


class _Entry(msgspec.Struct):
    """What a page's entries are checked by; msgspec skips their other fields unread."""

    id: str
    object: str
    created: int | None = None


class _ListBody(msgspec.Struct):
    data: msgspec.Raw
    has_more: bool


_LIST_BODY = msgspec.json.Decoder(_ListBody)
_ENTRIES = msgspec.json.Decoder(list[_Entry])


def read_plain_page(
    resource: Resource, body: bytes, lo: int
) -> tuple[bytes, list[_Entry], bool] | None:
    """A page with nothing to reject or drop, read without building its objects: its `data`
    bytes as they came, its entries, `has_more`. None: any other page (the caller parses it)."""
    try:
        doc = _LIST_BODY.decode(body)
        entries = _ENTRIES.decode(doc.data)
    except msgspec.DecodeError:  # also a ValidationError: an entry of another shape
        return None
    for e in entries:
        if not e.id or (e.object != resource.object and e.object not in resource.event_objects):
            return None
        if lo and e.created is not None and e.created < lo:
            return None
    return bytes(doc.data), entries, doc.has_more


def check_object(resource: Resource, o: Any) -> str | None:
    """Why `o` cannot be mirrored as a `resource` row (None: it can)."""
    if not isinstance(o, dict):
        return f"not a JSON object ({type(o).__name__})"
    oid = o.get("id")
    if not isinstance(oid, str) or not oid:
        return "no id"
    kind = o.get("object")
    if kind != resource.object and kind not in resource.event_objects:
        return f"object is {kind!r}, expected {resource.object!r}"
    return None


async def fetch_all(
    fetch: Fetch, path: str, params: Mapping[str, Any], child: Resource
) -> tuple[list[dict[str, Any]], list[Rejected], Version]:
    """Every entry of a child list, paged; its version spans every page's."""
    out: list[dict[str, Any]] = []
    rejected: list[Rejected] = []
    cursor: str | None = None
    version: Version | None = None
    seen: set[str] = set()
    for _ in range(MAX_CHILD_PAGES):
        p = {**params, "limit": PAGE_LIMIT}
        if cursor:
            p["starting_after"] = cursor
        reply = await fetch(path, p)
        version = reply.version if version is None else version.spanning(reply.version)
        data, has_more = parse_list(reply.body, path)
        for o in data:
            reason = check_object(child, o)
            if reason:
                rejected.append(Rejected(_id_of(o), reason, o))
                continue
            out.append(o)
        last = next((o.get("id") for o in reversed(data) if isinstance(o, dict)), None)
        if not has_more or not data:
            return out, rejected, version.spanning(reply.version)
        if not isinstance(last, str) or last in seen:
            raise StripeError(f"{path}: child pager repeats cursor {last!r}")
        seen.add(last)
        cursor = last
    raise StripeError(f"{path}: child list longer than {MAX_CHILD_PAGES} pages")


@dataclass
class ChildLists:
    """What a run learns about per-parent lists besides their children: the child tables the
    key may not read (401/403: skipped for the rest of the run) and, per (parent table, child
    table), the parents whose list answered 404 (a parent that exists has a list: reported
    with the run, never skipped silently)."""

    disabled: set[str]
    missing: dict[tuple[str, str], int]


async def fetch_children(
    fetch: Fetch, child: Child, res: Resource, parent_table: str, pid: str, lists: ChildLists
) -> tuple[ChildWrite | None, list[Rejected], bool]:
    """One parent's complete child list (`fetch_all`): the write, the objects rejected, and
    whether Stripe answered (False: the child table is not readable, see `ChildLists`)."""
    if res.table in lists.disabled:
        return None, [], False
    path, params = child.for_parent(pid)
    try:
        kids, bad, version = await fetch_all(fetch, path, params, res)
    except StripeNotFound:
        # The parent may have gone since its page was listed; more often the endpoint is
        # missing for this account. Counted, reported with the run.
        key = (parent_table, res.table)
        lists.missing[key] = lists.missing.get(key, 0) + 1
        return None, [], True
    except StripeError as exc:
        if exc.status in (401, 403) and exc.code != "account_invalid":
            lists.disabled.add(res.table)
            return None, [], False
        raise
    return ChildWrite(res, pid if res.owned else None, kids, version), bad, True


def dump_objects(objects: list[dict[str, Any]]) -> tuple[bytes, list[Rejected]]:
    """`objects` as one JSON array; the ones JSON cannot carry (strings with lone surrogates,
    which Stripe's answer held as invalid escapes) are left out and returned as rejected."""
    try:
        return orjson.dumps(objects), []
    except orjson.JSONEncodeError:
        good: list[dict[str, Any]] = []
        bad: list[Rejected] = []
        for o in objects:
            try:
                orjson.dumps(o)
            except orjson.JSONEncodeError as exc:
                bad.append(Rejected(_id_of(o), f"invalid JSON string: {exc}", o))
            else:
                good.append(o)
        return orjson.dumps(good), bad


def _id_of(o: Any) -> str | None:
    if isinstance(o, dict) and isinstance(o.get("id"), str):
        return str(o["id"])
    return None


class PageReader:
    """Turns one list answer into a `Page`: checks objects, completes children, moves the cursor."""

    def __init__(
        self,
        resource: Resource,
        child_resources: list[tuple[Child, Resource]],
        fetch: Fetch,
        disabled_children: set[str],
        embeds: Sequence[Embed] = (),
    ):
        self.resource = resource
        self.children = child_resources
        self.embeds = list(embeds)
        self.fetch = fetch
        # Child tables the key may not read (403): skipped for the rest of the run.
        self.disabled_children = disabled_children
        # Per-parent lists that answered 404 for a parent just listed, by child table: a
        # parent that exists has a list, so this is a problem to report, never a silent skip.
        self.missing_children: dict[tuple[str, str], int] = {}

    async def read(self, s: Slice, reply: Reply) -> Page:
        if not self.children and not self.embeds:
            plain = read_plain_page(self.resource, reply.body, s.lo)
            if plain is not None:
                data, entries, has_more = plain
                last = entries[-1] if entries else None
                # Nothing awaits from here to the cursor update (see the module docstring).
                return self._page(
                    s,
                    reply,
                    data,
                    len(entries),
                    (last.id, last.created) if last else None,
                    done=not has_more or not entries,
                )
        return await self.read_objects(s, reply)

    async def read_objects(self, s: Slice, reply: Reply) -> Page:
        """Any page: parsed, each object checked, bad ones rejected, children completed."""
        data, has_more = parse_list(reply.body, self.resource.list_path or self.resource.table)
        accepted: list[dict[str, Any]] = []
        rejected: list[Rejected] = []
        for o in data:
            reason = check_object(self.resource, o)
            if reason:
                rejected.append(Rejected(_id_of(o), reason, o))
            else:
                accepted.append(o)
        embedded = self._embedded(accepted, rejected, reply.version)
        children = await self._children(accepted, rejected, reply.version) + embedded
        # From here to the return nothing awaits: a split cannot slip between the filter and
        # the cursor update (see the module docstring).
        kept: list[dict[str, Any]] = []
        passed_lo = False
        for o in accepted:
            created = o.get("created")
            if s.lo and isinstance(created, int) and created < s.lo:
                passed_lo = True  # older than the slice now: another slice lists it
                continue
            kept.append(o)
        if len(kept) != len(accepted):
            ids = {o["id"] for o in kept}
            children = [c for c in children if c.parent_id is None or c.parent_id in ids]
        last = data[-1] if data else None
        cursor: tuple[str, int | None] | None = None
        if isinstance(last, dict) and isinstance(last.get("id"), str):
            created = last.get("created")
            cursor = (last["id"], created if isinstance(created, int) else None)
        elif data:
            raise StripeError(f"{self.resource.table}: last entry of a page has no id to page on")
        data_bytes, unstorable = dump_objects(kept)
        if unstorable:
            rejected.extend(unstorable)
            kept = [o for o in kept if not any(o is b.raw for b in unstorable)]
        return self._page(
            s,
            reply,
            data_bytes,
            len(kept),
            cursor,
            done=passed_lo or not has_more or not data,
            children=children,
            rejected=rejected,
        )

    def _page(
        self,
        s: Slice,
        reply: Reply,
        data: bytes,
        count: int,
        cursor: tuple[str, int | None] | None,
        *,
        done: bool,
        children: list[ChildWrite] | None = None,
        rejected: list[Rejected] | None = None,
    ) -> Page:
        """Move the slice past the page (its last entry: id, created) and count it."""
        children = children or []
        rejected = rejected or []
        if cursor is not None:
            s.cursor = cursor[0]
            if cursor[1] is not None:
                s.cursor_created = cursor[1]
        s.objects += count
        s.pages += 1
        s.rejected += len(rejected)
        s.children += sum(len(c.objects) for c in children)
        checkpoint = (
            s.cursor,
            s.cursor_created,
            s.objects,
            s.pages,
            s.rejected,
            s.children,
            done,
        )
        return Page(
            s,
            self.resource,
            data,
            count,
            reply.version,
            done,
            checkpoint,
            children,
            rejected,
        )

    def _embedded(
        self, parents: list[dict[str, Any]], rejected: list[Rejected], version: Version
    ) -> list[ChildWrite]:
        """The objects `embeds` expanded in `parents`, each put back as its id so the parent
        is stored as Stripe serves it."""
        out: list[ChildWrite] = []
        for embed in self.embeds:
            res = BY_TABLE[embed.table]
            found: dict[str, dict[str, Any]] = {}
            for parent in parents:
                holder: Any = parent
                for key in embed.path[:-1]:
                    holder = holder.get(key) if isinstance(holder, dict) else None
                if not isinstance(holder, dict):
                    continue
                value = holder.get(embed.path[-1])
                if not isinstance(value, dict):
                    continue  # not set, or not expanded: nothing embedded
                holder[embed.path[-1]] = value.get("id")
                reason = check_object(res, value)
                if reason:
                    rejected.append(Rejected(_id_of(value), f"{res.table}: {reason}", value))
                elif embed.only_with is None or value.get(embed.only_with):
                    found[value["id"]] = value
            if found:
                out.append(ChildWrite(res, None, list(found.values()), version))
        return out

    async def _children(
        self, parents: list[dict[str, Any]], rejected: list[Rejected], version: Version
    ) -> list[ChildWrite]:
        out: list[ChildWrite] = []
        if not self.children or not parents:
            return out

        # Inline lists that are complete are taken as they are (no task, no request); only
        # the parents whose list needs requests get a task each.
        remote: list[tuple[Child, Resource, str]] = []
        for parent in parents:
            pid = parent["id"]
            for child, res in self.children:
                if not child.inline_field:
                    remote.append((child, res, pid))
                    continue
                # An expanded list is not part of the parent's own shape (events never carry
                # it): take it out so the row stores the object as Stripe renders it.
                if child.parent_expand:
                    inline = parent.pop(child.inline_field, None)
                else:
                    inline = parent.get(child.inline_field)
                if not isinstance(inline, dict) or not isinstance(inline.get("data"), list):
                    continue  # the parent carries no list here: nothing to replace
                if inline.get("has_more"):
                    remote.append((child, res, pid))
                    continue
                kids: list[dict[str, Any]] = []
                for o in inline["data"]:
                    reason = check_object(res, o)
                    if reason:
                        rejected.append(Rejected(_id_of(o), f"{res.table}: {reason}", o))
                    else:
                        kids.append(o)
                out.append(ChildWrite(res, pid, kids, version))

        lists = ChildLists(self.disabled_children, self.missing_children)

        async def one(child: Child, res: Resource, pid: str) -> None:
            write, bad, _ = await fetch_children(
                self.fetch, child, res, self.resource.table, pid, lists
            )
            rejected.extend(bad)
            if write is not None:
                out.append(write)

        if remote:
            async with anyio.create_task_group() as tg:
                for child, res, pid in remote:
                    tg.start_soon(one, child, res, pid)
        return out
