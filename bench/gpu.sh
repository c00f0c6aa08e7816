#!/usr/bin/env bash
# Every GPU benchmark and the GPU tests in one call, ending with one table: views and loader
# (pipeline.py), end-to-end training vs the pure step for the CNN and Pix2Pix with each
# augmentation path (throughput.py), Pix2Pix step speed (pix2pix.py). Installs nothing: reports
# which libraries are importable and runs what they allow (the views benchmark needs torch only).
# Results: bench/results/*-gpu.json (override with OUT=folder).
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
if "$PY" -c "import torchio, monai, nibabel, pytorch_lightning, pandas, hydra, SimpleITK" 2>/dev/null; then
    "$PY" bench/pipeline.py --json "$OUT/pipeline-gpu.json" || status=1
    "$PY" bench/throughput.py --json "$OUT/throughput-gpu.json" || status=1
    "$PY" bench/pix2pix.py --json "$OUT/pix2pix-gpu.json" || status=1
else
    echo "data libraries missing: views benchmark only"
    "$PY" bench/pipeline.py --only views --json "$OUT/pipeline-gpu.json" || status=1
fi
if "$PY" -c "import pytest, numpy" 2>/dev/null; then
    "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_views.py || status=1
else
    echo "pytest missing: GPU tests skipped"
fi
"$PY" bench/summary.py "$OUT/pipeline-gpu.json" "$OUT/throughput-gpu.json" "$OUT/pix2pix-gpu.json"
exit $status
