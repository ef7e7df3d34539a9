"""Turns a batch of Stripe events into mirror writes: one write per changed object.

A batch is coalesced by object and routed by `data.object.object` (never by the type prefix:
`charge.dispute.*` carries disputes, `customer.subscription.*` subscriptions). Each object then
becomes one `Change`, made in one of two ways:

* refetch (default): the object is retrieved again at the pinned API version, so the row holds
  its current state in one API shape, stamped with the fetch time on Stripe's clock;
* snapshot: the newest event's `data.object` is written, its version the event's `created`
  second. Two events of the object in that second, a row whose version overlaps that second,
  another API version, or a truncated child list make it a refetch instead: a tie is never
  guessed (versions are intervals, `syncd.versions`).

Deletes (`*.deleted`, a refetch answering `deleted: true` or 404) write tombstones, which are
final. `customer.subscription.deleted` is a cancellation and updates the row like any other.
Owned children (subscription items, invoice lines, checkout line items) are replaced with
their parent's complete list. Events that cannot be applied become ledger rows with a reason.

`prepare` does the network work (outside any transaction); `write` is the database part and
runs inside the caller's transaction together with the ledger rows and the cursor.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import anyio
import orjson

from syncd import metrics
from syncd.config import Config
from syncd.db import Database, Tx
from syncd.errors import StripeError, StripeNotFound, one_error
from syncd.logs import get_logger
from syncd.quarantine import Quarantine, refusal
from syncd.registry import BY_OBJECT, BY_TABLE, Child, Resource
from syncd.storable import storable
from syncd.stripe_api import StripeAPI
from syncd.versions import Version
from syncd.writer import Writer

Event = dict[str, Any]
SUMMARY_OBJECT = "entitlements.active_entitlement_summary"
OVERLAP_SOURCE = "overlap refetch"
# A child pager that keeps going past this many pages is looping (SYNC_PITFALLS 5).
_MAX_CHILD_PAGES = 1000


log = get_logger(__name__)


@dataclass
class Change:
    """What one object's events amount to: the object (or a tombstone) and its owned children."""

    resource: Resource | None  # None: only the children change (entitlement summaries)
    obj: dict[str, Any] | None
    version: Version
    api_version: str | None
    parent_id: str = ""
    children: list[tuple[Resource, list[dict[str, Any]]]] = field(default_factory=list)
    # Child lists an event snapshot does not carry (they need an expand): paged separately.
    unexpanded: list[Child] = field(default_factory=list)
    # Other objects this change implies changed without an event of theirs (IMPLIED), listed
    # again: (resource, objects, version), upserted under the version guard.
    related: list[tuple[Resource, list[dict[str, Any]], Version]] = field(default_factory=list)
    # The owned children of those related objects (a listed subscription's items): (child
    # type, parent id, the complete set, its version), replaced as a parent's children are.
    related_children: list[tuple[Resource, str, list[dict[str, Any]], Version]] = field(
        default_factory=list
    )


# Changes Stripe makes to other objects without an event of those objects, caught from the
# event of the object that caused them (docs/events.md, "Changes announced elsewhere"): an
# applied change of the key table lists the related objects again, one list per change.
IMPLIED: dict[str, list[Child]] = {
    # An invoice takes up the customer's pending invoice items (their `invoice` is set): Stripe
    # has no invoiceitem.updated event.
    "invoices": [Child("invoice_items", None, "/v1/invoiceitems", {"invoice": "{id}"})],
    # Subscription items embed their price: a changed price changes them, without an event of
    # theirs. The subscriptions with that price are listed again, their items with them.
    "prices": [
        Child("subscriptions", None, "/v1/subscriptions", {"price": "{id}", "status": "all"})
    ],
}
# Events that change another object they name, without an event of that object: the object is
# retrieved again. Finalizing an invoice numbers it from the customer's `next_invoice_sequence`
# and applies the customer's `balance`; a credit note may credit that balance.
REFERENCED: dict[str, tuple[str, str]] = {
    "invoice.finalized": ("customer", "customers"),
    "credit_note.created": ("customer", "customers"),
    "credit_note.voided": ("customer", "customers"),
}


