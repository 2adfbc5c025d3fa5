"""Ledger anchors: the chain head written to the tracking store, outside the ledger database.

The hash chain detects an edited, deleted or reordered entry, but someone who can write the
ledger database can also rewrite the whole chain from the edited entry on (recomputing every
hash), or cut its newest entries off. An *anchor* is a copy of the chain head ``(seq, hash)``
kept in another system, the MLflow tracking store: the audit checks that the ledger's entry at
every anchored sequence number still has the anchored hash, and that the ledger's head is not
behind the newest anchor. A rewrite or a truncation is then detected without the HMAC key.

Storage: in the experiment :data:`ANCHOR_EXPERIMENT`, one run per ledger (tag
``dpgov.anchor.ledger``: its URL, password hidden) holds every anchor as a run *parameter*
``anchor.<seq>`` = hash. MLflow refuses to change a parameter once logged, so an anchor cannot
be rewritten through MLflow, and anchoring an entry again with another hash fails loudly (the
ledger changed under it). The metric ``anchor_seq`` (value: the seq) records when each anchor
was taken. Reading includes deleted runs and a deleted experiment: deleting anchors does not
hide them from the audit. One run per ledger keeps the experiment readable in the MLflow UI and
the audit's read to one request, however many commits were anchored.

When: after every append. :func:`anchoring_appends` registers :class:`TrackingAnchorSink` with
the ledger (:mod:`dpgov.ledger.anchoring`, which never imports this layer), so that every head a
write transaction commits is anchored here; every ``dpgov`` command that may append runs inside
it. A failure is logged, never undoes the entry, and the next head anchored covers it.

Only :mod:`dpgov.tracking` imports mlflow; it is imported inside the functions. The audit
reads anchors with every other record of the store (:mod:`dpgov.tracking.reader`): through
:func:`anchors` on the client backend, through :func:`anchors_in_run` on the SQL backend.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from dpgov import config
from dpgov.errors import DpgovError
from dpgov.ledger import anchoring
from dpgov.redaction import redact
from dpgov.tracking.records import Anchor, first_line, millis_iso
from dpgov.tracking.store import experiment_location, mlflow_client

if TYPE_CHECKING:
    from dpgov.ledger import Ledger

ANCHOR_EXPERIMENT = "dpgov-ledger-anchors"
TAG_LEDGER = "dpgov.anchor.ledger"
PARAM_PREFIX = "anchor."
METRIC_SEQ = "anchor_seq"

log = logging.getLogger(__name__)


class AnchorError(DpgovError):
    """The tracking store could not record or return anchors, or an entry was anchored
    before with another hash. Exit code 2."""

    exit_code = 2


def ledger_name(ledger: Ledger | str | None) -> str:
    """How an anchor names its ledger: the SQLAlchemy URL with the password hidden."""
    import sqlalchemy as sa

    if ledger is None:
        ledger = config.ledger_url()
    if isinstance(ledger, str):
        try:
            return redact(str(sa.make_url(ledger).render_as_string(hide_password=True)))
        except (sa.exc.ArgumentError, ValueError):
            return redact(ledger)
    return redact(str(ledger.engine.url.render_as_string(hide_password=True)))


def _experiment_id(client: Any, *, create: bool) -> str | None:
    found = client.get_experiment_by_name(ANCHOR_EXPERIMENT)
    if found is not None:
        if found.lifecycle_stage == "deleted" and create:
            client.restore_experiment(found.experiment_id)  # anchors keep being recorded
        return str(found.experiment_id)
    if not create:
        return None
    location = experiment_location(str(client.tracking_uri), ANCHOR_EXPERIMENT)
    try:
        return str(client.create_experiment(ANCHOR_EXPERIMENT, artifact_location=location))
    except Exception:  # created by a concurrent writer meanwhile
        again = client.get_experiment_by_name(ANCHOR_EXPERIMENT)
        if again is None:
            raise
        return str(again.experiment_id)


def _ledger_run(client: Any, experiment_id: str, name: str) -> str:
    """The active run holding this ledger's anchors (created on first use)."""
    escaped = name.replace("'", "\\'")
    found = client.search_runs(
        [experiment_id],
        f"tags.`{TAG_LEDGER}` = '{escaped}'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    if found:
        return str(found[0].info.run_id)
    run = client.create_run(
        experiment_id,
        run_name="ledger-anchors",
        tags={TAG_LEDGER: name, "mlflow.source.name": "dpgov"},
    )
    return str(run.info.run_id)


# Each store's client and the run holding a ledger's anchors, so that anchoring after every
# append costs one request.
_RUNS: dict[tuple[str, str], tuple[Any, str]] = {}


def _anchor_run(where: str, name: str, *, fresh: bool) -> tuple[Any, str]:
    if fresh or (where, name) not in _RUNS:
        client = mlflow_client(where)
        _RUNS[(where, name)] = (
            client,
            _ledger_run(client, str(_experiment_id(client, create=True)), name),
        )
    return _RUNS[(where, name)]


def record_anchor(
    seq: int,
    hash: str,
    *,
    ledger: Ledger | str | None = None,
    tracking_uri: str | None = None,
) -> Anchor:
    """Record the chain head ``(seq, hash)`` of ``ledger`` (a :class:`Ledger`, its URL, or
    None for the configured one) in the tracking store. Anchoring an entry again with the same
    hash is a no-op; with another hash it raises :class:`AnchorError` (the entry changed)."""
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise AnchorError(f"anchor seq must be a ledger sequence number >= 1, found {seq!r}")
    if not isinstance(hash, str) or len(hash) != 64:
        raise AnchorError(f"anchor hash must be a SHA-256 hex digest, found {hash!r}")
    name = ledger_name(ledger)
    where = tracking_uri or config.mlflow_tracking_uri()
    now = int(time.time() * 1000)
    run_id = ""
    try:
        for attempt in (0, 1):  # a cached run may have gone (deleted): look it up once more
            client, run_id = _anchor_run(where, name, fresh=attempt == 1)
            try:
                _log_anchor(client, run_id, seq, hash, now, name)
                break
            except AnchorError:
                raise
            except Exception:
                _RUNS.pop((where, name), None)
                if attempt == 1:
                    raise
    except AnchorError:
        raise
    except Exception as err:
        raise AnchorError(
            f"cannot record the ledger anchor (entry {seq}) in the tracking store {where}: "
            f"{first_line(err)}"
        ) from err
    return Anchor(seq=seq, hash=hash, time=millis_iso(now) or "", run_id=run_id, ledger=name)


def _log_anchor(client: Any, run_id: str, seq: int, hash: str, now: int, name: str) -> None:
    from mlflow.entities import Metric, Param

    key = f"{PARAM_PREFIX}{seq}"
    try:
        client.log_batch(
            run_id, params=[Param(key, hash)], metrics=[Metric(METRIC_SEQ, float(seq), now, 0)]
        )
    except Exception as err:
        before = client.get_run(run_id).data.params.get(key)
        if before is None:
            raise
        if before != hash:
            raise AnchorError(
                f"ledger entry {seq} was anchored before with hash {before[:12]}…, and is "
                f"now {hash[:12]}…: the ledger {name} was rewritten (run dpgov audit)"
            ) from err


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


class TrackingAnchorSink:
    """An anchor sink (:class:`dpgov.ledger.anchoring.AnchorSink`) that records every head
    the ledger appends in the tracking store. A failure is logged; after one, the store is
    not asked again for :data:`RETRY_AFTER_S` seconds (an unreachable server must not slow
    every append), and the next head anchored covers the entries in between."""

    RETRY_AFTER_S = 60.0

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self._failed_at: float | None = None

    def __call__(self, ledger: str, seq: int, hash: str) -> None:
        if self._failed_at is not None and time.monotonic() - self._failed_at < self.RETRY_AFTER_S:
            return
        try:
            record_anchor(seq, hash, ledger=ledger, tracking_uri=self.tracking_uri)
        except AnchorError as err:
            self._failed_at = time.monotonic()
            log.warning("%s", err)
            return
        self._failed_at = None


@contextmanager
def anchoring_appends(tracking_uri: str | None = None) -> Iterator[TrackingAnchorSink]:
    """While the block runs, every ledger append in this process is anchored in the tracking
    store (``tracking_uri``, default: the configured one, read at each anchor). Every
    ``dpgov`` command runs inside it; library callers that append wrap their work in it."""
    sink = TrackingAnchorSink(tracking_uri)
    with anchoring.registered(sink):
        yield sink


def anchors(*, tracking_uri: str | None = None) -> list[Anchor]:
    """Every anchor in the tracking store, deleted ones included, by sequence number.

    Raises :class:`AnchorError` when the store cannot be read."""
    from mlflow.entities import ViewType

    out: list[Anchor] = []
    try:
        client = mlflow_client(tracking_uri)
        exp = _experiment_id(client, create=False)
        if exp is None:
            return []
        exp_deleted = client.get_experiment(exp).lifecycle_stage == "deleted"
        token = None
        while True:
            page = client.search_runs(
                [exp], run_view_type=ViewType.ALL, max_results=1000, page_token=token
            )
            for run in page:
                out.extend(_anchors_of(client, run, exp_deleted))
            token = page.token
            if not token:
                break
    except Exception as err:
        raise AnchorError(
            f"cannot read ledger anchors from the tracking store "
            f"{tracking_uri or config.mlflow_tracking_uri()}: {first_line(err)}"
        ) from err
    return sorted(out, key=lambda a: (a.seq, a.time))


def _anchors_of(client: Any, run: Any, exp_deleted: bool) -> list[Anchor]:
    run_id = str(run.info.run_id)
    params = dict(run.data.params)
    if not any(k.startswith(PARAM_PREFIX) for k in params):
        return []
    taken: dict[int, int] = {}
    for m in client.get_metric_history(run_id, METRIC_SEQ):
        taken.setdefault(int(m.value), int(m.timestamp))
    deleted = exp_deleted or run.info.lifecycle_stage == "deleted"
    return anchors_in_run(run_id, params, run.data.tags.get(TAG_LEDGER), taken, deleted)


def anchors_in_run(
    run_id: str,
    params: dict[str, str],
    ledger: str | None,
    taken: dict[int, int],
    deleted: bool,
) -> list[Anchor]:
    """The anchors an anchor run holds: one per ``anchor.<seq>`` param (the head's hash),
    timed by the first ``anchor_seq`` metric logged with that value (``taken``: seq → ms)."""
    out = []
    for key, digest in params.items():
        if not key.startswith(PARAM_PREFIX):
            continue
        try:
            seq = int(key[len(PARAM_PREFIX) :])
        except ValueError:
            continue
        when = millis_iso(taken.get(seq)) or ""
        out.append(Anchor(seq, str(digest), when, run_id, ledger, deleted))
    return out
