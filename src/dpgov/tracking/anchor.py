"""Ledger anchors: the chain head written to the tracking store, outside the ledger database.

The hash chain detects an edited, deleted or reordered entry, but someone who can write the
ledger database can also rewrite the whole chain from the edited entry on (recomputing every
hash), or cut its newest entries off. An *anchor* is a copy of the chain head ``(seq, hash)``
kept in another system, the MLflow tracking store: the audit checks that the ledger's entry at
every anchored sequence number still has the anchored hash, and that the ledger's head is not
behind the newest anchor. A rewrite or a truncation is then detected without the HMAC key.

Storage: one MLflow run per anchor in the experiment :data:`ANCHOR_EXPERIMENT`, named
``anchor-<seq>``, holding the sequence number and hash as run *parameters* (MLflow refuses to
change a parameter once logged) and as tags (for searching), plus the ledger it anchors (URL,
password hidden) and who recorded it. Reading includes deleted runs and a deleted experiment:
deleting an anchor does not hide it from the audit.

Only :mod:`dpgov.tracking` imports mlflow; it is imported inside the functions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dpgov.errors import DpgovError

if TYPE_CHECKING:
    from dpgov.ledger import Ledger

ANCHOR_EXPERIMENT = "dpgov-ledger-anchors"
TAG_SEQ = "dpgov.anchor.seq"
TAG_HASH = "dpgov.anchor.hash"
TAG_LEDGER = "dpgov.anchor.ledger"
TAG_ACTOR = "dpgov.anchor.actor"
PARAM_SEQ = "seq"
PARAM_HASH = "hash"

log = logging.getLogger(__name__)


class AnchorError(DpgovError):
    """The tracking store could not record or return anchors. Exit code 2."""

    exit_code = 2


@dataclass(frozen=True)
class Anchor:
    """One recorded chain head. ``consistent`` is False when the run's parameters and tags
    disagree (someone edited the tags); ``deleted`` when the run or experiment was deleted."""

    seq: int
    hash: str
    time: str  # ISO 8601, UTC: when the anchor was recorded
    run_id: str
    ledger: str | None = None
    actor: str | None = None
    deleted: bool = False
    consistent: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "hash": self.hash,
            "time": self.time,
            "run_id": self.run_id,
            "ledger": self.ledger,
            "actor": self.actor,
            "deleted": self.deleted,
            "consistent": self.consistent,
        }


def _client(tracking_uri: str | None) -> Any:
    from mlflow import MlflowClient

    from dpgov import config

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = tracking_uri or config.mlflow_tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ledger_name(ledger: Ledger | str | None) -> str:
    """How an anchor names its ledger: the SQLAlchemy URL with the password hidden."""
    import sqlalchemy as sa

    from dpgov import config

    if ledger is None:
        ledger = config.ledger_url()
    if isinstance(ledger, str):
        try:
            return sa.make_url(ledger).render_as_string(hide_password=True)
        except sa.exc.ArgumentError:
            return ledger
    return str(ledger.engine.url.render_as_string(hide_password=True))


def _experiment_id(client: Any, *, create: bool) -> str | None:
    found = client.get_experiment_by_name(ANCHOR_EXPERIMENT)
    if found is not None:
        if found.lifecycle_stage == "deleted" and create:
            client.restore_experiment(found.experiment_id)  # anchors keep being recorded
        return str(found.experiment_id)
    if not create:
        return None
    from dpgov import config

    location = None
    uri = str(client.tracking_uri)
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        root = config.mlflow_artifact_root()
        root.mkdir(parents=True, exist_ok=True)
        location = (root / ANCHOR_EXPERIMENT).as_uri()
    try:
        return str(client.create_experiment(ANCHOR_EXPERIMENT, artifact_location=location))
    except Exception:  # created by a concurrent writer meanwhile
        again = client.get_experiment_by_name(ANCHOR_EXPERIMENT)
        if again is None:
            raise
        return str(again.experiment_id)


def record_anchor(
    seq: int,
    hash: str,
    *,
    ledger: Ledger | str | None = None,
    tracking_uri: str | None = None,
) -> Anchor:
    """Record the chain head ``(seq, hash)`` of ``ledger`` (a :class:`Ledger`, its URL, or
    None for the configured one) in the tracking store. Raises :class:`AnchorError`."""
    from dpgov import config

    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise AnchorError(f"anchor seq must be a ledger sequence number >= 1, found {seq!r}")
    if not isinstance(hash, str) or len(hash) != 64:
        raise AnchorError(f"anchor hash must be a SHA-256 hex digest, found {hash!r}")
    name = ledger_name(ledger)
    actor = config.actor()
    try:
        from mlflow.entities import Param, RunTag

        client = _client(tracking_uri)
        exp = _experiment_id(client, create=True)
        run = client.create_run(
            str(exp),
            run_name=f"anchor-{seq}",
            tags={TAG_SEQ: str(seq), TAG_HASH: hash, TAG_LEDGER: name, TAG_ACTOR: actor},
        )
        run_id = str(run.info.run_id)
        client.log_batch(
            run_id,
            params=[Param(PARAM_SEQ, str(seq)), Param(PARAM_HASH, hash)],
            tags=[RunTag("mlflow.source.name", "dpgov")],
        )
        client.set_terminated(run_id, status="FINISHED")
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AnchorError(
            f"cannot record the ledger anchor (entry {seq}) in the tracking store "
            f"{tracking_uri or config.mlflow_tracking_uri()}: {reason}"
        ) from err
    return Anchor(
        seq=seq,
        hash=hash,
        time=_iso(run.info.start_time),
        run_id=run_id,
        ledger=name,
        actor=actor,
    )


def record_head(ledger: Ledger, *, tracking_uri: str | None = None) -> Anchor | None:
    """Anchor the ledger's current head (None for an empty ledger)."""
    seq, digest = ledger.head()
    if seq < 1:
        return None
    return record_anchor(seq, digest, ledger=ledger, tracking_uri=tracking_uri)


