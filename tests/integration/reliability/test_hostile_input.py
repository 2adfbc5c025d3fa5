"""Hostile input (hypothesis): the command line, policy files, data contracts and data files.

Every input gives a result or a clear error: exit 0, or exit 1 or 2 with one ``error:`` line
(or click's usage message), never a traceback; and a refused command never changes the ledger
(the one exception is by design: ``dpgov gate`` and ``dpgov promote`` record the decision they
blocked on, and nothing else). Commands run in this process through ``dpgov.cli.main`` (fast);
a handful run as real processes at the end.

The examples are derandomized (the same every run, so a failure reproduces); set
``DPGOV_FUZZ_EXAMPLES`` to try more.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.reliability.helpers import (
    REPO,
    Result,
    World,
    dpgov,
    dpgov_process,
    write_policy,
)
from tests.integration.reliability.zygote import Zygote

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("reliability")]

SCALE = float(os.environ.get("DPGOV_FUZZ_EXAMPLES", "1"))


def fuzz(examples: int) -> Any:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --------------------------------------------------------------------------- the world attacked


@dataclass
class Target:
    world: World
    tmp: Path
    model: str
    version: str
    pending: str  # a pending reservation
    committed: str
    counter: int = 0

    def env(self) -> dict[str, str | None]:
        # any flow that would start goes to a Prefect server that is not there: exit 2, quickly
        return self.world.env(PREFECT_API_URL="http://127.0.0.1:9/api")

    def head(self) -> tuple[int, str]:
        ledger = self.world.ledger()
        try:
            return ledger.head()
        finally:
            ledger.close()

    def fresh(self, name: str) -> Path:
        self.counter += 1
        path = self.tmp / f"{name}-{self.counter}"
        path.mkdir(parents=True)
        return path


@pytest.fixture(scope="module")
def target(
    tmp_path_factory: pytest.TempPathFactory,
    cohort: tuple[Path, Path, Path],
    mlflow_store_template: Path,
    zygote: Zygote,
) -> Iterator[Target]:
    """A world with blocks, a pending and a committed reservation, and a model version from a
    real governed run, for the attacks to aim at."""
    tmp = tmp_path_factory.mktemp("hostile")
    home = tmp / "home"
    home.mkdir()
    shutil.copy(mlflow_store_template, home / "mlflow.db")
    prepared, raw, contract = cohort
    world = World(
        home=home,
        data=prepared,
        raw=raw,
        contract=contract,
        policy=write_policy(tmp / "policy.yaml"),
        ledger_url=f"sqlite:///{home / 'ledger.db'}",
        tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
    )
    from dpgov.testing.policies import put_in_force

    put_in_force(world.policy, url=world.ledger_url)  # the world's policy is in force
    env = {k: v for k, v in world.env().items() if v is not None}
    ran = zygote.run(params=world.params(), policy=world.policy, result=tmp / "run.json", env=env)
    assert ran["outcome"] and ran["outcome"]["ok"], ran
    summary = ran["outcome"]["summary"]
    from dpgov.accounting import DpSgdMechanism

    ledger = world.ledger()
    m = DpSgdMechanism(noise_multiplier=5.0, sample_rate=0.01, steps=10)
    pending = ledger.reserve(
        dataset="synthetic", blocks=["2001"], mechanism=m, budget=world.budget()
    )
    committed = ledger.reserve(
        dataset="synthetic", blocks=["2002"], mechanism=m, budget=world.budget()
    )
    ledger.commit(committed.id, steps=5)
    ledger.close()
    yield Target(
        world, tmp, summary["model_name"], summary["model_version"], pending.id, committed.id
    )


def judge(t: Target, result: Result, before: tuple[int, str]) -> None:
    """The contract every command keeps, whatever it was given."""
    shown = (
        f"dpgov {' '.join(map(repr, result.args))}\nstdout: {result.out[-800:]}\n"
        f"stderr: {result.err[-1500:]}"
    )
    assert result.code in (0, 1, 2), shown
    assert "Traceback (most recent call last)" not in result.out + result.err, shown
    if result.code:
        assert result.clean_error(), shown
        after = t.head()
        if after != before:
            # only a blocked gate decision may be recorded by a command that exits 1
            assert result.code == 1 and result.args[:1] in (("gate",), ("promote",)), shown
            ledger = t.world.ledger()
            new = ledger.entries(since_seq=before[0])
            ledger.close()
            assert {e.kind for e in new} == {"gate_decision"}, shown


TALLY: dict[str, Counter[int]] = {}  # test -> exit codes seen (printed at the end)


def attack(t: Target, *args: Any) -> Result:
    before = t.head()
    result = dpgov(*args, env=t.env(), cwd=t.tmp)  # relative paths land in a tmp folder
    judge(t, result, before)
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0]
    TALLY.setdefault(test, Counter())[result.code] += 1
    return result


@pytest.fixture(scope="module", autouse=True)
def tally() -> Iterator[None]:
    """Print how many inputs each test tried and how they ended (for RESULTS_reliability.md;
    shown with ``pytest -s``)."""
    yield
    for test, codes in sorted(TALLY.items()):
        shown = ", ".join(f"exit {c}: {n}" for c, n in sorted(codes.items()))
        print(f"\nfuzz {test}: {sum(codes.values())} inputs ({shown})")


# --------------------------------------------------------------------------- hostile values

ODD = [
    "",
    " ",
    "-",
    "--",
    "--json",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "1e309",
    "-1e309",
    "0",
    "-0",
    "-1",
    "1",
    "0.0",
    "5e-324",
    "1e-320",
    "0x10",
    "1_000",
    "１",
    "٣",
    "1,5",
    "1e3",
    "2.5",
    "10" * 20,
    str(10**30),
    "None",
    "null",
    "true",
    "[]",
    "{}",
    "\t",
    "\n",
    "é",
    "💥",
    "../../../etc/passwd",
    "/dev/null",
    "%s%n%x",
    "'; DROP TABLE dpgov_entries; --",
    "\u202e",
    "syn\u200bthetic",
    "9" * 20,
    "\udcff",
    "a" * 3000,
    "synthetic",
    "2001",
    "2002",
    "champion",
    "rel-model",
]
text = st.one_of(
    st.sampled_from(ODD),
    st.text(
        alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
        max_size=30,
    ),
    st.text(alphabet="\udc80\udcfe\udcffab-_", max_size=6),  # undecodable bytes in argv
)
# numbers a user can type, kept out of the region where composition is merely slow (σ below
# ~0.5 with large q, or millions of steps: see RESULTS_reliability.md)


@st.composite
def mostly(draw: Any, valid: st.SearchStrategy[str]) -> str:
    """A valid value seven times in ten (what hypothesis shrinks towards), else a hostile one."""
    return draw(valid) if draw(st.integers(0, 9)) < 7 else draw(st.sampled_from(ODD) | text)


sigma = mostly(st.floats(0.5, 50).map(repr))
rate = mostly(st.floats(1e-4, 1.0).map(repr))
small = mostly(st.floats(1e-12, 1e-3).map(repr))
steps = mostly(st.integers(1, 500).map(str))
count = mostly(st.integers(1, 5000).map(str))


@st.composite
def options(draw: Any, spec: dict[str, Any]) -> list[str]:
    """Some of the options in ``spec`` (name -> value strategy), each maybe left out."""
    out: list[str] = []
    for name, values in spec.items():
        if draw(st.integers(0, 9)) < 9:
            out += [name, draw(values)]
    if draw(st.booleans()):
        out.append("--json")
    return out


# --------------------------------------------------------------------------- the command line


@fuzz(40)
@given(data=st.data())
def test_accounting_commands(target: Target, data: st.DataObject) -> None:
    cmd = data.draw(st.sampled_from(["cost", "calibrate"]))
    if cmd == "cost":
        spec = {
            "--noise-multiplier": sigma,
            "--sample-rate": rate,
            "--steps": steps,
            "--delta": small,
            "--accountant": mostly(st.sampled_from(["pld", "rdp"])),
        }
    else:
        spec = {
            "--target-epsilon": sigma,
            "--sample-rate": rate,
            "--steps": steps,
            "--dataset": mostly(st.just("synthetic")),
            "--block": mostly(st.sampled_from(["2001", "2003"])),
        }
    attack(target, cmd, *data.draw(options(spec)))


@fuzz(100)
@given(data=st.data())
def test_ledger_commands(target: Target, data: st.DataObject) -> None:
    t = target
    reservation = mostly(st.sampled_from([t.pending, t.committed, t.pending[:8]]))
    dataset = mostly(st.sampled_from(["synthetic", "Synthetic"]))
    block = mostly(st.sampled_from(["2001", "2002", "2003", "2004", "1999"]))
    cmd = data.draw(
        st.sampled_from(
            [
                "show",
                "verify",
                "reserve",
                "commit",
                "release",
                "abort",
                "add-block",
                "retire",
                "budget",
            ]
        )
    )
    if cmd == "show":
        args = ["ledger", "show", *data.draw(options({"--kind": text, "--last": count}))]
    elif cmd == "verify":
        args = ["ledger", "verify", *data.draw(options({}))]
    elif cmd == "reserve":
        args = [
            "ledger",
            "reserve",
            *data.draw(
                options(
                    {
                        "--dataset": dataset,
                        "--block": block,
                        "--noise-multiplier": sigma,
                        "--sample-rate": rate,
                        "--steps": steps,
                        "--run-id": text,
                    }
                )
            ),
        ]
        if data.draw(st.booleans()):
            args += ["--block", data.draw(block)]
    elif cmd in ("commit", "release", "abort"):
        spec = {
            "commit": {"--steps": steps, "--run-id": text},
            "release": {"--reason": text},
            "abort": {"--reason": text},
        }[cmd]
        args = ["ledger", cmd, data.draw(reservation), *data.draw(options(spec))]
    elif cmd == "add-block":
        args = [
            "ledger",
            "add-block",
            *data.draw(
                options(
                    {
                        "--dataset": dataset,
                        "--block": block,
                        "--patients": count,
                        "--data-version": text,
                    }
                )
            ),
        ]
    elif cmd == "retire":
        # retiring a real block would change the world for the other examples: aim beside it
        args = [
            "ledger",
            "retire",
            *data.draw(
                options(
                    {
                        "--dataset": st.just("synthetic") | text,
                        "--block": st.just("1999") | text,
                        "--reason": text,
                    }
                )
            ),
        ]
    else:
        args = ["budget", *data.draw(options({"--dataset": dataset}))]
    attack(t, *args)


@fuzz(40)
@given(data=st.data())
def test_gate_commands(target: Target, data: st.DataObject) -> None:
    t = target
    model = mostly(st.sampled_from([t.model, t.model, "no-such-model"]))
    version = mostly(st.sampled_from([t.version, t.version, "2", "0", "01", " 1", "9" * 12]))
    cmd = data.draw(st.sampled_from(["gate", "approve", "refuse", "promote"]))
    who = mostly(st.sampled_from(["alice", "ALICE ", "root", "root\u200b", "ｒｏｏｔ"]))
    spec = {
        "gate": {},
        "approve": {"--by": who, "--note": text},
        "refuse": {"--by": who, "--reason": text},
        "promote": {"--alias": st.sampled_from(["champion", "Champion", "latest", "v1"]) | text},
    }[cmd]
    attack(t, cmd, data.draw(model), data.draw(version), *data.draw(options(spec)))


@fuzz(15)
@given(data=st.data())
def test_audit_options(target: Target, data: st.DataObject) -> None:
    args = data.draw(
        options(
            {
                "--since": st.sampled_from(
                    [
                        "2026-01-31",
                        "2999-01-01",
                        "yesterday",
                        "2026-13-01",
                        "2026-01-31T25:00",
                        "0001-01-01",
                    ]
                )
                | text,
                "--stale-hours": count,
                "--html": st.sampled_from(["/nonexistent/dir/r.html", "/dev/null/x.html"]) | text,
            }
        )
    )
    attack(target, "audit", *args)


VOCABULARY = [
    "cost",
    "calibrate",
    "budget",
    "ledger",
    "show",
    "verify",
    "reserve",
    "commit",
    "release",
    "abort",
    "add-block",
    "retire",
    "data",
    "prepare",
    "validate",
    "gate",
    "approve",
    "refuse",
    "promote",
    "audit",
    "run",
    "demo",
    "sweep",
    "schedule",
    "flows",
    "answer",
    "--json",
    "--policy",
    "--params",
    "--dataset",
    "--block",
    "--steps",
    "--help",
    "-h",
    "--version",
    "--noise-multiplier",
    "--sample-rate",
    "--by",
    "--cron",
    "--pool",
    "--wait",
    "--since",
]


@fuzz(80)
@given(argv=st.lists(st.sampled_from(VOCABULARY) | text, min_size=0, max_size=7))
def test_any_argv(target: Target, argv: list[str]) -> None:
    """Whatever tokens arrive, in whatever order: a result, usage help or a clear error."""
    if "--help" not in argv and "-h" not in argv:  # never train or prepare flchain here
        if argv[:1] in (["demo"], ["run"], ["sweep"]):
            argv = [*argv, "--policy", str(REPO / "no-such-policy.yaml")]
        if argv[:2] in (["data", "prepare"], ["data", "validate"]):
            argv = [*argv, "--contract", str(REPO / "no-such-contract.yaml")]
    attack(target, *argv)


# --------------------------------------------------------------------------- policy files

DEFAULT_POLICY = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from([0, 1, -1, 1e-5, 8.0, "pld", "rdp", "interval", "champion", "@x", "", []]),
)
tree = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(obj: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    return out


@st.composite
def policy_text(draw: Any) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return draw(
            st.sampled_from(
                [
                    b"",
                    b"---\n",
                    b"[1, 2",
                    b"version: 1\nbudget: {epsilon_per_block: 8, delta: 1e-5",
                    b"\xff\xfe\x00v",
                    b"!!python/object/apply:os.system ['echo hacked']",
                    b"a: &a [*a]",
                    b"version: 1\n" * 50,
                    # a small billion-laughs: aliases expand to 10^5 references
                    b"a: &a [x,x,x,x,x,x,x,x,x,x]\n"
                    b"b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
                    b"c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                    b"d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
                    b"e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nversion: 1\n",
                    b"version: 1\nbudget: {epsilon_per_block: 8, delta: 1e-5}\n"
                    b"budget: {epsilon_per_block: 1000, delta: 1e-5}\n",  # a duplicate key
                    b"version: " + b"[" * 100_000 + b"]" * 100_000 + b"\n",  # 10^5 levels
                ]
            )
        )
    policy = json.loads(json.dumps(DEFAULT_POLICY))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(policy)[1:]))
        node = policy
        for key in path[:-1]:
            node = node[key]
        if draw(st.integers(0, 5)) == 0:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = draw(tree)
    if draw(st.integers(0, 5)) == 0:
        policy[draw(st.text(max_size=6))] = draw(tree)
    return yaml.safe_dump(policy, allow_unicode=True).encode("utf-8", "surrogatepass")


@fuzz(60)
@given(body=policy_text(), cmd=st.sampled_from(["set", "calibrate"]))
def test_policy_files(target: Target, body: bytes, cmd: str) -> None:
    """A policy file reaches dpgov through `dpgov policy set` (what enforcing commands then
    read from the ledger) or a what-if (`calibrate --policy`)."""
    t = target
    path = t.fresh("policy") / "policy.yaml"
    path.write_bytes(body)
    args: list[Any] = {
        "set": ["policy", "set", path, "--reason", "fuzz"],
        "calibrate": [
            "calibrate",
            "--target-epsilon",
            "1",
            "--sample-rate",
            "0.01",
            "--steps",
            "10",
            "--policy",
            path,
        ],
    }[cmd]
    attack(t, *args)


# --------------------------------------------------------------------------- data and contracts

CSV_CELLS = [
    "",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "1e400",
    "-1",
    "abc",
    "２",
    '"',
    "'",
    ";",
    "0x1F",
    "2001.5",
    "3000",
    "1900",
    "M",
    "F",
    "X",
    "2",
    " 1",
    "None",
    "1" * 400,
    "💥",
]


OUT_OF_CONTRACT = {
    "age": ["150", "-3", "120.5"],
    "year": ["1900", "2101"],
    "label": ["2", "-1"],
    "sex": ["X", "f", ""],
    "lab": ["-1", "-0.5"],
    "x1": ["11", "-10.5"],
}


@st.composite
def data_file(draw: Any, csv_text: str) -> tuple[str, bytes]:
    """The synthetic cohort's CSV, mutated; or something that is not a CSV at all."""
    kind = draw(st.integers(0, 14))
    if kind == 0:
        return "csv", draw(st.binary(max_size=300))
    if kind == 1:
        return draw(st.sampled_from(["parquet", "npz"])), draw(st.binary(max_size=300))
    if kind == 2:
        return "csv", draw(
            st.sampled_from(
                [
                    b"",
                    b"\n",
                    b"patient_id\n",
                    b"\xef\xbb\xbf" + csv_text.encode(),
                    csv_text.replace(",", ";").encode(),
                    csv_text.splitlines()[0].encode(),
                    (csv_text.splitlines()[0] + "\n" + csv_text.splitlines()[1]).encode(),
                ]
            )
        )
    lines = csv_text.splitlines()
    header, rows = lines[0].split(","), [r.split(",") for r in lines[1:]]
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.integers(0, 6))
        if op >= 4:  # well-typed values the contract forbids
            column = draw(st.sampled_from(sorted(OUT_OF_CONTRACT)))
            if column in header:
                i = header.index(column)
                for _ in range(draw(st.integers(1, 5))):
                    rows[draw(st.integers(0, len(rows) - 1))][i] = draw(
                        st.sampled_from(OUT_OF_CONTRACT[column])
                    )
            continue
        if op == 0 and len(header) > 1:  # drop a column
            i = draw(st.integers(0, len(header) - 1))
            header.pop(i)
            for r in rows:
                r.pop(i)
        elif op == 1:  # rename a column
            header[draw(st.integers(0, len(header) - 1))] = draw(
                st.sampled_from(["", "label", "patient_id", "year", "é", "x1"])
            )
        elif op == 2:  # duplicate a patient
            rows.append(list(rows[draw(st.integers(0, len(rows) - 1))]))
        else:  # hostile cells
            for _ in range(draw(st.integers(1, 20))):
                r = rows[draw(st.integers(0, len(rows) - 1))]
                r[draw(st.integers(0, len(r) - 1))] = draw(st.sampled_from(CSV_CELLS))
    body = "\n".join(",".join(r) for r in [header, *rows]) + "\n"
    return "csv", body.encode("utf-8")


