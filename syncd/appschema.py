"""Row-level security for the application views, installed when the database is Supabase's.

The views (`{app}.*`, migration 0051) run as the querying role, so the tutorial's policies (users
see their own rows, anyone sees active plans) sit on the mirror tables; syncd owns those tables
and bypasses them. Policies need Supabase's `auth.uid()` and its `anon`/`authenticated` roles: a
plain PostgreSQL has neither, and then nothing is installed (apps read with their own role, see
sql/roles.sql). `app.row_level_security = false` removes what syncd installed, grants included,
so no client role is left reading unfiltered rows. Applied at every start: the SQL replaces the
previous installation in one transaction.
"""

from __future__ import annotations

from typing import Literal

from syncd.config import Config
from syncd.db import Database, Tx
from syncd.errors import SyncdError
from syncd.logs import get_logger

log = get_logger(__name__)
Outcome = Literal["installed", "removed", "skipped", "failed"]
_ROLES = ["anon", "authenticated"]
_SECURITY_INVOKER = 150000  # views with security_invoker: PostgreSQL 15


async def apply_row_level_security(db: Database, cfg: Config) -> Outcome:
    """Install or remove the policies as configured; never raises for a database refusal
    (a failed install leaves the previous state, and no grant means no access)."""
    try:
        support = await db.fetchrow("rls_support")
        assert support is not None
        if not cfg.app.row_level_security:
            if support["installed_policies"]:
                await db.transact(_remove)
                log.info("row_level_security_removed", reason="app.row_level_security is false")
                return "removed"
            log.info("row_level_security_off", reason="app.row_level_security is false")
            return "skipped"
        missing = [r for r in _ROLES if r not in support["roles"]]
        if not support["has_auth_uid"] or missing:
            log.info(
                "row_level_security_skipped",
                reason="no Supabase auth schema (auth.uid()) or roles",
                missing_roles=missing,
            )
            return "skipped"
        if support["server_version"] < _SECURITY_INVOKER:
            log.warning(
                "row_level_security_skipped",
                reason="PostgreSQL 15+ is needed for security_invoker views",
                server_version=support["server_version"],
            )
            return "skipped"
        await db.transact(_install)
    except SyncdError as exc:
        log.error("row_level_security_failed", error=str(exc))
        return "failed"
    log.info(
        "row_level_security_installed",
        usage_records=bool(support["has_usage_records"]),
    )
    return "installed"


async def _remove(conn: Tx) -> None:
    await conn.execute("remove_row_level_security")


async def _install(conn: Tx) -> None:
    # One transaction: the old policies go and the new ones come at once.
    await conn.execute("remove_row_level_security")
    await conn.execute("install_row_level_security")
    await conn.execute("install_usage_row_level_security")


async def startup_step(db: Database, cfg: Config) -> None:
    """The daemon's startup step (syncd.daemon.attach_features)."""
    await apply_row_level_security(db, cfg)
