#!/usr/bin/env bash
# Set up dpgov in ./.venv: the right torch build for this machine, then dpgov with its extras.
# Idempotent and quick when already done. Usage: scripts/setup.sh [extras, default dev,demo,postgres]
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-dev,demo,postgres}"
PY="${PYTHON:-python3}"

[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
# pip on some machines warns about every missing local index folder; keep real errors only.
pip() { "$VPY" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
pip install -q --upgrade pip >/dev/null

# torch: keep a build that is already installed; with an NVIDIA GPU take PyPI's CUDA build;
# otherwise the CPU build (a local wheel when pip's find-links has one, else PyTorch's CPU index)
# so a CPU machine never downloads several GB of CUDA libraries.
if "$VPY" -c "import torch" 2>/dev/null; then
  echo "torch $("$VPY" -c 'import torch; print(torch.__version__)') already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  pip install -q "torch>=2.6"
elif pip install -q --no-index --no-deps "torch==2.13.0" 2>/dev/null; then
  pip install -q "torch==2.13.0"   # its dependencies, from the index
else
  pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
    --extra-index-url https://pypi.org/simple
fi

# Everything else, pinned to the versions the test suite last passed with.
pip install -q -c requirements/constraints.txt -e ".[${EXTRAS}]"
echo "dpgov installed in .venv ($("$VPY" -m pip --version | cut -d' ' -f1-2))"
