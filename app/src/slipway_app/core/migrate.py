"""Alembic driven from code, so a host with only the wheel can migrate.

Releases follow expand/contract: a release's migrations keep the previous release working.
So a database is fine for this release when it is at this release's head ("at-head") or
at a newer revision that descends from it ("ahead": a newer release migrated first). To
tell "ahead" from "somewhere else", ``upgrade()`` records every revision this wheel knows,
with its parents, in ``slipway_revision_lineage``; an older release walks that table from
the database's revision back to its own head. ``migration_status`` is the one rule, used
by ``/health/ready`` and ``slipway-app migrate current`` alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, bindparam, pool, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.types import Text

from slipway_app.core.config import Settings
from slipway_app.core.db import make_sync_engine

SCRIPT_LOCATION = "slipway_app:migrations"
VERSION_TABLE = "alembic_version"  # Alembic's default, read directly by /health/ready
LINEAGE_TABLE = "slipway_revision_lineage"  # bookkeeping like alembic_version, not a revision
# Any fixed 64-bit number: serialises concurrent `migrate upgrade` runs from several hosts.
ADVISORY_LOCK_ID = 0x5117_3A7A_0001

Status = Literal["at-head", "ahead", "behind", "unknown"]

VERSION_QUERY = text(f"SELECT version_num FROM {VERSION_TABLE}")
CREATE_LINEAGE = text(
    f"CREATE TABLE IF NOT EXISTS {LINEAGE_TABLE} ("
    " revision text PRIMARY KEY,"
    " down_revision text[] NOT NULL DEFAULT '{}',"
    " recorded_at timestamptz NOT NULL DEFAULT now())"
)
UPSERT_LINEAGE = text(
    f"INSERT INTO {LINEAGE_TABLE} (revision, down_revision) VALUES (:revision, :down)"
    " ON CONFLICT (revision) DO UPDATE SET down_revision = EXCLUDED.down_revision,"
    " recorded_at = now()"
).bindparams(bindparam("down", type_=ARRAY(Text())))
# Every revision reachable from the database's revision(s) through the lineage table.
# UNION (not UNION ALL) drops rows already seen, so even a cycle ends.
ANCESTORS_QUERY = text(
    "WITH RECURSIVE walk(revision) AS ("
    " SELECT unnest(CAST(:current AS text[]))"
    " UNION"
    f" SELECT d FROM {LINEAGE_TABLE} l JOIN walk w ON l.revision = w.revision,"
    " unnest(l.down_revision) AS d"
    ") SELECT revision FROM walk"
).bindparams(bindparam("current", type_=ARRAY(Text())))


def alembic_config(settings: Settings | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    if settings is not None:
        cfg.attributes["settings"] = settings
    return cfg


@dataclass(frozen=True)
class ScriptGraph:
    """The revisions shipped in this wheel: each with its parent(s), and the head(s)."""

    heads: tuple[str, ...]
    parents: Mapping[str, tuple[str, ...]]

    @property
    def known(self) -> frozenset[str]:
        return frozenset(self.parents)


def _as_tuple(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def script_graph() -> ScriptGraph:
    """Read the wheel's scripts only: no settings, no database."""
    scripts = ScriptDirectory.from_config(alembic_config())
    parents = {rev.revision: _as_tuple(rev.down_revision) for rev in scripts.walk_revisions()}
    return ScriptGraph(heads=tuple(sorted(scripts.get_heads())), parents=parents)


def script_heads() -> tuple[str, ...]:
    """Head revision(s) shipped in this wheel."""
    return script_graph().heads


def migration_status(
    current: tuple[str, ...], graph: ScriptGraph, ancestors: frozenset[str] = frozenset()
) -> Status:
    """The one rule. ``ancestors``: revisions the lineage table reaches from ``current``
    (only needed, and only read, when ``current`` holds a revision this wheel does not know)."""
    if current == graph.heads:
        return "at-head"
    if not needs_lineage(current, graph):
        return "behind"  # empty, or a revision this release can upgrade from
    if set(graph.heads) <= ancestors:
        return "ahead"
    return "unknown"


def needs_lineage(current: tuple[str, ...], graph: ScriptGraph) -> bool:
    """``current`` holds a revision this wheel does not know: only the lineage can place it."""
    return bool(set(current) - graph.known)


@dataclass(frozen=True)
class MigrationState:
    current: tuple[str, ...]
    graph: ScriptGraph
    ancestors: frozenset[str] = field(default=frozenset())

    @property
    def heads(self) -> tuple[str, ...]:
        return self.graph.heads

    @property
    def status(self) -> Status:
        return migration_status(self.current, self.graph, self.ancestors)

    def problem(self) -> str | None:
        """What is wrong and what to do, or None when this release can serve."""
        head = ",".join(self.heads)
        if self.status == "behind":
            return "database is behind this release: run `slipway-app migrate upgrade`"
        if self.status == "unknown":
            cur = ",".join(self.current)
            return f"database is at {cur}, which does not descend from this release's head {head}"
        return None

    def describe(self) -> str:
        cur = ",".join(self.current) or "none"
        return f"current={cur} head={','.join(self.heads)} status={self.status}"

    def as_dict(self) -> dict[str, object]:
        return {"current": list(self.current), "heads": list(self.heads), "status": self.status}


def current_revisions(connection: Connection) -> tuple[str, ...]:
    return tuple(sorted(MigrationContext.configure(connection).get_current_heads()))


def read_ancestors(connection: Connection, current: tuple[str, ...]) -> frozenset[str]:
    """The lineage walk (sync); an absent lineage table reaches nothing."""
    try:
        rows = connection.execute(ANCESTORS_QUERY, {"current": list(current)})
    except ProgrammingError:
        connection.rollback()
        return frozenset()
    return frozenset(r[0] for r in rows)


def state(settings: Settings, graph: ScriptGraph | None = None) -> MigrationState:
    graph = graph or script_graph()
    engine = make_sync_engine(settings, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            current = current_revisions(conn)
            ancestors = (
                read_ancestors(conn, current) if needs_lineage(current, graph) else frozenset()
            )
    finally:
        engine.dispose()
    return MigrationState(current=current, graph=graph, ancestors=ancestors)


def record_lineage(settings: Settings, graph: ScriptGraph | None = None) -> None:
    """Upsert every revision of this wheel with its parents (same lock as the migrations)."""
    graph = graph or script_graph()
    engine = make_sync_engine(settings, poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": ADVISORY_LOCK_ID})
            conn.execute(CREATE_LINEAGE)
            conn.execute(
                UPSERT_LINEAGE,
                [{"revision": rev, "down": list(down)} for rev, down in graph.parents.items()],
            )
    finally:
        engine.dispose()


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Lineage first: the instant the database's revision moves, a release still serving
    must already find the new revision's parents, or its readiness answers 503 (unknown)."""
    record_lineage(settings)
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings, revision: str) -> None:
    """Rows in the lineage table stay: they describe the scripts, not the database."""
    command.downgrade(alembic_config(settings), revision)
