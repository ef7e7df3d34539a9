"""Full resync: re-list every mirrored type, fast, resumable, and provably complete.

A run takes `started_version` (Stripe's clock) before its first list request, then lists every
(type, list variant) newest first in created-time slices that idle workers split further
(`lister.Slice.split`), with `sync.concurrency` requests in flight under the shared rate limiter.
Pages go through a bounded queue to `sync.writers` database connections; each page and its slice's
checkpoint are one statement (with its children: one transaction), so a killed run resumes from its
checkpoints and ends exactly as an uninterrupted one would (writes are idempotent under the version
guard).

Completeness: every row this run confirmed carries a version newer than `started_version`. Once a
type with a complete list (`Resource.complete_list`) has been listed, its live rows older than
that were not shown: each is retrieved once, and tombstoned only when Stripe says it is gone
(404 or `deleted: true`); otherwise the fresh copy is written. The retrieve costs one request per
vanished object and protects against list races (a price toggled between the active=true and
active=false lists while they ran). Owned children of a deleted parent are tombstoned with it.

The package: `run` (a run: its scope, start and end, problems, the quarantine retry), `listing`
(workers walk slices, writers commit pages with their checkpoints), `sweep` (the retrieve
and tombstone described above), `parents` (the per-parent lists after them) and `eta` (the
requests left and ETA of a running run, from the rate budget).
"""

from syncd.resync.listing import (
    PROGRESS_INTERVAL,
    object_fault,
    write_or_quarantine,
)
from syncd.resync.run import (
    Resync,
    ResyncResult,
    TableResult,
    has_completed_resync,
    resolve_scope,
)
from syncd.resync.sweep import SWEEP_MARGIN

__all__ = [
    "PROGRESS_INTERVAL",
    "SWEEP_MARGIN",
    "Resync",
    "ResyncResult",
    "TableResult",
    "has_completed_resync",
    "object_fault",
    "resolve_scope",
    "write_or_quarantine",
]