@st.composite
def contract_text(draw: Any, contract: dict[str, Any]) -> bytes:
    if draw(st.integers(0, 7)) == 0:
        return draw(st.sampled_from([b"", b"[", b"\xff\xfe", b"version: 1", b"- a\n- b\n"]))
    c = json.loads(json.dumps(contract))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(c)[1:]))
        node = c
        for key in path[:-1]:
            node = node[key]
        if draw(st.integers(0, 4)) == 0:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = draw(tree)
    return yaml.safe_dump(c, allow_unicode=True).encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def raw_cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """A small cohort CSV (240 patients, 4 year blocks) and its contract."""
    from dpgov.testing.sources import tabular_contract, write_tabular

    data, contract = write_tabular(
        tmp_path_factory.mktemp("raw"), 240, dataset="fz", min_block=5, min_subgroup=2
    )
    assert contract.exists()
    return data.read_text(), tabular_contract("fz", min_block=5, min_subgroup=2)


@fuzz(40)
@given(data=st.data())
def test_data_files_and_contracts(
    target: Target, raw_cohort: tuple[str, dict[str, Any]], data: st.DataObject
) -> None:
    """``dpgov data prepare`` (which registers blocks in the ledger when it succeeds) on mutated
    data files, mutated contracts, or both."""
    csv_text, contract = raw_cohort
    folder = target.fresh("data")
    what = data.draw(st.sampled_from(["data", "contract", "both"]))
    suffix, body = (
        data.draw(data_file(csv_text)) if what != "contract" else ("csv", csv_text.encode())
    )
    source = folder / f"cohort.{suffix}"
    source.write_bytes(body)
    spec = (
        data.draw(contract_text(contract)) if what != "data" else yaml.safe_dump(contract).encode()
    )
    contract_file = folder / "contract.yaml"
    contract_file.write_bytes(spec)
    attack(
        target,
        "data",
        "prepare",
        "--data",
        source,
        "--contract",
        contract_file,
        "--dataset",
        "fz",
        "--out",
        folder / "prepared",
        "--json",
    )


