#!/usr/bin/env bash
# Run the test suite (network sockets blocked, notebooks executed, dashboards opened in Chromium):
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -m "not real"   # without the packaged pretrained models
# pytest's exit code is passed on; "no tests collected" (exit 5) counts as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. "${MECHKIT_VENV:-.venv}/bin/activate"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec python -m pytest "$@"
