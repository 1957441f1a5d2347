#!/usr/bin/env bash
# Everything a lent GPU machine is for, in one call (the device tool runs it in the repo root and
# brings $OUT back):
#
#   here:   make gpu-pack                      # torchfcn==1.9.7 (the peer) copied into .gpu/site
#   device: bash scripts/gpu_session.sh        # carry [".gpu"]; extra options go to bench_gpu.py
#   here:   cp <files_at>/cuda.json docs/bench/ && .venv/bin/python -m scripts.write_performance_md \
#             && .venv/bin/python -m scripts.write_readme
#
# It records the machine, runs the CUDA tests (tests/test_cuda.py, skipped on machines without a
# GPU), then the GPU benchmark (scripts/bench_gpu.py → $OUT/cuda.json). Nothing is installed: the
# package runs from the tree (PYTHONPATH), so the GPU machine's own torch is used.
set -uo pipefail
OUT=${OUT:-runs/gpu-session}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .gpu/site ]; then
    export PYTHONPATH="$PYTHONPATH:$PWD/.gpu/site"
else
    echo "gpu_session: no .gpu/site (run 'make gpu-pack' and carry .gpu): the torchfcn peer will be an error row" >&2
fi
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/machine.txt"
if python -c "import pytest" 2>/dev/null; then
    python -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -40 | tee "$OUT/test_cuda.txt"
else
    echo "gpu_session: pytest not installed here: CUDA tests not run" | tee "$OUT/test_cuda.txt"
fi
python -m scripts.bench_gpu --out "$OUT/cuda.json" --no-docs "$@" 2>&1 | tee "$OUT/bench.log"
exit "${PIPESTATUS[0]}"
