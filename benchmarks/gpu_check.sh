#!/usr/bin/env bash
# On one CUDA GPU: build the extension, run the kernel tests with compiled Triton (bf16
# included), then the benchmark tables. Writes benchmarks/results/gpu-check-<gpu>-<date>.md
# and prints it last. Budget: under 8 minutes on one H100.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET

if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh needs a CUDA GPU (torch.cuda.is_available() is False)" >&2
  exit 1
fi
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))")
report="benchmarks/results/gpu-check-$gpu-$(date +%F).md"
mkdir -p benchmarks/results
log=$(mktemp)

python3 setup.py -q build_ext --inplace -j 8 >/dev/null || { echo "building the C++ extension failed" >&2; exit 1; }

status=0
echo "== kernel tests (compiled Triton)"
timeout 240 python3 -m pytest tests/kernels -q -p no:cacheprovider 2>&1 | tee "$log" || status=1
tests_line=$(grep -E "[0-9]+ (passed|failed)" "$log" | tail -n 1)

echo "== benchmarks"
benchmark_tables=""
for bench in kernels:60 attention:90 sampler:120; do
  name=${bench%%:*}
  table=$(timeout "${bench##*:}" python3 "benchmarks/$name.py" --quick 2>&1) || status=1
  echo "$table"
  benchmark_tables+="$table"$'\n\n'
done

{
  echo "# GPU check: $gpu, $(date +%F)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__)"
  echo '```'
  echo
  echo "Kernel tests (tests/kernels, compiled Triton): ${tests_line:-no summary line}"
  echo
  echo "$benchmark_tables"
} >"$report"
rm -f "$log"
echo
cat "$report"
exit $status
