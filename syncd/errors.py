"""One exception tree for the whole daemon.

Driver errors (asyncpg, stripe, OS) are translated into these classes once, at the edge where
they are raised, so callers decide on the class alone: `retryable` says whether trying again
later can help, `exit_code` is what the CLI exits with when the error reaches it.
"""

from __future__ import annotations

import anyio


class SyncdError(Exception):
    """Root of every error syncd raises on purpose."""

    retryable: bool = False
    exit_code: int = 1


class ConfigError(SyncdError):
    """The configuration is unusable; the message names the key and the problem."""

    exit_code = 2


class DatabaseError(SyncdError):
    """PostgreSQL refused or failed a statement. A refusal from the server keeps its SQLSTATE
    and the server's own message (`db.translate`); both are None for any other failure."""

    def __init__(
        self, message: str, *, sqlstate: str | None = None, server_message: str | None = None
    ):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.server_message = server_message


class DatabaseUnavailable(DatabaseError):
    """PostgreSQL could not be reached; worth retrying."""

    retryable = True


class DatabaseConflict(DatabaseError):
    """A transaction lost a deadlock or serialization conflict; it rolled back whole."""

    retryable = True


class DatabaseRefused(DatabaseError):
    """PostgreSQL refused a statement for a reason outside the data: missing privileges, a full
    disk, a read-only server, a lock or statement timeout, a missing table. Fixing the server
    fixes it, so it is retried with backoff and nothing is recorded as done meanwhile."""

    retryable = True


class DatabaseDataError(DatabaseError):
    """The data of one write cannot be stored as it is (SQLSTATE classes 22 and 23, or a value
    too large for an index): retrying the same data fails the same way, so the object is
    quarantined (`{state}.rejected_objects`) and the rest goes on."""


class DatabaseDuplicate(DatabaseDataError):
    """A unique violation (23505): a row with the key is there already. The resync's plain
    insert of objects it takes for new falls back to the upsert on it."""


class MigrationError(DatabaseError):
    """A migration could not be applied, or an applied one was edited afterwards."""


class CheckpointError(SyncdError):
    """A stored cursor or checkpoint is unusable (corrupt, or too old for Stripe)."""


class StripeError(SyncdError):
    """Stripe (or the emulator) answered with an error, or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class StripeRetryable(StripeError):
    """A transient failure: rate limited, 5xx, lock contention or a network error."""

    retryable = True


class StripeBadAnswer(StripeRetryable):
    """An answer Stripe never sends: not JSON (a proxy's HTML page), cut short, or not of the
    expected shape. Something between syncd and Stripe failed; like a 502, it is transient."""


class StripeNotFound(StripeError):
    """The object or endpoint does not exist (404)."""


class StripePermissionDenied(StripeError):
    """The key may not use this endpoint (401/403): reported, never retried."""


class CursorExpired(StripeError):
    """Stripe rejected an events cursor that fell out of its 30-day retention."""


class UsageRecordError(SyncdError):
    """A usage row cannot be reported (bad input or a permanent Stripe refusal)."""


def leaf_errors(exc: BaseException) -> list[BaseException]:
    """The errors inside (nested) task-group exception groups, in order; `exc` itself otherwise."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaf_errors(inner)]
    return [exc]


def one_error(exc: BaseException) -> BaseException:
    """The error inside (nested) task-group errors that callers decide on: when every leaf is a
    syncd error, the first non-retryable one (else the first); otherwise `exc` itself, so a
    foreign error (a bug) keeps its whole group and traceback."""
    # Cancellations of a group's other tasks say nothing about why it failed.
    cancelled = anyio.get_cancelled_exc_class()
    leaves = [e for e in leaf_errors(exc) if not isinstance(e, cancelled)] or [exc]
    if not all(isinstance(e, SyncdError) for e in leaves):
        return exc
    return next((e for e in leaves if not getattr(e, "retryable", False)), leaves[0])
