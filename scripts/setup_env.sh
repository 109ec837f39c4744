#!/usr/bin/env bash
# Create .venv beside the repository and install medclip into it (idempotent).
#   bash scripts/setup_env.sh          # the kit with everything a user runs (extra "all": demo, TensorBoard, plots, volumes,
#                                      # LoRA (peft), DINO image pretraining (lightly))
#   bash scripts/setup_env.sh test     # that + test extras (pytest, pydicom-data, playwright, ruff, mypy, ...)
#   bash scripts/setup_env.sh bench    # that + peers for benchmarks (open_clip)
# The bare library (`pip install medclip-kit`) needs none of the extras; see pyproject.toml.
# torch/torchvision are pinned to the builds that lie on this machine's disk (a bare `torch` could pull a
# multi-GB CUDA build from PyPI); set MEDCLIP_TORCH_SPEC to choose others, e.g. "torch==2.9.1 torchvision==0.24.1".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=${1:-all}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
# shellcheck disable=SC2086
python -m pip install -q ${MEDCLIP_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
[ "$extras" = all ] || extras="all,$extras"
python -m pip install -q -e ".[$extras]"
python -c "import medclip, torch; print(f'medclip {medclip.__version__} ready (torch {torch.__version__}) in .venv')"
