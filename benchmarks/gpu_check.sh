#!/usr/bin/env bash
# The GPU check in one command (benchmarks/gpu_check.py says what it runs and prints).
#
#   bash benchmarks/gpu_check.sh prepare   # where there is network: the wheels the GPU machine
#                                          # lacks (trl, datasets and their pure-Python deps,
#                                          # trl 1.12.0 for the side-by-side, rlhfspec itself)
#                                          # into benchmarks/wheels/
#   bash benchmarks/gpu_check.sh           # on the GPU machine (torch, transformers, accelerate
#                                          # and peft installed, no network): install from the
#                                          # wheels, run the check, then TRL 1.12's PPOTrainer
#                                          # side by side (benchmarks/bench_ppo.py)
#   bash benchmarks/gpu_check.sh dry-run   # the same on the CPU at a tiny size (no installs)
#
# Budget on one H200: about 6 minutes for gpu_check.py (7 with the FSDP2 rows), 3 for the
# side-by-side.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=benchmarks/wheels
PY=${PYTHON:-python3}
TRL_OURS=${TRL_OURS:-1.16.0}
DATASETS=${DATASETS:-5.2.0}

case "${1:-run}" in
  prepare)
    mkdir -p "$WHEELS"
    "$PY" -m pip download -q -d "$WHEELS" "datasets==$DATASETS"
    "$PY" -m pip download -q --no-deps -d "$WHEELS" "trl==$TRL_OURS" "trl==1.12.0"
    "$PY" -m pip wheel -q --no-deps -w "$WHEELS" .
    ls "$WHEELS"
    ;;
  dry-run)
    "$PY" benchmarks/gpu_check.py --dry-run
    ;;
  run)
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" "datasets==$DATASETS" \
      "trl==$TRL_OURS" rlhfspec
    timeout 480 "$PY" benchmarks/gpu_check.py --json gpu_check.json
    venv=/tmp/rlhfspec-trl112
    [ -x "$venv/bin/python" ] || "$PY" -m venv --system-site-packages "$venv"
    "$venv/bin/python" -m pip install -q --no-index --find-links "$WHEELS" --no-deps trl==1.12.0
    timeout 200 "$PY" benchmarks/bench_ppo.py --venv "$venv" --episodes 256 --rollout 64 \
      --new-tokens 64 --repeats 1
    ;;
  *)
    echo "usage: $0 [prepare|run|dry-run]" >&2
    exit 2
    ;;
esac
