#!/usr/bin/env bash
# The GPU half of issue 4, in one go on a machine with CUDA (a few minutes on an H100/H200):
#   1. tests/collect/test_cuda.py: no device synchronisation per layer, CUDA memory recorded;
#   2. the fault suite's memory_pressure scripts (they need CUDA) through `modeldebug run`, one at a time
#      (each fills most of the free device memory);
#   3. benchmarks/overhead.py on CUDA: the models as sized for the CPU (launch-bound steps of a
#      few ms), then with their batches repeated until a plain step takes 20 ms.
# Usage: bash benchmarks/cuda_check.sh [OUTDIR]    (PYTHONPATH must reach src/ if not installed)
set -uo pipefail
out=${1:-.modeldebug/cuda-check}
mkdir -p "$out"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
"$py" -m pytest -q -p no:cacheprovider -s tests/collect/test_cuda.py 2>&1 | tee "$out/test_cuda.txt"
"$py" benchmarks/detection.py --jobs 1 --only memory_pressure 2>&1 | tee "$out/detection.txt"
for script in tests/faults/memory_pressure__*.py; do  # the reports themselves, for a closer look
    "$py" -m modeldebug run --store "$out/runs.db" -- "$py" "$script" >>"$out/memory_pressure_reports.txt" 2>&1
done
rm -f "$out"/runs.db*
"$py" benchmarks/overhead.py --device cuda --profile mlp --profile-steps 200 2>&1 | tee "$out/profile-cuda-mlp.txt"
configs=plain,md-default,md-every,tb-hist,anomaly
"$py" benchmarks/overhead.py --device cuda --parts steps --only $configs --rounds 10 \
    --json "$out/overhead-cuda-small.json" 2>&1 | tee "$out/overhead-cuda-small.txt"
"$py" benchmarks/overhead.py --device cuda --target-ms 20 --parts steps --only $configs --rounds 10 \
    --json "$out/overhead-cuda-20ms.json" 2>&1 | tee "$out/overhead-cuda-20ms.txt"
