"""One line, never a traceback, never a secret: the input rules of dpgov.yamlio, dpgov.names
and dpgov.redaction, end to end through ``dpgov`` (in this process, tests/cli.py) and, where
what a terminal shows matters (logs included), as a real process.

Each case names the protection it tests: without it the command would succeed, leave a
traceback, or print the secret.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from tests.cli import run_dpgov
from tests.integration.reliability.helpers import REPO, dpgov_process

SECRET, TOKEN = "s3cr3t-pw", "t0k3n-value"
DEEP = 100_000


@pytest.fixture
def cli(dpgov_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("DPGOV_ACTOR", "tester")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # a flow would fail fast
    monkeypatch.chdir(dpgov_home)

    def run(*args: object) -> tuple[int, str, str]:
        return run_dpgov(monkeypatch, capsys, *map(str, args))

    return run


def one_line(result: tuple[int, str, str], *needles: str, code: int = 2) -> str:
    """The result is exit ``code`` with one ``error:`` line holding every needle."""
    rc, out, err = result
    assert "Traceback" not in out + err, err
    assert rc == code, (rc, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def entries(url: str | None = None) -> int:
    from dpgov.ledger import Ledger

    ledger = Ledger.open(url)
    try:
        return len(ledger.entries())
    finally:
        ledger.close()


# --------------------------------------------------------------------------- YAML


def policy_text(**replace: str) -> str:
    text = (REPO / "policies" / "default.yaml").read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new, 1)
    return text


def test_a_second_budget_key_in_a_policy_is_refused_not_silently_winning(cli, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text() + "budget: {epsilon_per_block: 1000, delta: 1.0e-5}\n")
    line = one_line(cli("policy", "set", policy, "--reason", "t"), "duplicate key 'budget' at line")
    assert "(first at line" in line


def test_a_duplicate_key_deep_in_a_policy_is_refused(cli, tmp_path):
    policy = tmp_path / "policy.yaml"
    text = policy_text()
    assert "  epsilon_per_block:" in text
    policy.write_text(
        text.replace("  epsilon_per_block:", "  epsilon_per_block: 1000\n  epsilon_per_block:", 1)
    )
    one_line(cli("policy", "set", policy, "--reason", "t"), "duplicate key 'epsilon_per_block'")


def test_a_merge_key_may_still_be_overridden(cli, tmp_path):
    from dpgov.yamlio import parse_mapping

    data = parse_mapping("base: &b {x: 1, y: 2}\nthing:\n  <<: *b\n  x: 3\n", where="t")
    assert data["thing"] == {"x": 3, "y": 2}


def contract_and_data(tmp_path: Path) -> tuple[Path, Path]:
    from dpgov.testing.sources import write_tabular

    return write_tabular(tmp_path / "raw", 60, dataset="fz", min_block=5, min_subgroup=2)


def test_a_duplicate_key_in_a_contract_is_refused(cli, tmp_path):
    data, contract = contract_and_data(tmp_path)
    contract.write_text(contract.read_text() + "label: other\n")
    one_line(
        cli("data", "prepare", "--data", data, "--contract", contract, "--no-register"),
        f"contract {contract}",
        "duplicate key 'label'",
    )


def test_a_duplicate_key_in_params_is_refused(cli, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  epochs: 1\n  epochs: 100000\n")
    one_line(cli("run", "--params", params), f"params {params}", "duplicate key 'epochs'")
    params.write_text("data:\n  seed: 1\n  seed: 2\n")
    one_line(cli("data", "prepare", "--params", params), "duplicate key 'seed'")


@pytest.mark.parametrize("what", ["policy", "contract", "params"])
@pytest.mark.parametrize("style", ["flow", "block"])
def test_yaml_nested_too_deep_is_refused_quickly(cli, tmp_path, what, style):
    """10^5 levels (flow) or 2000 (block: the text grows with the square): the composer
    would end in a RecursionError; refused at 64 levels, in well under a second."""
    if style == "flow":
        body = "a: " + "[" * DEEP + "]" * DEEP + "\n"
    else:
        body = "".join(" " * i + f"k{i}:\n" for i in range(2000)) + " " * 2000 + "v: 1\n"
    path = tmp_path / f"{what}.yaml"
    path.write_text(body)
    args = {
        "policy": ("policy", "set", path, "--reason", "t"),
        "contract": ("data", "prepare", "--data", tmp_path / "x.csv", "--contract", path),
        "params": ("run", "--params", path),
    }[what]
    start = time.perf_counter()
    one_line(cli(*args), "nested more than 64 levels deep")
    assert time.perf_counter() - start < 5


def test_sixty_four_levels_are_accepted_and_sixty_five_are_not():
    from dpgov.errors import UsageError
    from dpgov.yamlio import MAX_DEPTH, parse_yaml

    assert MAX_DEPTH == 64
    assert parse_yaml("[" * 63 + "1" + "]" * 63, where="t") is not None  # 64 nodes deep
    with pytest.raises(UsageError, match="nested more than 64"):
        parse_yaml("[" * 64 + "1" + "]" * 64, where="t")
    # aliases add depth too: 2 x 40 levels once expanded
    inner = "[" * 39 + "1" + "]" * 39
    with pytest.raises(UsageError, match="once aliases are expanded"):
        parse_yaml(f"a: &a {inner}\nb: {'[' * 39}*a{']' * 39}\n", where="t")


BILLION_LAUGHS = "".join(
    f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}" if i else "lol"] * 10) + "]\n"
    for i in range(9)
)  # 10^9 values once expanded


@pytest.mark.parametrize("what", ["policy", "contract", "params"])
def test_an_alias_bomb_is_refused_quickly(cli, tmp_path, what):
    path = tmp_path / f"{what}.yaml"
    path.write_text(BILLION_LAUGHS + "version: 1\n")
    args = {
        "policy": ("policy", "set", path, "--reason", "t"),
        "contract": ("data", "prepare", "--data", tmp_path / "x.csv", "--contract", path),
        "params": ("run", "--params", path),
    }[what]
    start = time.perf_counter()
    one_line(cli(*args), "aliases expand to more than 100000 values")
    assert time.perf_counter() - start < 5


def test_a_recursive_alias_and_a_list_at_the_top_are_refused(cli, tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("a: &a [*a]\n")
    one_line(cli("policy", "set", path, "--reason", "t"), "an alias refers to its own anchor")
    path.write_text("- version: 1\n")
    one_line(
        cli("policy", "set", path, "--reason", "t"), "expected a mapping at top level, found list"
    )


@pytest.mark.parametrize("body", [b"\x00", b"\x80version: 1\n", b"version: 1\x00\n"])
def test_bytes_that_are_not_yaml_text_are_one_line(cli, tmp_path, body):
    path = tmp_path / "policy.yaml"
    path.write_bytes(body)
    one_line(
        cli("policy", "set", path, "--reason", "t"), f"policy {path}: not valid YAML (unacceptable"
    )


def test_every_yaml_reader_of_dpgov_uses_the_one_loader():
    """No ``yaml.safe_load``/``yaml.load`` left in src/ or pipelines/ besides dpgov.yamlio."""
    found = [
        f"{p.relative_to(REPO)}"
        for folder in ("src", "pipelines")
        for p in (REPO / folder).rglob("*.py")
        if p.name != "yamlio.py" and ("yaml.safe_load" in (t := p.read_text()) or "yaml.load(" in t)
    ]
    assert found == []


# --------------------------------------------------------------------------- names


INVISIBLE = {
    "zero-width space": "syn\u200bthetic",
    "right-to-left override": "syn\u202ethetic",
    "control character": "syn\x07thetic",
    "tab": "syn\tthetic",
    "undecodable byte": "syn\udcffthetic",
}


@pytest.mark.parametrize("kind", sorted(INVISIBLE))
def test_invisible_characters_in_stored_names_are_refused_before_any_write(cli, kind):
    bad = INVISIBLE[kind]
    one_line(
        cli("ledger", "add-block", "--dataset", bad, "--block", "2001", "--patients", 5),
        "--dataset",
    )
    one_line(
        cli("ledger", "add-block", "--dataset", "d", "--block", bad, "--patients", 5), "--block"
    )
    assert entries() == 0


@pytest.mark.parametrize("who", ["root\u200b", "root\u202e", "ｒｏｏｔ", "ROOT", "ro ot", "r\x00"])
def test_an_approver_outside_the_name_rule_is_refused_before_anything_opens(cli, who):
    one_line(cli("approve", "no-such-model", "1", "--by", who), "error: --by ", "identity names")
    one_line(cli("refuse", "no-such-model", "1", "--by", who, "--reason", "x"), "error: --by ")
    assert entries() == 0


def test_a_policy_naming_an_approver_twice_with_a_zero_width_space_is_refused(cli, tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(**{"approvers: null": 'approvers: [root, "root\\u200b"]'}))
    one_line(
        cli("policy", "set", path, "--reason", "t"), "approvals.approvers.1", "ZERO WIDTH SPACE"
    )


@pytest.mark.parametrize(
    ("actor", "why"),
    [("root\u200b", "ZERO WIDTH SPACE"), ("ROOT", "case folding"), ("ﬁona", "NFKC")],
)
def test_the_actor_from_the_environment_obeys_the_name_rule(cli, monkeypatch, actor, why):
    monkeypatch.setenv("DPGOV_ACTOR", actor)
    one_line(
        cli("ledger", "add-block", "--dataset", "d", "--block", "b", "--patients", 5),
        "DPGOV_ACTOR",
        why,
    )
    monkeypatch.setenv("DPGOV_ACTOR", "fiona")
    assert cli("ledger", "add-block", "--dataset", "d", "--block", "b", "--patients", 5)[0] == 0
    assert entries() == 1


def test_params_and_contract_names_obey_the_rule(cli, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text('train:\n  model_name: "flchain\\u200b"\n')
    one_line(cli("run", "--params", params), "train.model_name", "ZERO WIDTH SPACE")
    params.write_text('data:\n  dataset: "fl\\u202echain"\n')
    one_line(cli("data", "prepare", "--params", params), "data.dataset", "RIGHT-TO-LEFT OVERRIDE")
    one_line(cli("data", "prepare", "--dataset", "fl\u202echain"), "--dataset", "RIGHT-TO-LEFT")


LONG = "x" * 300
HUGE = "99999999999999999999"


@pytest.mark.parametrize(
    ("args", "argument"),
    [
        (("--dataset", LONG, "--block", "b", "--patients", 5), "--dataset"),
        (("--dataset", "d", "--block", LONG, "--patients", 5), "--block"),
        (
            ("--dataset", "d", "--block", "b", "--patients", 5, "--data-version", LONG),
            "--data-version",
        ),
        (("--dataset", "d", "--block", "b", "--patients", HUGE), "--patients"),
        (("--dataset", "d", "--block", "b", "--patients", 2**31), "--patients"),
    ],
)
def test_names_and_numbers_beyond_the_columns_are_refused_on_both_databases(
    cli, monkeypatch, ledger_url, args, argument
):
    """SQLite would store a 300-character name and raise OverflowError on 10^20; PostgreSQL
    raises on both (String(200), Integer): each is one line, and nothing is written."""
    monkeypatch.setenv("DPGOV_LEDGER_URL", ledger_url)
    line = one_line(cli("ledger", "add-block", *args), argument)
    assert len(line) < 250 and LONG not in line  # the value echoed back is cut
    assert entries(ledger_url) == 0
    # the limits themselves are stored
    ok = cli("ledger", "add-block", "--dataset", "d" * 200, "--block", "b", "--patients", 2**31 - 1)
    assert ok[0] == 0, ok
    assert entries(ledger_url) == 1


def test_reserve_and_commit_arguments_beyond_the_columns_are_refused(cli, monkeypatch, ledger_url):
    monkeypatch.setenv("DPGOV_LEDGER_URL", ledger_url)
    assert cli("ledger", "add-block", "--dataset", "d", "--block", "b", "--patients", 500)[0] == 0
    mech = ("--noise-multiplier", 5, "--sample-rate", 0.01)
    one_line(
        cli(
            "ledger",
            "reserve",
            "--dataset",
            "d",
            "--block",
            "b",
            *mech,
            "--steps",
            10,
            "--run-id",
            LONG,
        ),
        "--run-id",
    )
    one_line(
        cli("ledger", "reserve", "--dataset", "d", "--block", "b", *mech, "--steps", 2**31),
        "--steps",
    )
    one_line(cli("ledger", "commit", LONG), "RESERVATION")
    one_line(
        cli("ledger", "retire", "--dataset", LONG, "--block", "b", "--reason", "x"), "--dataset"
    )
    assert entries(ledger_url) == 1


def test_the_ledger_refuses_what_it_cannot_store_whoever_calls_it(dpgov_home, ledger_url):
    """The ledger's own write methods (the Python API the pipelines use) apply the rules
    before they write: add_block, retire_block and reserve."""
    from dpgov.accounting import DpSgdMechanism
    from dpgov.errors import UsageError
    from dpgov.ledger import Ledger
    from dpgov.policy import load_policy

    ledger = Ledger.open(ledger_url)
    try:
        ledger.add_block(dataset="d", block="b", patients=100)
        with pytest.raises(UsageError, match=r"^block 'b\\u200b': holds an invisible"):
            ledger.add_block(dataset="d", block="b\u200b", patients=100)
        with pytest.raises(UsageError, match=r"^patients: 2147483648 is over 2147483647"):
            ledger.add_block(dataset="d", block="c", patients=2**31)
        with pytest.raises(UsageError, match=r"^actor 'ROOT': changes under case folding"):
            ledger.add_block(dataset="d", block="c", patients=1, actor="ROOT")
        with pytest.raises(UsageError, match=r"^dataset 'd\\u202e'"):
            ledger.retire_block(dataset="d\u202e", block="b", reason="x")
        m = DpSgdMechanism(noise_multiplier=5.0, sample_rate=0.01, steps=10)
        budget = load_policy().policy.budget
        with pytest.raises(UsageError, match=r"^block 'b\\u200b'"):
            ledger.reserve(dataset="d", blocks=["b", "b\u200b"], mechanism=m, budget=budget)
        with pytest.raises(UsageError, match=r"^run_id 'xxx.*…: 300 characters"):
            ledger.reserve(dataset="d", blocks=["b"], mechanism=m, budget=budget, run_id=LONG)
        assert len(ledger.entries()) == 1
    finally:
        ledger.close()


# --------------------------------------------------------------------------- URLs and secrets


def test_a_non_numeric_port_in_the_ledger_url_names_the_variable(cli, monkeypatch):
    monkeypatch.setenv("DPGOV_LEDGER_URL", f"postgresql+psycopg://u:{SECRET}@h:abc/db")
    for args in (("ledger", "show"), ("budget",), ("audit",)):
        line = one_line(cli(*args), "DPGOV_LEDGER_URL: port 'abc' is not a number")
        assert SECRET not in line
    monkeypatch.setenv("DPGOV_LEDGER_URL", "postgresql+psycopg://u@h:99999/db")
    one_line(cli("ledger", "show"), "DPGOV_LEDGER_URL: port 99999 is outside 1-65535")


def test_a_non_numeric_port_in_the_tracking_uri_names_the_variable(cli, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:{SECRET}@127.0.0.1:x9/")
    line = one_line(cli("gate", "m", "1"), "MLFLOW_TRACKING_URI: port 'x9' is not a number")
    assert SECRET not in line


def secret_tracking_uri() -> str:
    return f"http://user:{SECRET}@127.0.0.1:9/?token={TOKEN}"  # nothing answers on port 9


FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def test_tracking_credentials_never_reach_stderr(cli, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", secret_tracking_uri())
    for key, value in FAST.items():
        monkeypatch.setenv(key, value)
    line = one_line(cli("gate", "m", "1"), "tracking store http://user:***@127.0.0.1:9/?token=***")
    assert SECRET not in line and TOKEN not in line


def test_ledger_credentials_never_reach_stderr(cli, monkeypatch):
    monkeypatch.setenv(
        "DPGOV_LEDGER_URL", f"postgresql+psycopg://u:{SECRET}@127.0.0.1:9/db?password={TOKEN}"
    )
    line = one_line(cli("ledger", "show"), "ledger database")
    assert SECRET not in line and TOKEN not in line


def test_tracking_credentials_never_reach_the_audit_json_the_html_or_the_terminal(
    dpgov_home, tmp_path
):
    """As a real process, so that whatever MLflow, requests and dpgov log is seen too."""
    env = {
        "DPGOV_HOME": str(dpgov_home),
        "DPGOV_ACTOR": "tester",
        "MLFLOW_TRACKING_URI": secret_tracking_uri(),
        "DPGOV_LEDGER_URL": None,
        **FAST,
    }
    add = dpgov_process(
        "ledger", "add-block", "--dataset", "d", "--block", "b", "--patients", 5, env=env
    )
    assert add.code == 0, add.err
    html = tmp_path / "audit.html"
    r = dpgov_process("audit", "--json", "--html", html, env=env, timeout=120)
    assert r.code == 1, r.err  # the tracking store is unavailable: a finding
    report = json.loads(r.out)
    assert report["tracking"]["uri"] == "http://user:***@127.0.0.1:9/?token=***"
    page = html.read_text()
    assert "http://user:***@127.0.0.1:9/?token=***" in page
    for text in (r.out, r.err, page, add.out, add.err):
        assert SECRET not in text and TOKEN not in text
    terminal = dpgov_process("audit", env=env, timeout=120)
    assert SECRET not in terminal.out + terminal.err and TOKEN not in terminal.out + terminal.err


def test_log_records_are_redacted_once_dpgov_runs(cli, caplog):
    cli("--help")
    with caplog.at_level(logging.WARNING):
        logging.getLogger("mlflow.some.module").warning("retrying %s", secret_tracking_uri())
    assert caplog.records and SECRET not in caplog.text and TOKEN not in caplog.text
    assert "http://user:***@127.0.0.1:9/?token=***" in caplog.text


def test_the_anchor_names_its_ledger_without_credentials():
    from dpgov.tracking.anchor import ledger_name

    name = ledger_name(f"postgresql://u:{SECRET}@h/db?password={TOKEN}&sslmode=require")
    assert name == "postgresql://u:***@h/db?password=***&sslmode=require"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://user:pw@host/", "http://user:***@host/"),
        ("https://tok3n@host/x", "https://***@host/x"),
        ("postgresql://nobody@host/db", "postgresql://nobody@host/db"),  # a user alone stays
        ("postgresql://u:p@w@host/db", "postgresql://u:***@host/db"),  # up to the last @
        (
            "see s3://bucket/k?X-Amz-Signature=abc&X-Amz-Date=1",
            "see s3://bucket/k?X-Amz-Signature=***&X-Amz-Date=1",
        ),
        ("url: /?token=abc&name=m", "url: /?token=***&name=m"),
        ("x?api_key=1;access_token=2", "x?api_key=***;access_token=***"),
        ("Authorization: Bearer abcdefgh12345678", "Authorization: Bearer ***"),
        ("sqlite:////tmp/a@b/ledger.db", "sqlite:////tmp/a@b/ledger.db"),
        ("nothing here", "nothing here"),
    ],
)
def test_redaction(text, shown):
    from dpgov.redaction import redact

    assert redact(text) == shown
    assert redact(shown) == shown  # idempotent