def try_record_anchor(
    seq: int,
    hash: str,
    *,
    ledger: Ledger | str | None = None,
    tracking_uri: str | None = None,
) -> Anchor | None:
    """:func:`record_anchor`, but a failure is logged as a warning and returns None: for
    callers whose ledger write already succeeded (the audit reports unanchored commits)."""
    try:
        return record_anchor(seq, hash, ledger=ledger, tracking_uri=tracking_uri)
    except AnchorError as err:
        log.warning("%s", err)
        return None


def anchors(*, tracking_uri: str | None = None) -> list[Anchor]:
    """Every anchor in the tracking store, deleted ones included, by sequence number.

    Raises :class:`AnchorError` when the store cannot be read."""
    from dpgov import config

    try:
        client = _client(tracking_uri)
        exp = _experiment_id(client, create=False)
        if exp is None:
            return []
        experiment = client.get_experiment(exp)
        exp_deleted = experiment.lifecycle_stage == "deleted"
        out: list[Anchor] = []
        token = None
        while True:
            page = client.search_runs(
                [exp], run_view_type=_view_all(), max_results=1000, page_token=token
            )
            out.extend(_anchor_of(run, exp_deleted) for run in page)
            token = page.token
            if not token:
                break
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AnchorError(
            f"cannot read ledger anchors from the tracking store "
            f"{tracking_uri or config.mlflow_tracking_uri()}: {reason}"
        ) from err
    return sorted(out, key=lambda a: (a.seq, a.time))


def _view_all() -> int:
    from mlflow.entities import ViewType

    return int(ViewType.ALL)


def _anchor_of(run: Any, exp_deleted: bool) -> Anchor:
    params, tags = dict(run.data.params), dict(run.data.tags)
    seq_text = str(params.get(PARAM_SEQ, tags.get(TAG_SEQ, "")))
    digest = str(params.get(PARAM_HASH, tags.get(TAG_HASH, "")))
    try:
        seq = int(seq_text)
    except ValueError:
        seq = -1
    consistent = (
        seq >= 1
        and tags.get(TAG_SEQ, seq_text) == seq_text
        and tags.get(TAG_HASH, digest) == digest
        and PARAM_SEQ in params
        and PARAM_HASH in params
    )
    return Anchor(
        seq=seq,
        hash=digest,
        time=_iso(run.info.start_time),
        run_id=str(run.info.run_id),
        ledger=tags.get(TAG_LEDGER),
        actor=tags.get(TAG_ACTOR),
        deleted=exp_deleted or run.info.lifecycle_stage == "deleted",
        consistent=consistent,
    )


def _iso(millis: int | None) -> str:
    if not millis:
        return ""
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds")
