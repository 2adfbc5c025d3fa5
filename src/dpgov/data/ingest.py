"""Ingest: newly arrived raw data becomes a new DVC data version and new blocks in the ledger.

A dataset's raw data is one table (CSV or Parquet): the cohort so far. Each arrival appends its
records to it. The steps (each a task of ``pipelines/ingest.py``):

1. :func:`stage` reads the arrival, refuses any patient already present (a patient contributes
   one record; new patients arrive as new blocks), writes the new raw table and prepares it into
   a staging folder, then checks that **every patient already prepared keeps their block and
   split** (:func:`block_changes`): an arrival that would regroup a registered block (adjacent
   years grouped differently) or add patients to one is refused, since the same patients must
   never sit in two blocks with separate budgets. Nothing outside the staging folder changes.
2. :func:`publish` renames the staged raw table and prepared folder into place.
3. :func:`version_with_dvc`: ``dvc add`` the raw table and the prepared folder (``dvc commit``
   of the owning stage instead when a ``dvc.yaml`` stage produces the folder), optionally
   ``git commit`` of the DVC files, then ``dvc push`` to the remote.
4. :func:`register_blocks`: every block not yet in the ledger is added (``Ledger.add_block``)
   with its training patients and the data version, and (from the published folder) each
   test block ``test-<block>`` with its test patients, split ``test``; all are checked before
   any is written.

Waves (:func:`plan_waves`, :func:`enrollment_waves`, :func:`write_waves`) cut the bundled
cohort into chronological arrivals of whole blocks, for the retraining demonstration.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpgov import config
from dpgov.data.contract import LoadedContract, load_contract
from dpgov.data.params import DataParams
from dpgov.data.preparation import block_members, build_prepared, prepare
from dpgov.data.prepared_data import load_prepared
from dpgov.data.sources import TABLE_SUFFIXES, load_source, read_table
from dpgov.data.test_blocks import TEST_SPLIT, evaluation_members
from dpgov.data.versioning import data_version, find_dvc_root
from dpgov.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from dpgov.ledger import Ledger

SPLITS = ("train", "test")


# --------------------------------------------------------------------------- staging


@dataclass(frozen=True)
class Staged:
    """An arrival prepared in a staging folder, not yet in place."""

    dataset: str
    arrival: str
    raw: str  # final path of the raw table
    prepared: str  # final path of the prepared folder
    staging: str  # folder holding both, removed by publish
    staged_raw: str
    staged_prepared: str
    data_version: str
    blocks: dict[str, int]  # block → training patients, after the arrival
    new_blocks: list[str]  # blocks the previous preparation did not have
    n_arrival: int
    n_total: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stage(
    arrival: str | Path,
    *,
    raw: str | Path,
    prepared: str | Path,
    contract: str | Path | LoadedContract | None = None,
    dataset: str | None = None,
    params: DataParams | None = None,
) -> Staged:
    """Append ``arrival`` to the raw table and prepare the result, in a staging folder.

    Raises :class:`UsageError` (and leaves everything as it was) for an unreadable arrival,
    columns that differ from the raw table's, a patient already ingested, or a preparation that
    would move an already-prepared patient to another block or split.
    """
    import pandas as pd

    params = params or DataParams()
    loaded = contract if isinstance(contract, LoadedContract) else load_contract(contract)
    c = loaded.contract
    if c.kind != "tabular":
        raise UsageError(f"contract {loaded.path}: ingest appends tables; kind is {c.kind!r}")
    if not c.patient_id:
        raise UsageError(f"contract {loaded.path}: ingest needs a patient_id column")
    arrival_path, raw_path, prepared_path = Path(arrival), Path(raw), Path(prepared)
    for what, path in (("arrival", arrival_path), ("raw", raw_path)):
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise UsageError(f"{what} {path}: use a .csv or .parquet file")
    if not arrival_path.is_file():
        raise UsageError(f"arrival {arrival_path}: no such file")
    new = read_table(arrival_path, c)
    if raw_path.exists():
        current = read_table(raw_path, c)
        if set(current.columns) != set(new.columns):
            extra = sorted(set(new.columns) - set(current.columns))
            missing = sorted(set(current.columns) - set(new.columns))
            raise UsageError(
                f"arrival {arrival_path}: columns differ from {raw_path} "
                f"(extra {extra}, missing {missing})"
            )
        new = new[list(current.columns)]
        known = set(current[c.patient_id].astype(str))
        again = [p for p in new[c.patient_id].astype(str) if p in known]
        if again:
            raise UsageError(
                f"arrival {arrival_path}: {len(again)} patient(s) already ingested in {raw_path} "
                f"(first {again[0]!r}); a patient contributes one record, and new patients "
                "arrive as new blocks"
            )
        combined = pd.concat([current, new], ignore_index=True)
    else:
        combined = new

    staging = prepared_path.parent / f".ingest-{uuid.uuid4().hex[:10]}"
    staged_raw = staging / "raw" / raw_path.name
    staged_prepared = staging / "prepared" / prepared_path.name
    try:
        staged_raw.parent.mkdir(parents=True)
        _write_table(combined, staged_raw)
        result = prepare(
            staged_raw, loaded, dataset=dataset, out=staged_prepared, params=params, register=False
        )
        previous: dict[str, Any] = {}
        if (prepared_path / "meta.json").is_file():
            problems = block_changes(_assignments(prepared_path), _assignments(staged_prepared))
            if problems:
                raise UsageError(f"arrival {arrival_path}: {problems[0]}")
            previous = _meta(prepared_path).get("blocks") or {}
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Staged(
        dataset=result.dataset,
        arrival=str(arrival_path),
        raw=str(raw_path),
        prepared=str(prepared_path),
        staging=str(staging),
        staged_raw=str(staged_raw),
        staged_prepared=str(staged_prepared),
        data_version=result.data_version,
        blocks=dict(result.blocks),
        new_blocks=[b for b in result.blocks if b not in previous],
        n_arrival=len(new),
        n_total=len(combined),
    )


def _write_table(frame: pd.DataFrame, path: Path) -> None:
    if path.suffix.lower() == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)


def _meta(folder: Path) -> dict[str, Any]:
    import json

    return dict(json.loads((folder / "meta.json").read_text()))


def _assignments(folder: Path) -> pd.DataFrame:
    """patient_id, block, split of a prepared folder."""
    import pandas as pd

    parts = []
    for split in SPLITS:
        frame = pd.read_parquet(folder / f"{split}.parquet", columns=["patient_id", "block"])
        parts.append(frame.assign(split=split))
    return pd.concat(parts, ignore_index=True).astype(str)


def block_changes(old: pd.DataFrame, new: pd.DataFrame) -> list[str]:
    """Why ``new`` (patient_id, block, split) may not replace ``old``; empty when it may.

    A prepared patient must keep their block and split, and no new patient may join a block
    that already exists: a block's patients are fixed once it exists (its budget is theirs).
    """
    merged = old.merge(new, on="patient_id", how="left", suffixes=("_old", "_new"))
    problems = []
    gone = merged[merged["block_new"].isna()]
    if len(gone):
        problems.append(
            f"{len(gone)} patient(s) of the current data are missing from the new preparation "
            f"(first {gone['patient_id'].iloc[0]!r}); data is only ever appended"
        )
    kept = merged[merged["block_new"].notna()]
    moved = kept[kept["block_old"] != kept["block_new"]]
    if len(moved):
        first = moved.iloc[0]
        pairs = sorted({(r.block_old, r.block_new) for r in moved.itertuples()})
        shown = ", ".join(f"{a!r} → {b!r}" for a, b in pairs[:3])
        problems.append(
            f"the new preparation regroups existing blocks ({shown}; {len(moved)} patient(s), "
            f"first {first['patient_id']!r}): arrivals must hold whole blocks "
            "(keep the contract's block.edges; new patients arrive as new blocks)"
        )
    split = kept[kept["split_old"] != kept["split_new"]]
    if len(split):
        problems.append(
            f"{len(split)} patient(s) change between train and test (first "
            f"{split['patient_id'].iloc[0]!r}): keep the seed and test_fraction of the data"
        )
    joined = new[~new["patient_id"].isin(old["patient_id"]) & new["block"].isin(old["block"])]
    if len(joined):
        blocks = sorted(set(joined["block"]))
        problems.append(
            f"{len(joined)} new patient(s) would join existing block(s) {blocks}: new patients "
            "arrive as a new block"
        )
    return problems


def publish(staged: Staged) -> Staged:
    """Move the staged raw table and prepared folder into place; remove the staging folder."""
    for src, dst in ((staged.staged_raw, staged.raw), (staged.staged_prepared, staged.prepared)):
        _swap(Path(src), Path(dst))
    shutil.rmtree(staged.staging, ignore_errors=True)
    return staged


def _swap(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    backup = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
    if dst.exists():
        dst.rename(backup)
    try:
        src.rename(dst)
    except BaseException:
        if backup.exists() and not dst.exists():
            backup.rename(dst)
        raise
    if backup.is_dir():
        shutil.rmtree(backup, ignore_errors=True)
    elif backup.exists():
        backup.unlink()


# --------------------------------------------------------------------------- DVC


@dataclass
class DvcRecord:
    root: str
    added: list[str] = field(default_factory=list)  # paths versioned by `dvc add`
    committed: list[str] = field(default_factory=list)  # dvc.yaml stages committed
    pushed: int = 0  # files pushed to the remote
    remote: str | None = None
    git_commit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def init_repo(root: str | Path, *, remote: str | Path | None = None, git: bool = True) -> Path:
    """Make ``root`` a DVC repository (in git when git is available and ``git`` is true) whose
    default remote ``local`` is ``remote`` (default ``config.dvc_remote()``). Idempotent."""
    import subprocess

    folder = Path(root).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    use_git = git and shutil.which("git") is not None
    if use_git and not (folder / ".git").exists():
        subprocess.run(["git", "init", "-q", str(folder)], check=True, capture_output=True)
    if not (folder / ".dvc").is_dir():
        from dvc.repo import Repo

        with _quiet_dvc():
            Repo.init(str(folder), no_scm=not use_git).close()
        if use_git:
            _git_commit(folder, [".dvc/.gitignore", ".dvcignore"], "dvc init")
    target = Path(remote) if remote is not None else config.dvc_remote()
    target.mkdir(parents=True, exist_ok=True)
    from configobj import ConfigObj

    conf = ConfigObj(str(folder / ".dvc" / "config"))
    conf.setdefault("core", {})["remote"] = "local"
    conf.setdefault("core", {})["analytics"] = "false"
    conf['remote "local"'] = {"url": str(target.resolve())}
    conf.write()
    return folder


def version_with_dvc(
    root: str | Path,
    paths: list[str | Path],
    *,
    push: bool = True,
    git_commit: bool = False,
    message: str = "dpgov ingest",
) -> DvcRecord:
    """Version ``paths`` (inside the DVC repository ``root``) and push them to the remote.

    A path produced by a ``dvc.yaml`` stage is recorded with ``dvc commit`` of that stage (its
    ``dvc.lock``); any other path with ``dvc add`` (its ``.dvc`` file). With ``git_commit``, the
    DVC files are committed to git (only them). Raises UsageError for a path outside the
    repository, or when pushing finds no remote.
    """
    import os

    from dvc.config import NoRemoteError
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    base = Path(root).resolve()
    if not (base / ".dvc").is_dir():
        raise UsageError(f"DVC repository {base}: no .dvc folder (run `dvc init`)")
    record = DvcRecord(root=str(base))
    rels = []
    for p in paths:
        full = Path(p).resolve()
        try:
            rels.append(full.relative_to(base).as_posix())
        except ValueError as err:
            raise UsageError(f"{full} lies outside the DVC repository {base}") from err
    tracked: list[str] = []
    targets: list[str] = []  # what to push: the .dvc files and stages just recorded
    try:
        with _quiet_dvc(), Repo(str(base)) as repo:
            owners = {Path(o.fs_path).resolve(): o.stage for o in repo.index.outs}
            for rel in rels:
                stage = owners.get((base / rel).resolve())
                if stage is not None and not stage.is_data_source:
                    repo.commit(f"{stage.path}:{stage.name}", force=True)
                    record.committed.append(stage.addressing)
                    tracked.append("dvc.lock")
                    targets.append(f"{stage.path}:{stage.name}")
                else:
                    repo.add(str(base / rel))
                    record.added.append(rel)
                    tracked += [f"{rel}.dvc", str(Path(rel).parent / ".gitignore")]
                    targets.append(str(base / f"{rel}.dvc"))
            if git_commit and type(repo.scm).__name__ == "Git":
                record.git_commit = _git_commit(base, tracked, message)
        if push:
            # Pushed by their .dvc file or stage, from a repository opened afresh: with a
            # dvc.yaml present DVC reads a bare folder path as a stage name ("does not exist
            # as an output"), and the repository that recorded them may keep an older index.
            with _quiet_dvc(), Repo(str(base)) as repo:
                try:
                    record.pushed = int(repo.push(targets=targets) or 0)
                except NoRemoteError as err:
                    raise UsageError(
                        f"DVC repository {base}: no default remote to push to "
                        "(dvc remote add -d NAME URL)"
                    ) from err
                remote = repo.config.get("core", {}).get("remote")
                if remote:
                    record.remote = str(repo.config["remote"][remote].get("url"))
    except DvcException as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"DVC in {base}: {first}") from err
    return record


@contextmanager
def _quiet_dvc() -> Iterator[None]:
    """DVC logs hints ("To track the changes with git...") at INFO on stdout: keep them out of
    the command line's output (``--json`` must stay parseable)."""
    import logging

    log = logging.getLogger("dvc")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _git_commit(root: Path, paths: list[str], message: str) -> str | None:
    """Commit exactly ``paths`` (those that exist) to git; None when nothing changed."""
    import subprocess

    files = sorted({p for p in paths if (root / p).exists()})
    if not files:
        return None
    env_args = ["-c", "user.name=dpgov", "-c", "user.email=dpgov@localhost"]
    subprocess.run(["git", "add", "--", *files], cwd=root, check=True, capture_output=True)
    diff = subprocess.run(
        ["git", "diff", "--cached", "--quiet", "--", *files], cwd=root, capture_output=True
    )
    if diff.returncode == 0:
        return None
    subprocess.run(
        ["git", *env_args, "commit", "-q", "-m", message, "--", *files],
        cwd=root,
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


# --------------------------------------------------------------------------- ledger


def register_blocks(
    ledger: Ledger,
    *,
    dataset: str,
    blocks: dict[str, int],
    data_version: str,
    prepared: str | Path | None = None,
) -> list[str]:
    """Add every block not yet registered; check them all first (a conflict changes nothing).
    With ``prepared`` (the published folder of ``data_version``), the key's fingerprint is
    checked first and each block is registered with its members, its domain and its split;
    without it the blocks are registered without members (conservative: their charges reach
    every patient of the domain). Returns the blocks added."""
    known = {b.block: b for b in ledger.blocks(dataset)}
    for block, patients in blocks.items():
        info = known.get(block)
        if info is not None and info.patients != patients:
            raise UsageError(
                f"ingest {dataset}: block {block!r} is registered with {info.patients} patients, "
                f"the new data gives {patients}: new patients arrive as a new block"
            )
    members: dict[str, list[str]] = {}
    held_out: dict[str, list[str]] = {}
    domain: str | None = None
    if prepared is not None:
        members, held_out, domain, fp = _prepared_members(Path(prepared), dataset, data_version)
        ledger.pseudonym_key(fp)
        for block, patients in blocks.items():
            if len(members.get(block, [])) != patients:
                raise UsageError(
                    f"ingest {dataset}: block {block!r} has {len(members.get(block, []))} "
                    f"patients in {prepared}, the arrival gives {patients}"
                )
    added = []
    for block, patients in blocks.items():
        if block in known:
            continue
        if prepared is not None:
            entry = ledger.add_block(
                dataset=dataset,
                block=block,
                patients=int(patients),
                data_version=data_version,
                members=members[block],
                domain=domain,
                split="train",
            )
        else:
            entry = ledger.add_block(
                dataset=dataset, block=block, patients=int(patients), data_version=data_version
            )
        if entry is not None:
            added.append(block)
    for block, pseudonyms in held_out.items():  # the test blocks (dpgov.data.test_blocks)
        if block in known:
            continue
        entry = ledger.add_block(
            dataset=dataset,
            block=block,
            patients=len(pseudonyms),
            data_version=data_version,
            members=pseudonyms,
            domain=domain,
            split=TEST_SPLIT,
        )
        if entry is not None:
            added.append(block)
    return added


def _prepared_members(
    folder: Path, dataset: str, version: str
) -> tuple[dict[str, list[str]], dict[str, list[str]], str, str]:
    """Members per training block and per test block, the id domain and the key fingerprint
    of a prepared folder of ``version`` (UsageError when it holds another version or
    dataset)."""
    data = load_prepared(folder)
    if data.dataset != dataset or data.data_version != version:
        raise UsageError(
            f"ingest {dataset}: {folder} holds {data.dataset!r} at data version "
            f"{data.data_version}, not {version}"
        )
    pseudo = data.meta.get("pseudonymisation") or {}
    if not pseudo.get("domain") or not pseudo.get("key_fingerprint"):
        raise UsageError(f"prepared data {folder}: meta.json names no id domain: prepare again")
    return (
        block_members(data.train),
        evaluation_members(data.test),
        str(pseudo["domain"]),
        str(pseudo["key_fingerprint"]),
    )


# --------------------------------------------------------------------------- waves


@dataclass(frozen=True)
class Wave:
    index: int  # 1-based
    blocks: list[str]
    values: list[Any]  # raw block values (e.g. enrollment years) in this wave
    patients: int  # training patients
    table: Any = field(repr=False, compare=False)


def plan_waves(groups: list[tuple[str, int]], n: int) -> list[list[str]]:
    """Cut chronological block groups ``[(name, training patients), ...]`` into ``n``
    contiguous waves of whole groups, each holding at least one, as even in patients as a
    greedy pass allows (each wave takes groups until it reaches its share of what is left)."""
    if n < 1:
        raise UsageError(f"waves must be at least 1, found {n}")
    if n > len(groups):
        raise UsageError(f"cannot cut {len(groups)} block(s) into {n} waves of whole blocks")
    waves: list[list[str]] = []
    i = 0
    for w in range(n):
        rest = groups[i:]
        left = n - w
        if left == 1:
            waves.append([g for g, _ in rest])
            break
        share = sum(p for _, p in rest) / left
        take, total = [rest[0][0]], rest[0][1]
        j = 1
        while j < len(rest) - (left - 1) and total < share:
            take.append(rest[j][0])
            total += rest[j][1]
            j += 1
        waves.append(take)
        i += len(take)
    return waves


def enrollment_waves(n: int = 3, *, params: DataParams | None = None) -> list[Wave]:
    """The bundled flchain cohort as ``n`` chronological arrivals of whole blocks (blocks as
    :func:`dpgov.data.prepare` groups the full cohort, so no arrival regroups a block)."""
    params = params or DataParams()
    loaded = load_contract(None)
    c = loaded.contract
    src = load_source(None, c, horizon_years=params.horizon_years)
    _, _, meta, _ = build_prepared(src, loaded, c.dataset, params)
    grouped: dict[str, list[Any]] = meta["block_source"]["grouped"] or {
        b: [b] for b in meta["blocks"]
    }
    order = sorted(grouped, key=lambda b: min(grouped[b]))
    plan = plan_waves([(b, int(meta["blocks"][b])) for b in order], n)
    column = c.block.column
    assert column is not None
    out = []
    for k, names in enumerate(plan, start=1):
        values = sorted(v for b in names for v in grouped[b])
        table = src.frame[src.frame[column].isin(values)].reset_index(drop=True)
        patients = sum(int(meta["blocks"][b]) for b in names)
        out.append(Wave(index=k, blocks=names, values=values, patients=patients, table=table))
    return out


def write_waves(folder: str | Path, n: int = 3, *, params: DataParams | None = None) -> list[Wave]:
    """Write :func:`enrollment_waves` as ``flchain-wave<k>.csv`` files in ``folder``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    waves = enrollment_waves(n, params=params)
    for w in waves:
        w.table.to_csv(wave_path(out, w.index), index=False)
    return waves


def wave_path(folder: str | Path, index: int) -> Path:
    return Path(folder) / f"flchain-wave{index}.csv"


# --------------------------------------------------------------------------- newest version


def checkout_newest(prepared: str | Path, *, pull: bool = True) -> str:
    """The data version of ``prepared``; a DVC-tracked folder missing from the workspace (a
    fresh checkout on a worker) is first pulled from the remote (``dvc pull``), so the run
    trains on the version the repository records. Raises UsageError when there is none."""
    folder = Path(prepared).resolve()
    if not folder.exists() and pull:
        root = find_dvc_root(folder.parent if folder.parent.exists() else Path.cwd())
        if root is not None:
            from dvc.exceptions import DvcException
            from dvc.repo import Repo

            try:
                with _quiet_dvc(), Repo(str(root)) as repo:
                    repo.pull(targets=[str(folder)])
            except DvcException as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else "failed"
                raise UsageError(f"prepared data {folder}: dvc pull: {first}") from err
    if not (folder / "meta.json").is_file():
        raise UsageError(
            f"prepared data {folder}: not found (ingest or `dpgov data prepare` first)"
        )
    return data_version(folder)
