#!/usr/bin/env bash
# The pipeline benchmarks and GPU tests in one call on a machine with a GPU. Installs nothing:
# reports which libraries are importable and runs what they allow (the views benchmark needs
# torch only). Results: bench/results/pipeline-gpu.json (override with OUT=folder).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${OUT:-bench/results}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"

"$PY" - <<'PYTHON'
import importlib.util
for name in ("torch", "torchio", "monai", "hydra", "nibabel", "SimpleITK", "pytorch_lightning", "pandas", "pytest"):
    print(f"{name:18s} {'importable' if importlib.util.find_spec(name) else 'MISSING'}")
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PYTHON

status=0
if "$PY" -c "import torchio, nibabel, pytorch_lightning, pandas, omegaconf, SimpleITK" 2>/dev/null; then
    "$PY" bench/pipeline.py --json "$OUT/pipeline-gpu.json" || status=1
else
    echo "data libraries missing: views benchmark only"
    "$PY" bench/pipeline.py --only views --json "$OUT/pipeline-gpu.json" || status=1
fi
if "$PY" -c "import pytest, numpy" 2>/dev/null; then
    "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_views.py || status=1
else
    echo "pytest missing: GPU tests skipped"
fi
exit $status
