"""A row's version: when Stripe held its content, as an interval of Stripe's clock.

Nothing syncd receives is stamped with the moment Stripe read it. An answer to a request shows
Stripe's state at some moment after the request left and before the answer arrived; an event's
snapshot shows the state at some moment of its `created` second. So a version is an interval,
`[earliest, latest)`, and two versions are ordered only when one interval ends before the other
begins. When they overlap, which content is newer is unknown: the writer keeps the row and asks
for the object to be fetched again (`sql/queries/writer.sql`), which settles it, because a
request sent after both answers arrived reads a state newer than both.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# This process, in the versions of what it fetches: its own monotonic clock orders its fetches
# exactly. Random per start; below 2**53 so that it travels exactly in a float8[].
PROCESS = secrets.randbelow(2**53)


@dataclass(frozen=True)
class Version:
    earliest: float  # Stripe time (unix seconds) the content may have been read from
    latest: float  # ... and before which it certainly was
    # For a fetch by this process: [sent, received] on its monotonic clock. A request sent
    # after another's answer arrived reads a state at least as new as that answer's.
    local: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.latest < self.earliest or (self.local and self.local[1] < self.local[0]):
            raise ValueError(f"version ends before it begins: {self}")

    @classmethod
    def of_event(cls, created: float) -> Version:
        """An event's snapshot: the state at some moment of its whole `created` second."""
        return cls(float(created), float(created) + 1.0)

    @classmethod
    def at(cls, moment: float) -> Version:
        """A version known to the instant (tests, and Stripe times given as such)."""
        return cls(moment, moment)

    @classmethod
    def stored(cls, row: Mapping[str, Any]) -> Version:
        """A row's version as stored (`earliest`, `latest`, `fetched_by`, `fetched_local`):
        with this process's own clock when the row is its fetch."""
        local = row["fetched_local"]
        mine = row["fetched_by"] == PROCESS and local is not None
        return cls(row["earliest"], row["latest"], (local[0], local[1]) if mine else None)

    def newer_than(self, other: Version) -> bool:
        """Certainly newer: this interval begins when or after `other` ends, on Stripe's clock
        or on this process's own when both are its versions."""
        if self.local and other.local and self.local[0] >= other.local[1]:
            return True
        return self.earliest >= other.latest

    def bounds(self) -> list[float | None]:
        """As the SQL statements take it (a float8[] parameter): earliest, latest, and for a
        fetch of this process its id and [sent, received]."""
        # "Since ever" travels as 0 (1970): JSON has no infinity, and no version ends before.
        earliest = max(self.earliest, 0.0)
        if self.local is None:
            return [earliest, self.latest, None, None, None]
        return [earliest, self.latest, float(PROCESS), *self.local]

    def spanning(self, other: Version) -> Version:
        """Content read over several answers (the pages of one list): from the first request
        to the last answer."""
        local = None
        if self.local and other.local:
            local = (min(self.local[0], other.local[0]), max(self.local[1], other.local[1]))
        return Version(min(self.earliest, other.earliest), max(self.latest, other.latest), local)
