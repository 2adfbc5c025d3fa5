"""What a release is bound to, and its recall: the ``facts_bound`` and ``recall`` entries.

``facts_bound`` (written at tracking time, :func:`bind_facts`): the SHA-256 digests of a model
version's artifact files (its ``candidate_facts.json``, its privacy statement, its model
weights), together with its run, its model version, its reservation, whether it is private
(a private version has a reservation; the non-private reference has none) and who trained it
(the authenticated identity). The gate verifies the artifacts against it and refuses a version
whose facts, weights, run, reservation or private/reference status disagree.

Checked first, under the ledger's write lock, then written (nothing is written when a check
fails, UsageError): one binding per model version; the reservation exists, is committed, was
committed for this run (the commit entry's ``run_id``), and no other version of another run
claims it.

``recall`` (:func:`record_recall`): a released version invalidated later (an audit finding, a
bug): where the alias went, why, and by whom. Promotion refuses a recalled version.

Entries of these kinds are written only here (:data:`dpgov.ledger.schema.LEDGER_KINDS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dpgov import names
from dpgov.errors import UsageError
from dpgov.ledger import snapshot
from dpgov.ledger.appending import append_entry
from dpgov.ledger.chain import Entry

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from dpgov.ledger.store import LedgerStore

FACTS_BOUND = "facts_bound"
RECALL = "recall"
# The artifact files a binding digests (keys of ``digests``).
DIGEST_FACTS = "candidate_facts"
DIGEST_STATEMENT = "privacy_statement"
DIGEST_WEIGHTS = "weights"
DIGEST_KEYS = (DIGEST_FACTS, DIGEST_STATEMENT, DIGEST_WEIGHTS)
_HEX = set("0123456789abcdef")


@dataclass(frozen=True)
class Binding:
    """One ``facts_bound`` entry, as read back."""

    seq: int
    model: str
    version: str
    run_id: str
    reservation: str | None
    private: bool
    author: str
    digests: dict[str, str | None]
    time: str = ""
    actor: str = ""

    @classmethod
    def from_entry(cls, e: Entry) -> Binding:
        p = e.payload
        return cls(
            seq=e.seq,
            model=str(p.get("model")),
            version=str(p.get("version")),
            run_id=str(p.get("run_id")),
            reservation=p.get("reservation"),
            private=bool(p.get("private")),
            author=str(p.get("author", "")),
            digests={k: p.get("digests", {}).get(k) for k in DIGEST_KEYS},
            time=e.time,
            actor=e.actor,
        )

    @property
    def facts_sha256(self) -> str | None:
        return self.digests.get(DIGEST_FACTS)


@dataclass(frozen=True)
class Recall:
    seq: int
    model: str
    version: str
    alias: str | None
    moved_to: str | None
    reason: str
    identity: str
    time: str = ""

    @classmethod
    def from_entry(cls, e: Entry) -> Recall:
        p = e.payload
        return cls(
            seq=e.seq,
            model=str(p.get("model")),
            version=str(p.get("version")),
            alias=p.get("alias"),
            moved_to=p.get("moved_to"),
            reason=str(p.get("reason", "")),
            identity=str(p.get("identity", e.actor)),
            time=e.time,
        )


def _digest(key: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
        raise UsageError(f"digest {key!r} must be a lowercase SHA-256 hex digest, found {value!r}")
    return value


def _commit_run(conn: Connection, reservation: str) -> str | None:
    for e in snapshot.entries(conn, "commit"):
        if e.payload.get("reservation") == reservation:
            run = e.payload.get("run_id")
            return str(run) if run is not None else None
    return None


def bind_facts(
    ledger: LedgerStore,
    *,
    model: str,
    version: str,
    run_id: str,
    reservation: str | None,
    digests: dict[str, str | None],
    author: str,
    identity: dict[str, str],
    actor: str | None = None,
) -> Entry:
    """Record the ``facts_bound`` entry of a model version (checks first; see the module)."""
    names.storable(model=model, run_id=run_id)
    author = names.identity(author, argument="the author's identity")
    clean = {k: _digest(k, digests.get(k)) for k in DIGEST_KEYS}
    if clean[DIGEST_FACTS] is None or clean[DIGEST_WEIGHTS] is None:
        raise UsageError("a binding needs the digests of the candidate facts and of the weights")
    private = reservation is not None
    if private and clean[DIGEST_STATEMENT] is None:
        raise UsageError("a private version's binding needs the digest of its privacy statement")
    where = f"model {model!r} version {version}"
    with ledger._write() as conn:
        for e in snapshot.entries(conn, FACTS_BOUND):
            b = Binding.from_entry(e)
            if b.model == model and b.version == str(version):
                raise UsageError(f"{where}: facts already bound at entry {b.seq}")
            if private and b.reservation == reservation and b.run_id != run_id:
                raise UsageError(
                    f"{where}: reservation {reservation} is already bound to run {b.run_id} "
                    f"(entry {b.seq}); a version cannot claim another run's reservation"
                )
        if private:
            assert reservation is not None
            st = ledger._state(conn)
            try:
                res = st.reservation(reservation)
            except UsageError as err:
                raise UsageError(f"{where}: {err}") from None
            if res.status != "committed":
                raise UsageError(
                    f"{where}: reservation {reservation} is {res.status}, not committed"
                )
            committed_for = _commit_run(conn, reservation) or res.run_id
            if committed_for != run_id:
                raise UsageError(
                    f"{where}: reservation {reservation} was committed for run {committed_for}, "
                    f"not {run_id}"
                )
        payload: dict[str, Any] = {
            "model": model,
            "version": str(version),
            "run_id": run_id,
            "reservation": reservation,
            "private": private,
            "author": author,
            "digests": clean,
            **identity,
        }
        return append_entry(conn, FACTS_BOUND, payload, actor)


def bindings(ledger: LedgerStore) -> list[Binding]:
    return [Binding.from_entry(e) for e in ledger.entries(kind=FACTS_BOUND)]


def binding_of(ledger: LedgerStore, model: str, version: str) -> Binding | None:
    """The version's binding (the first, the only one :func:`bind_facts` allows)."""
    for b in bindings(ledger):
        if b.model == model and b.version == str(version):
            return b
    return None


def record_recall(
    ledger: LedgerStore,
    *,
    model: str,
    version: str,
    alias: str | None,
    moved_to: str | None,
    reason: str,
    identity: dict[str, str],
    actor: str,
) -> Entry:
    """Record a ``recall``: the version's release is void. Refused when already recalled."""
    reason = reason.strip()
    if not reason:
        raise UsageError("--reason: a recall needs a reason; nothing recorded")
    names.storable(model=model)
    with ledger._write() as conn:
        for e in snapshot.entries(conn, RECALL):
            if e.payload.get("model") == model and str(e.payload.get("version")) == str(version):
                raise UsageError(
                    f"model {model!r} version {version} was already recalled (entry {e.seq})"
                )
        payload = {
            "model": model,
            "version": str(version),
            "alias": alias,
            "moved_to": moved_to,
            "reason": reason,
            "statement": "void",
            **identity,
        }
        return append_entry(conn, RECALL, payload, actor)


def recalls(ledger: LedgerStore, model: str | None = None) -> list[Recall]:
    out = [Recall.from_entry(e) for e in ledger.entries(kind=RECALL)]
    return [r for r in out if model is None or r.model == model]


def recalled(ledger: LedgerStore, model: str, version: str) -> Recall | None:
    for r in recalls(ledger, model):
        if r.version == str(version):
            return r
    return None