@dataclass
class Group:
    """The events of one object in a batch (or one ignored event) and what they became."""

    events: list[Event]
    object_type: str | None
    object_id: str | None
    outcome: str = "applied"
    reason: str = ""
    change: Change | None = None

    @property
    def source(self) -> str:
        """What the change's writes record as their source (history): the newest event of the
        object, or `overlap refetch` for a fetch settling overlapping versions (no events)."""
        return str(self.events[-1].get("id")) if self.events else OVERLAP_SOURCE

    def ledger_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "event_id": e["id"],
                "type": str(e.get("type") or ""),
                "created": int(e.get("created") or 0),
                "object_type": self.object_type,
                "object_id": self.object_id,
                "outcome": self.outcome,
                "reason": self.reason,
            }
            for e in self.events
        ]


def is_deletion(event_type: str) -> bool:
    # customer.subscription.deleted means canceled: the subscription still exists (pitfall 8).
    return event_type.endswith(".deleted") and event_type != "customer.subscription.deleted"


# Lifecycle facts that order events of one object within one second (SYNC_PITFALLS 2: never
# guess from `created` or ids): a deletion is final (Stripe never undeletes), an object's
# `*.created` precedes its every other event, and an invoice is finalized before it is paid,
# fails payment, is voided or marked uncollectible.
_AFTER_FINALIZED = frozenset(
    {
        "invoice.paid",
        "invoice.payment_succeeded",
        "invoice.payment_failed",
        "invoice.payment_action_required",
        "invoice.voided",
        "invoice.marked_uncollectible",
    }
)


def _precedes(earlier: str, later: str) -> bool:
    if is_deletion(later) and not is_deletion(earlier):
        return True
    if earlier.endswith(".created") and not later.endswith(".created"):
        return True
    return earlier == "invoice.finalized" and later in _AFTER_FINALIZED


def newest_of_second(events: list[Event], second: int) -> Event | None:
    """The event of one object whose snapshot is certainly its newest state among its events
    of `second`, or None when that is unknown. Events that a lifecycle fact puts before another
    of the same second are out; the rest must all carry the same content (`invoice.paid` and
    `invoice.payment_succeeded` announce one change), else which is newest is unknown."""
    tied = [e for e in events if int(e.get("created") or 0) == second]
    types = [str(e.get("type") or "") for e in tied]
    last = [e for e, t in zip(tied, types, strict=True) if not any(_precedes(t, u) for u in types)]
    if len(last) == 1:
        return last[0]  # the usual case: nothing to compare (no serialising on the hot path)
    contents = {orjson.dumps(_object_of(e), option=orjson.OPT_SORT_KEYS) for e in last}
    return last[-1] if len(contents) == 1 else None


def _object_of(event: Event) -> dict[str, Any] | None:
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    return obj if isinstance(obj, dict) else None