@fuzz(6)
@given(data=st.data())
def test_data_validate(
    target: Target, raw_cohort: tuple[str, dict[str, Any]], data: st.DataObject
) -> None:
    """``dpgov data prepare --no-register`` then ``dpgov data validate`` (Great Expectations)
    on mutated data: a verdict (exit 0, or 1 naming the failed checks) or a clear error; about
    a second each, so few examples."""
    csv_text, contract = raw_cohort
    folder = target.fresh("validate")
    suffix, body = data.draw(data_file(csv_text))
    source = folder / f"cohort.{suffix}"
    source.write_bytes(body)
    contract_file = folder / "contract.yaml"
    contract_file.write_text(yaml.safe_dump(contract))
    common = ["--data", source, "--contract", contract_file, "--dataset", "fz"]
    prepared = attack(
        target, "data", "prepare", *common, "--out", folder / "prepared", "--no-register"
    )
    where = ["--prepared", folder / "prepared"] if prepared.code == 0 else []
    attack(
        target,
        "data",
        "validate",
        *common,
        *where,
        "--out",
        folder / "validation",
    )


# --------------------------------------------------------------------------- real processes


def test_a_handful_as_real_processes(target: Target) -> None:
    """What a user at a terminal sees: one line and exit 2, from a fresh process."""
    t = target
    junk = t.fresh("proc")
    (junk / "params.yaml").write_bytes(b"train: {epochs: many}\n")
    (junk / "blob.csv").write_bytes(os.urandom(256))
    (junk / "c.yaml").write_text("version: 1\n")
    (junk / "deep.yaml").write_text("train: " + "[" * 100_000 + "]" * 100_000 + "\n")
    cases = [
        ["cost", "--noise-multiplier", "nan", "--sample-rate", "0.01", "--steps", "10"],
        ["cost", "--noise-multiplier", "1", "--sample-rate", "0.01", "--steps", str(10**30)],
        ["run", "--params", junk / "params.yaml"],
        ["data", "prepare", "--data", junk / "blob.csv", "--contract", junk / "c.yaml"],
        ["gate", "no-such-model", "1"],
        ["ledger", "add-block", "--dataset", "d", "--block", "b", "--patients", "9" * 20],
        ["ledger", "add-block", "--dataset", "d", "--block", "x" * 300, "--patients", "5"],
        ["approve", "no-such-model", "1", "--by", "root\u200b"],
        ["run", "--params", junk / "deep.yaml"],
    ]
    for args in cases:
        before = t.head()
        r = dpgov_process(*args, env=t.env(), timeout=120, cwd=junk)
        judge(t, r, before)
        assert r.code == 2 and r.err.count("\n") == 1, (args, r.err)
    env = t.env()
    env["DPGOV_LEDGER_URL"] = "postgresql://nobody@127.0.0.1:9/none"
    r = dpgov_process(
        "ledger",
        "reserve",
        "--dataset",
        "d",
        "--block",
        "b",
        "--noise-multiplier",
        "1",
        "--sample-rate",
        "0.01",
        "--steps",
        "10",
        env=env,
        timeout=120,
    )
    assert r.code == 2 and r.err.startswith("error: ledger database") and "Traceback" not in r.err
    env["DPGOV_LEDGER_URL"] = "postgresql+psycopg://nobody:hunter2@127.0.0.1:abc/none"
    r = dpgov_process("ledger", "show", env=env, timeout=120)
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert r.err.startswith("error: DPGOV_LEDGER_URL: port 'abc' is not a number")
    assert "hunter2" not in r.err
