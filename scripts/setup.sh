#!/usr/bin/env bash
# Set up dpgov in ./.venv: torch, then dpgov with its extras, all from the package index (or
# indexes) pip is configured with: pip.conf, PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS.
# No index host is named here. Idempotent and quick when already done.
# Usage: scripts/setup.sh [extras, default dev,demo,postgres,imaging]
#
# Which torch build comes is pip's choice from what those indexes offer: PyPI's torch for
# Linux x86_64 is the CUDA build (several GB with its nvidia-* libraries). For a CPU-only build
# point pip at an index or folder that holds one before running this, e.g.
#   PIP_EXTRA_INDEX_URL=<CPU wheel index> ./scripts/setup.sh      (or the same in pip.conf)
# (README.md, "Installing"). A torch already in .venv is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-dev,demo,postgres,imaging}"
PY="${PYTHON:-python3}"
TORCH="${DPGOV_TORCH:-torch==2.13.0}"   # the build the suite last passed with; any >= 2.6 works

[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
# pip on some machines warns about every missing local index folder; keep real errors only.
pip() { "$VPY" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
pip install -q --upgrade pip >/dev/null

if "$VPY" -c "import torch" 2>/dev/null; then
  echo "torch $("$VPY" -c 'import torch; print(torch.__version__)') already installed"
else
  pip install -q "$TORCH"
  "$VPY" -W ignore -c 'import torch; print(f"torch {torch.__version__} installed (CUDA:",
    torch.version.cuda or "none, a CPU build)")' 2>/dev/null
fi

# Everything else, pinned to the versions the test suite last passed with.
pip install -q -c requirements/constraints.txt -e ".[${EXTRAS}]"
# Flower (federated runs): its own pins conflict with the stack's newer typer/rich/fastapi, so
# it comes without its dependency resolution, with what its simulation imports
# (requirements/federated.txt explains).
pip install -q --no-deps -r requirements/federated.txt
echo "dpgov installed in .venv ($("$VPY" -m pip --version | cut -d' ' -f1-2))"
