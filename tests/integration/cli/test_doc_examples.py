"""The console examples in README.md and docs/ (fenced ``bash`` blocks) against the real CLI.

Every ``dpgov`` line names commands and options that exist (hidden ones included: a refused
``--policy`` is still an option). The short examples that need no server are executed as
written, in doc order, in a fresh project folder, and their exit codes and key figures are
compared with what the docs say. The rest are skipped for a stated reason (``SKIPPED``):
installs, servers, long runs, and lines whose placeholders (``ID``, ``[--json]``, ``<tag>``)
are not runnable as written.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

from dpgov.cli import app

REPO = Path(__file__).resolve().parents[3]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent

# what is not executed here, by the command's first word, and why
SKIPPED = {
    "./scripts/setup.sh": "installs the environment (CI runs it first)",
    "./scripts/test.sh": "the test suite itself",
    "scripts/services.sh": "starts PostgreSQL, MLflow and Prefect servers (reliability tests)",
    "eval": "points the shell at the services above",
    "pip": "changes pip's configuration",
    "prefect": "starts a Prefect server or worker (tests/integration/orchestration)",
    "mlflow": "starts an MLflow server (tests/integration/reliability/test_services.py)",
    "psql": "creates databases on a PostgreSQL server",
    "export": "environment for the servers above",
    ".venv/bin/pytest": "the test suite itself",
    "dvc": "dvc repro runs the governed run (1.5 min): tests/integration/data/test_dvc_pipeline.py",
}
# dpgov subcommands not executed, and why
SKIPPED_DPGOV = {
    "demo": "the whole pipeline (minutes): tests/integration/training/test_training_cli.py",
    "run": "a governed run (1-2 min): tests/integration/data/test_own_data_route.py",
    "schedule": "serves deployments until stopped: tests/integration/orchestration",
    "flows": "needs a Prefect server and a candidate: tests/integration/orchestration",
    "sweep": "several governed runs or 30 s of planning: tests/integration/sweep",
}
PLACEHOLDER = re.compile(r"\[|\]|<|>|\.\.\.|\|| (ID|D|B|F|N|NAME|MODEL|VERSION|FLOW_RUN_ID)\b")


def bash_lines() -> list[tuple[str, str]]:
    """(doc file, command line) for every command line of every bash block."""
    out = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            joined = block.replace("\\\n", " ")
            for line in joined.splitlines():
                code = re.split(r"\s+#", " " + line)[0].strip()
                if code and not code.startswith("#"):
                    out.append((doc.name, code))
    return out


def segments(line: str) -> list[list[str]]:
    """The commands of a line (split at ``&&``), each without leading VAR=value words."""
    out = []
    for part in re.sub(r"<[^>]*>", "X", line).split("&&"):  # <placeholder>: one word
        words = shlex.split(part)
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            words.pop(0)
        if words:
            out.append(words)
    return out


def resolve(words: list[str]) -> tuple[Any, list[str], list[str]]:
    """The click command a ``dpgov ...`` line names, its path and the remaining words."""
    cmd: Any = typer.main.get_command(app)
    path: list[str] = []
    rest = words[1:]
    while hasattr(cmd, "commands") and rest and not rest[0].startswith("-"):  # a group
        sub = cmd.commands.get(rest[0])
        assert sub is not None, f"dpgov {' '.join(path)}: no command {rest[0]!r}"
        cmd, path, rest = sub, [*path, rest[0]], rest[1:]
    return cmd, path, rest


def test_every_dpgov_example_names_existing_commands_and_options() -> None:
    checked = 0
    for doc, line in bash_lines():
        for words in segments(line):
            if Path(words[0]).name != "dpgov":
                assert any(words[0].startswith(k) for k in SKIPPED), f"{doc}: {line}"
                continue
            cmd, path, rest = resolve(words)
            assert not hasattr(cmd, "commands"), f"{doc}: `{line}`: names no command"
            known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
            for word in rest:
                option = word.strip("[]").split("=", 1)[0]
                if option.startswith("-") and not re.match(r"^-\d", option):
                    assert option in known, f"{doc}: `{line}`: dpgov {' '.join(path)} {option}"
            checked += 1
    assert checked >= 40  # the docs hold about 50 dpgov lines


def runnable(line: str) -> bool:
    words = shlex.split(line)
    return (
        Path(words[0]).name == "dpgov"
        and words[1] not in SKIPPED_DPGOV
        and not PLACEHOLDER.search(line)
        and "DPGOV_FAULT" not in line
    )


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    work = tmp_path / "project"
    work.mkdir()
    for folder in ("contracts", "policies"):
        shutil.copytree(REPO / folder, work / folder)
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DPGOV_", "MLFLOW_"))}
    env.update(
        DPGOV_HOME=str(tmp_path / "home"),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        DVC_NO_ANALYTICS="1",
        GX_ANALYTICS_ENABLED="false",
        COLUMNS="120",  # a terminal's width (piped output is 80 columns wide otherwise)
    )
    return work, env


def test_short_examples_run_as_written(project: tuple[Path, dict[str, str]]) -> None:
    """data.md's prepare and validate, budget, scaling.md's inspection line and training.md's
    policy set, in doc order; exit 0, and the figures data.md states."""
    work, env = project
    wanted = {
        ("data.md", "dpgov data prepare"),
        ("data.md", "dpgov data validate"),
        ("data.md", "dpgov budget"),
        ("scaling.md", "dpgov ledger show --last 3 && dpgov budget && dpgov audit --stale-hours 0"),
        ("training.md", 'dpgov policy set policies/strict.yaml --reason "release candidates"'),
    }
    lines = [(doc, line) for doc, line in bash_lines() if (doc, line) in wanted]
    assert {(d, x) for d, x in lines} == wanted, "an example changed: update this test"
    assert all(runnable(line) for _, line in lines)
    outputs = {}
    for doc, line in lines:
        proc = subprocess.run(
            line, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"{doc}: `{line}` exited {proc.returncode}:\n{proc.stderr}"
        outputs[line] = proc.stdout
    prepared = outputs["dpgov data prepare"]
    counts = re.search(r"train (\d+) records, test (\d+)", prepared)
    assert counts and int(counts[1]) + int(counts[2]) == 7679  # data.md: 7,679 remain
    blocks = dict(re.findall(r"(\d{4}(?:-\d{4})?) \((\d+)\)", prepared))
    assert list(blocks) == ["1995", "1996", "1997", "1998-2003"]  # data.md: the blocks
    assert "validation of flchain passed" in outputs["dpgov data validate"]
    for patients in blocks.values():  # budget shows each block's patients, none charged yet
        assert f" {patients} " in outputs["dpgov budget"]