class Applier:
    def __init__(
        self,
        cfg: Config,
        db: Database,
        api: StripeAPI,
        writer: Writer,
        resources: Sequence[Resource],
    ):
        self.db = db
        self.api = api
        self.writer = writer
        self.mode = cfg.events.apply_mode
        self.pinned = cfg.stripe.api_version
        self.tables = {r.table for r in resources}
        self.fetch_limit = anyio.CapacityLimiter(cfg.events.fetch_concurrency)
        self.quarantine = Quarantine(db)
        self._listed_before = time.monotonic()

    # ---- planning (network, no transaction) -------------------------------------------------

    async def prepare(self, events: list[Event]) -> list[Group]:
        """Coalesce `events` by object and decide each object's change (refetching as needed)."""
        # Every event of the batch was listed before now: its change came before this moment.
        self._listed_before = time.monotonic()
        ordered = sorted(events, key=lambda e: (int(e.get("created") or 0), str(e.get("id"))))
        groups: dict[tuple[str, str], Group] = {}
        out: list[Group] = []
        for event in ordered:
            key, ignored = self._route(event)
            if ignored is not None:
                out.append(ignored)
                continue
            assert key is not None
            group = groups.get(key)
            if group is None:
                group = groups[key] = Group([], key[0], key[1])
                out.append(group)
            group.events.append(event)
        routed = [g for g in out if g.outcome == "applied"]
        versions = await self._row_versions(routed) if self.mode == "snapshot" else {}
        to_fetch: list[Group] = []
        for group in routed:
            if group.object_type not in self.tables and group.object_type != SUMMARY_OBJECT:
                # Not mirrored itself, but what it changes elsewhere is (a price embedded in
                # mirrored subscription items): only those are listed again.
                group.reason = "implied"
                group.change = Change(None, {"id": group.object_id}, Version.at(0.0), None)
            elif not self._plan_snapshot(group, versions):
                to_fetch.append(group)
        unexpanded = [g for g in routed if g.change is not None and g.change.unexpanded]
        if to_fetch or unexpanded:
            try:
                async with anyio.create_task_group() as tg:
                    for group in to_fetch:
                        tg.start_soon(self._refetch, group)
                    for group in unexpanded:
                        tg.start_soon(self._add_unexpanded_children, group)
            except BaseExceptionGroup as errors:
                raise one_error(errors) from None
        implying = [g for g in routed if self._implied(g)]
        if implying:
            try:
                async with anyio.create_task_group() as tg:
                    for group in implying:
                        tg.start_soon(self._add_related, group)
            except BaseExceptionGroup as errors:
                raise one_error(errors) from None
        return out

    def _implies_mirrored(self, table: str) -> bool:
        return any(r.table in self.tables for r in IMPLIED.get(table, []))

    def _implied(self, group: Group) -> list[Child]:
        c = group.change
        if c is None or c.obj is None or c.obj.get("deleted"):
            return []
        table = c.resource.table if c.resource is not None else str(group.object_type)
        if table == "invoices" and not _may_hold_invoice_items(c.obj):
            return []
        return [r for r in IMPLIED.get(table, []) if r.table in self.tables]

    def _referenced(self, group: Group) -> list[tuple[Resource, str]]:
        """The objects `group`'s events name and change without an event of theirs
        (REFERENCED): (resource, id) to retrieve again."""
        c = group.change
        if c is None or c.obj is None:
            return []
        out: list[tuple[Resource, str]] = []
        for event in group.events:
            field_name, table = REFERENCED.get(str(event.get("type")), ("", ""))
            ref = c.obj.get(field_name) if field_name else None
            ref = ref.get("id") if isinstance(ref, dict) else ref
            target = (BY_TABLE[table], ref) if isinstance(ref, str) and ref else None
            if target is not None and table in self.tables and target not in out:
                out.append(target)
        return out

    async def _add_related(self, group: Group) -> None:
        """List again what the change implies changed (IMPLIED), with the version of its own
        answers."""
        change = group.change
        assert change is not None and change.obj is not None
        for related in self._implied(group):
            async with self.fetch_limit:
                try:
                    data, version = await self._page_children(related, str(change.obj["id"]))
                except StripeError as exc:
                    if exc.retryable:
                        raise
                    log.warning("related_list_failed", table=related.table, error=str(exc))
                    continue
            resource = BY_TABLE[related.table]
            change.related.append((resource, data, version))
            for obj in data if self._owned_children(resource) else []:
                async with self.fetch_limit:
                    kids, kids_version = await self._fetch_children(resource, obj, version)
                for kid_resource, kid_objs in kids:
                    change.related_children.append(
                        (kid_resource, str(obj["id"]), kid_objs, kids_version)
                    )

    def _route(self, event: Event) -> tuple[tuple[str, str] | None, Group | None]:
        event_type = str(event.get("type") or "")
        obj = _object_of(event)
        if obj is None:
            return None, Group([event], None, None, "ignored", "no_object")
        object_type = str(obj.get("object") or "")
        if object_type == SUMMARY_OBJECT:
            customer = obj.get("customer")
            if "active_entitlements" not in self.tables or not isinstance(customer, str):
                return None, Group([event], object_type, customer, "ignored", "not_mirrored")
            return (object_type, customer), None
        resource = BY_OBJECT.get(object_type)
        object_id = obj.get("id")
        if resource is None:
            reason = "unknown_object" if object_type else "no_object_type"
            return None, Group([event], object_type or None, _str(object_id), "ignored", reason)
        if resource.table not in self.tables and not (
            isinstance(object_id, str) and object_id and self._implies_mirrored(resource.table)
        ):
            return None, Group([event], object_type, _str(object_id), "ignored", "not_selected")
        if not isinstance(object_id, str) or not object_id:
            return None, Group([event], object_type, None, "ignored", "no_object_id")
        if resource.owned:
            # Owned children change with their parent, whose event carries the whole list.
            return None, Group([event], object_type, object_id, "ignored", "owned_child")
        if not event_type:
            return None, Group([event], object_type, object_id, "ignored", "no_type")
        return (resource.table, object_id), None

    async def _row_versions(
        self, groups: list[Group]
    ) -> dict[tuple[str, str], tuple[Version, bool]]:
        by_table: dict[str, list[str]] = defaultdict(list)
        for g in groups:
            if g.object_type in self.tables and g.object_id:
                by_table[g.object_type].append(g.object_id)

        found: dict[tuple[str, str], tuple[Version, bool]] = {}
        async with self.db.session() as conn:
            for table, ids in by_table.items():
                rows = await self.writer.versions(conn, BY_TABLE[table], ids)
                found.update({(table, i): v for i, v in rows.items()})
        return found

    def _plan_snapshot(
        self, group: Group, versions: dict[tuple[str, str], tuple[Version, bool]]
    ) -> bool:
        """Plan `group` from its newest snapshot; False when it must be refetched instead."""
        latest = group.events[-1]
        created = int(latest.get("created") or 0)
        obj = _object_of(latest) or {}
        if group.object_type == SUMMARY_OBJECT:
            return self.mode == "snapshot" and self._plan_summary(group, obj, created)
        resource = BY_TABLE[str(group.object_type)]
        if self.mode != "snapshot" and resource.retrieve_path is not None:
            return False
        version = self._event_version(created)
        row = versions.get((resource.table, str(group.object_id)))
        if row is not None and (row[1] or row[0].newer_than(version)):
            group.reason = "superseded"  # the row already holds newer content (or a tombstone)
            return True
        newest = newest_of_second(group.events, created)
        if newest is not None:
            latest, obj = newest, _object_of(newest) or {}
        if resource.retrieve_path is not None and (
            newest is None
            or latest.get("api_version") != self.pinned
            or (row is not None and not version.newer_than(row[0]))
        ):
            return False
        if is_deletion(str(latest.get("type"))):
            group.reason = "tombstone"
            group.change = Change(
                resource,
                {**obj, "deleted": True},
                version,
                _str(latest.get("api_version")),
                children=[(c, []) for c in self._owned_children(resource)],
            )
            return True
        children = self._inline_children(resource, obj)
        if children is None:
            return resource.retrieve_path is None and self._skip_children(group, obj, created)
        group.reason = "snapshot"
        group.change = Change(
            resource,
            obj,
            version,
            _str(latest.get("api_version")),
            children=children,
            unexpanded=[
                c
                for c in resource.children
                if c.parent_expand
                and c.inline_field not in obj
                and c.table in self.tables
                and BY_TABLE[c.table].owned
            ],
        )
        return True

    def _event_version(self, created: int) -> Version:
        return self.api.clock.event_version(created, self._listed_before)

    async def _add_unexpanded_children(self, group: Group) -> None:
        change = group.change
        assert change is not None and change.obj is not None
        async with self.fetch_limit:
            for child in change.unexpanded:
                try:
                    data, _ = await self._page_children(child, str(change.obj["id"]))
                except StripeError as exc:
                    if exc.retryable:
                        raise
                    continue  # gone meanwhile, or not readable: the parent's row still lands
                change.children.append((BY_TABLE[child.table], data))

    def _skip_children(self, group: Group, obj: dict[str, Any], created: int) -> bool:
        # Cannot be retrieved alone and its children are truncated: keep the object, not the list.
        resource = BY_TABLE[str(group.object_type)]
        group.reason = "snapshot"
        group.change = Change(
            resource, obj, self._event_version(created), _str(group.events[-1]["api_version"])
        )
        return True

    def _plan_summary(self, group: Group, obj: dict[str, Any], created: int) -> bool:
        """An entitlement summary carries the customer's complete set of active entitlements."""
        entitlements = obj.get("entitlements")
        if not isinstance(entitlements, dict) or entitlements.get("has_more"):
            return False
        data = [e for e in entitlements.get("data") or [] if isinstance(e, dict)]
        group.reason = "entitlements"
        group.change = Change(
            None,
            None,
            self._event_version(created),
            _str(group.events[-1].get("api_version")),
            parent_id=str(group.object_id),
            children=[(BY_TABLE["active_entitlements"], data)],
        )
        return True

    def _owned_children(self, resource: Resource) -> list[Resource]:
        return [
            BY_TABLE[c.table]
            for c in resource.children
            if c.inline_field and BY_TABLE[c.table].owned and c.table in self.tables
        ]

    def _inline_children(
        self, resource: Resource, obj: dict[str, Any]
    ) -> list[tuple[Resource, list[dict[str, Any]]]] | None:
        """Owned children from the parent's inline lists; None when one is absent or truncated."""
        out: list[tuple[Resource, list[dict[str, Any]]]] = []
        for child in resource.children:
            child_resource = BY_TABLE[child.table]
            if not (child.inline_field and child_resource.owned and child.table in self.tables):
                continue
            inline = obj.get(child.inline_field)
            if inline is None and child.parent_expand:
                continue  # not in the object unless expanded: paged separately
            if not isinstance(inline, dict) or inline.get("has_more"):
                return None
            out.append((child_resource, [o for o in inline.get("data") or [] if "id" in o]))
        return out

    def can_relist(self, resource: Resource) -> bool:
        """Whether a list page of `resource` gives complete rows (no owned child list to page,
        nothing to take out of the objects) that can settle its queued objects."""
        return (
            resource.table in self.tables
            and resource.list_path is not None
            and not resource.owned
            and not self._owned_children(resource)
        )

    def listed_change(
        self, resource: Resource, obj: dict[str, Any], version: Version
    ) -> Change | None:
        """The change a listed object of a relistable type makes (None: not of the type)."""
        if obj.get("object") != resource.object:
            return None
        return Change(resource, obj, version, self.pinned)

    def overlap_groups(self, entries: Sequence[tuple[str, str, str | None]]) -> list[Group]:
        """Groups (with no events) that fetch again the objects of refetch_queue entries
        (table, object id, parent id): owned children through their parent. Entries of types
        no longer mirrored, or that cannot be fetched, are left out (logged)."""
        keys: dict[tuple[str, str], Group] = {}
        for table, object_id, parent_id in entries:
            resource = BY_TABLE.get(table)
            if resource is None or table not in self.tables:
                log.info("overlap_refetch_skipped", table=table, object_id=object_id)
                continue
            if resource.owned and parent_id is not None:
                child = _child_spec(resource)
                key = (
                    (resource.parent or "", parent_id)
                    if child.inline_field
                    else (resource.table, parent_id)
                )
            elif resource.retrieve_path is not None:
                key = (table, object_id)
            else:
                log.warning("overlap_refetch_impossible", table=table, object_id=object_id)
                continue
            keys.setdefault(key, Group([], key[0], key[1]))
        return list(keys.values())

    async def refetch(self, groups: list[Group]) -> None:
        """Fetch the objects of `groups` again (`overlap_groups`), `fetch_concurrency` at once."""
        try:
            async with anyio.create_task_group() as tg:
                for group in groups:
                    tg.start_soon(self._refetch, group)
        except BaseExceptionGroup as errors:
            raise one_error(errors) from None

    async def _refetch(self, group: Group) -> None:
        async with self.fetch_limit:
            if group.object_type == SUMMARY_OBJECT:
                await self._relist(group, _child_spec(BY_TABLE["active_entitlements"]))
                return
            resource = BY_TABLE[str(group.object_type)]
            if resource.owned:  # a child set listed on its own under its parent (group's id)
                await self._relist(group, _child_spec(resource))
                return
            object_id = str(group.object_id)
            assert resource.retrieve_path is not None
            # Only owned children are replaced with the parent (a customer's tax ids, also
            # embedded by an expand in lists, have events of their own).
            expand = [
                c.parent_expand
                for c in resource.children
                if c.parent_expand and BY_TABLE[c.table].owned and c.table in self.tables
            ]
            params: dict[str, Any] = {"expand": expand} if expand else {}
            path = resource.retrieve_path.replace("{id}", quote(object_id, safe=""))
            metrics.events_refetches.labels(resource.table).inc()
            try:
                reply = await self.api.request("GET", path, params)
                obj = reply.object()
                version = reply.version
                children = None if obj.get("deleted") else self._inline_children(resource, obj)
                if children is None and not obj.get("deleted"):
                    children, version = await self._fetch_children(resource, obj, version)
                # What was expanded only to reach the children is not part of the object as
                # Stripe serves it (nor as a resync stores it): `raw` leaves it out.
                for child in resource.children:
                    if child.parent_expand in expand and child.inline_field:
                        obj.pop(child.inline_field, None)
            except StripeNotFound:
                obj = {"id": object_id, "object": resource.object, "deleted": True}
                version = Version.at(self.api.clock.now())
            except StripeError as exc:
                if exc.retryable:
                    raise
                group.outcome, group.reason = "ignored", f"refetch_failed: {exc.status}"
                return
            if obj.get("deleted"):
                group.reason = "tombstone"
                children = [(c, []) for c in self._owned_children(resource)]
            else:
                group.reason = "refetch"
            group.change = Change(resource, obj, version, self.pinned, children=children or [])

    async def _relist(self, group: Group, child: Child) -> None:
        """A parent's complete child set (an entitlement summary's customer, or a child set
        whose versions overlapped) listed again from the child endpoint."""
        try:
            data, version = await self._page_children(child, str(group.object_id))
        except StripeError as exc:
            if exc.retryable:
                raise
            group.outcome, group.reason = "ignored", f"refetch_failed: {exc.status}"
            return
        group.reason = "entitlements" if child.table == "active_entitlements" else "children"
        group.change = Change(
            None,
            None,
            version,
            self.pinned,
            parent_id=str(group.object_id),
            children=[(BY_TABLE[child.table], data)],
        )

    async def _fetch_children(
        self, resource: Resource, obj: dict[str, Any], version: Version
    ) -> tuple[list[tuple[Resource, list[dict[str, Any]]]], Version]:
        """The complete child lists of `obj`, and the version of the parent (`version`) and
        its children together: from the parent's request to the last child page's answer."""
        out: list[tuple[Resource, list[dict[str, Any]]]] = []
        for child in resource.children:
            child_resource = BY_TABLE[child.table]
            if not (child.inline_field and child_resource.owned and child.table in self.tables):
                continue
            inline = obj.get(child.inline_field)
            if isinstance(inline, dict) and not inline.get("has_more"):
                data = inline.get("data") or []
            else:
                data, paged = await self._page_children(child, str(obj["id"]))
                version = version.spanning(paged)
            out.append((child_resource, data))
        return out, version

    async def _page_children(
        self, child: Child, parent_id: str
    ) -> tuple[list[dict[str, Any]], Version]:
        """Every child of one parent from the child endpoint (when the inline list has more),
        and the version of the whole list (from its first request to its last answer)."""
        path, base = child.for_parent(parent_id)
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        after: str | None = None
        version: Version | None = None
        for _ in range(_MAX_CHILD_PAGES):
            params = {**base, "limit": 100, **({"starting_after": after} if after else {})}
            reply = await self.api.request("GET", path, params)
            page = reply.page()
            version = reply.version if version is None else version.spanning(reply.version)
            data = [o for o in page.get("data") or [] if isinstance(o, dict) and "id" in o]
            fresh = [o for o in data if o["id"] not in seen]
            if data and not fresh:
                raise StripeError(f"child list {path} repeats itself (pager loop)")
            seen.update(o["id"] for o in fresh)
            out.extend(fresh)
            if not page.get("has_more") or not data:
                return out, version
            after = data[-1]["id"]
        raise StripeError(f"child list {path} has more than {_MAX_CHILD_PAGES} pages")

    # ---- writing (inside the caller's transaction) --------------------------------------

    async def write(self, conn: Tx, groups: list[Group]) -> int:
        """Write the changes and ledger rows of `groups`; returns how many rows changed."""
        changed = 0
        # One statement per table, each object with its own version (its fetch or event).
        batches: dict[str, list[tuple[dict[str, Any], Version, str | None, str]]] = defaultdict(
            list
        )
        for g in groups:
            c = g.change
            if c is not None and c.resource is not None and c.obj is not None:
                batches[c.resource.table].append((c.obj, c.version, c.api_version, g.source))
        for table, items in batches.items():
            written = await self.writer.upsert_each(conn, BY_TABLE[table], items)
            changed += len(written.changed)
            await self.quarantine.resolve_ids(conn, table, [i for i, _ in written.ops])
        for g in groups:
            c = g.change
            if c is None:
                continue
            parent_id = c.parent_id or str((c.obj or {}).get("id", ""))
            for related, objs, version in c.related:
                if objs:
                    written = await self.writer.upsert(
                        conn,
                        related,
                        objs,
                        version=version,
                        api_version=self.pinned,
                        source=g.source,
                    )
                    changed += len(written.changed)
            for kid_resource, parent, kids, version in c.related_children:
                written = await self.writer.replace_children(
                    conn,
                    kid_resource,
                    parent,
                    kids,
                    version=version,
                    api_version=self.pinned,
                    source=g.source,
                )
                changed += len(written.changed)
            for child_resource, objs in c.children:
                if c.obj is not None and c.obj.get("deleted"):
                    # The parent is deleted: its children are, whatever their versions.
                    written = await self.writer.tombstone_children(
                        conn, child_resource, parent_id, version=c.version, source=g.source
                    )
                else:
                    written = await self.writer.replace_children(
                        conn,
                        child_resource,
                        parent_id,
                        objs,
                        version=c.version,
                        api_version=c.api_version,
                        source=g.source,
                    )
                changed += len(written.changed)
            for resource, ref in self._referenced(g):
                # Fetched again once Stripe's clock has passed the change (refetch_queue), so
                # a storm of them is spread over later polls instead of holding this batch.
                await conn.execute(
                    "refetch_queue_add",
                    resource.table,
                    ref,
                    c.version.latest,
                    self.writer.account_id,
                )
        rows = [row for g in groups for row in g.ledger_rows()]
        if rows:
            await conn.execute(
                "events_ledger_record", storable(orjson.dumps(rows)), self.writer.account_id
            )
        return changed

    @staticmethod
    def without_related(group: Group, error: BaseException) -> bool:
        """Drop what `group`'s change implied about other objects; False when there was none."""
        c = group.change
        if c is None or not (c.related or c.related_children):
            return False
        log.warning(
            "related_objects_refused",
            tables=sorted({r.table for r, _, _ in c.related}),
            error=refusal(error)[:200],
        )
        c.related, c.related_children = [], []
        return True

    @staticmethod
    def as_stub_tombstone(group: Group) -> bool:
        """Make a deletion's change carry the id alone (its content was refused); False when
        the change is not a deletion."""
        c = group.change
        if c is None or c.resource is None or c.obj is None or not c.obj.get("deleted"):
            return False
        c.obj = {"id": c.obj.get("id"), "object": c.obj.get("object"), "deleted": True}
        c.related, c.related_children = [], []
        return True

    async def quarantine_group(self, conn: Tx, group: Group, error: BaseException) -> None:
        """The object of `group` cannot be stored: keep it in quarantine with its events'
        ledger rows marked `quarantined` (in `conn`'s transaction)."""
        c = group.change
        raw: Any = c.obj if c is not None and c.obj is not None else None
        if raw is None and group.events:
            raw = _object_of(group.events[-1])
        table = c.resource.table if c is not None and c.resource is not None else None
        group.outcome, group.change = "quarantined", None
        group.reason = refusal(error)[:500]
        await self.quarantine.put(
            conn,
            table=table or str(group.object_type or "unknown"),
            raw=raw,
            reason=group.reason,
            source=(
                "event " + ",".join(str(e.get("id")) for e in group.events[-3:])
                if group.events
                else group.source
            ),
        )
        await self.write(conn, [group])


def _may_hold_invoice_items(invoice: dict[str, Any]) -> bool:
    """Whether an invoice may have taken up invoice items: False only when its complete line
    list shows subscription lines alone (a renewal), so their list is not asked for again."""
    lines = invoice.get("lines")
    if not isinstance(lines, dict) or lines.get("has_more"):
        return True
    return not all(_subscription_line(line) for line in lines.get("data") or [])


def _subscription_line(line: Any) -> bool:
    """A line billed for a subscription item and not taken up from an invoice item (as a
    proration is). Lines name their origin as `parent` (API 2025-03-31 on) or `type` (before)."""
    if not isinstance(line, dict):
        return False
    parent = line.get("parent")
    if isinstance(parent, dict):
        details = parent.get("subscription_item_details")
        return (
            parent.get("type") == "subscription_item_details"
            and isinstance(details, dict)
            and details.get("invoice_item") is None
        )
    return line.get("type") == "subscription" and line.get("invoice_item") is None


def _child_spec(resource: Resource) -> Child:
    """How an owned child type is listed under its parent (the parent's `Child` entry)."""
    parent = BY_TABLE[str(resource.parent)]
    return next(c for c in parent.children if c.table == resource.table)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
