"""The ledger's tables and the DDL that makes its entries append-only.

- ``dpgov_entries`` is the ledger itself: append-only (triggers refuse UPDATE and DELETE on
  SQLite and PostgreSQL alike, and TRUNCATE on PostgreSQL, even for the table's owner),
  hash-chained, one global order. The triggers stop mistakes and the application's own roles;
  whoever owns the database can still drop them, which the signatures and the anchors detect
  (scripts/postgres_roles.sql sets up roles that cannot).
- ``dpgov_blocks``, ``dpgov_reservations``, ``dpgov_charges`` are projections of the entries,
  written in the same transaction as the entry that changes them.
- ``dpgov_composition_cache`` holds each block's composed accountant state
  (:mod:`dpgov.ledger.composition`); it is recomputed when stale, never trusted.

Table and column names are part of the stored format: existing ledgers are opened with them.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)
metadata = sa.MetaData()

entries_t = sa.Table(
    "dpgov_entries",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("time", sa.String(40), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
    sa.Column("signature", sa.String(64), nullable=True),
    sa.Index("dpgov_entries_kind", "kind"),  # the key entries are looked up at every append
)
blocks_t = sa.Table(
    "dpgov_blocks",
    metadata,
    sa.Column("dataset", sa.String(200), primary_key=True),
    sa.Column("block", sa.String(200), primary_key=True),
    sa.Column("patients", sa.Integer, nullable=False),
    sa.Column("data_version", sa.String(200), nullable=True),
    sa.Column("retired", sa.Boolean, nullable=False, default=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
)
reservations_t = sa.Table(
    "dpgov_reservations",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("dataset", sa.String(200), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending|committed|released|aborted
    sa.Column("mechanism", sa.Text, nullable=False),  # what is charged now
    sa.Column("planned_steps", sa.Integer, nullable=False),
    sa.Column("run_id", sa.String(200), nullable=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("closed_seq", sa.BigInteger, nullable=True),
)
charges_t = sa.Table(
    "dpgov_charges",
    metadata,
    sa.Column("reservation_id", sa.String(64), primary_key=True),
    sa.Column("dataset", sa.String(200), primary_key=True),
    sa.Column("block", sa.String(200), primary_key=True),
    sa.Index("dpgov_charges_block", "dataset", "block"),
)
cache_t = sa.Table(
    "dpgov_composition_cache",
    metadata,
    sa.Column("dataset", sa.String(200), primary_key=True),
    sa.Column("block", sa.String(200), primary_key=True),
    sa.Column("accountant", sa.String(64), primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("multiset", sa.Text, nullable=False),
    sa.Column("state", sa.LargeBinary, nullable=False),
)

# Membership beside the chain (issue 15): each block's pseudonyms, sorted, 10 bytes each, in
# one blob; the chained entries hold its SHA-256 (dpgov.ledger.membership).
members_t = sa.Table(
    "dpgov_members",
    metadata,
    sa.Column("dataset", sa.String(200), primary_key=True),
    sa.Column("block", sa.String(200), primary_key=True),
    sa.Column("domain", sa.String(200), nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("members", sa.LargeBinary, nullable=False),
    sa.Index("dpgov_members_domain", "domain"),
)
# Per history class (dpgov.ledger.classes): its composed state, used only under a chained seal.
class_cache_t = sa.Table(
    "dpgov_class_cache",
    metadata,
    sa.Column("class_key", sa.String(64), primary_key=True),
    sa.Column("accountant", sa.String(64), primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("multiset", sa.Text, nullable=False),
    sa.Column("state", sa.LargeBinary, nullable=False),
)
# A domain's class structure, addressed by the digest of its membership digests; sealed.
class_structures_t = sa.Table(
    "dpgov_class_structures",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("structure", sa.LargeBinary, nullable=False),
)

# Entry kinds written only by their own ledger operation (never by Ledger.append).
LEDGER_KINDS = {
    "block_added",
    "block_retired",
    "reservation",
    "commit",
    "release",
    "abort",
    "signing_enabled",
    "key_rotated",
    "restored",
    # per-patient accounting (issue 15): membership beside the chain, its digests on it
    "members_attached",
    "member_erased",
    "pseudonym_key",
    "patient_lookup",
    "classes_sealed",
    # governance (issue 13): the policy in force, facts bound at tracking time, recalls
    "policy_set",
    "facts_bound",
    "recall",
}
ACTIVE = ("pending", "committed", "aborted")  # statuses whose mechanism counts as spent


def create_schema(conn: Connection, dialect: str) -> None:
    """Create the tables and the append-only triggers where they are missing."""
    metadata.create_all(conn, checkfirst=True)
    if dialect == "sqlite":
        for op in ("UPDATE", "DELETE"):
            conn.exec_driver_sql(
                f"CREATE TRIGGER IF NOT EXISTS dpgov_entries_no_{op.lower()} BEFORE {op} "
                f"ON dpgov_entries BEGIN SELECT RAISE(ABORT, "
                f"'dpgov ledger entries are append-only'); END"
            )
        conn.exec_driver_sql(
            "CREATE INDEX IF NOT EXISTS dpgov_entries_kind ON dpgov_entries (kind)"
        )
        return
    present = set(
        conn.exec_driver_sql(
            "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE c.oid = 'dpgov_entries'::regclass"
        ).scalars()
    )
    # (no DDL once set up: a role that may only read or append can open the ledger)
    if "dpgov_entries_append_only" not in present:
        conn.exec_driver_sql(
            "CREATE OR REPLACE FUNCTION dpgov_entries_append_only() RETURNS trigger "
            "AS $$ BEGIN RAISE EXCEPTION 'dpgov ledger entries are append-only'; "
            "END; $$ LANGUAGE plpgsql"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER dpgov_entries_append_only BEFORE UPDATE OR DELETE "
            "ON dpgov_entries FOR EACH ROW EXECUTE FUNCTION dpgov_entries_append_only()"
        )
    if "dpgov_entries_no_truncate" not in present:
        _create_truncate_trigger(conn)


def _create_truncate_trigger(conn: Connection) -> None:
    """TRUNCATE fires no row trigger: a statement trigger refuses it. A ledger created before
    this trigger existed gets it when its owner opens it; another role cannot create it (a
    warning says so, and the ledger still opens)."""
    try:
        with conn.begin_nested():
            conn.exec_driver_sql(
                "CREATE OR REPLACE FUNCTION dpgov_entries_append_only() RETURNS trigger "
                "AS $$ BEGIN RAISE EXCEPTION 'dpgov ledger entries are append-only'; "
                "END; $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER dpgov_entries_no_truncate BEFORE TRUNCATE ON dpgov_entries "
                "FOR EACH STATEMENT EXECUTE FUNCTION dpgov_entries_append_only()"
            )
    except sa.exc.ProgrammingError as err:
        if getattr(err.orig, "sqlstate", None) != "42501":  # insufficient_privilege
            raise
        log.warning(
            "this role may not add the trigger that refuses TRUNCATE on dpgov_entries: open "
            "the ledger once as the table's owner (scripts/postgres_roles.sql)"
        )


__all__ = [
    "ACTIVE",
    "LEDGER_KINDS",
    "blocks_t",
    "cache_t",
    "charges_t",
    "class_cache_t",
    "class_structures_t",
    "create_schema",
    "entries_t",
    "members_t",
    "metadata",
    "reservations_t",
]
