#!/usr/bin/env bash
# One run on one CUDA GPU (H100/H200), at most 8 minutes, that yields every figure:
#   1. the sampler table (benchmarks/sampler.py: tokens/s, x the reference loop, % of roofline,
#      reserved memory after the call) at LLaDA-8B shapes, batch 1 / gen 256 and batch 32 /
#      gen 128, each in its own process under its own time limit;
#   1b. the LLaDA2 sampler table (--family llada2: block_generate against the published loop)
#      at LLaDA2-mini shapes, batch 1 / gen 256 at threshold 0.95 and schedule only, and batch
#      32 / gen 128 at threshold 0.95 with the published loop timed on 4 of the 32 rows (it
#      decodes one row at a time; its time is scaled to the batch), each under its own limit;
#   2. MOSA end to end through mosa.align.train (benchmarks/align_end_to_end.py, 208 prompts:
#      prompts/s, MFU), then at LLaDA2-mini shapes (--family llada2, 64 prompts, block-causal
#      canvas; MFU counted on the active parameters);
#   3. the C++ extension's build (in the background while the benchmarks run; a failure is not
#      fatal: the Triton and torch paths do not need it), then the kernel tests with compiled
#      Triton and the CUDA model, sampler and objective tests, in what is left of the 8 minutes.
# Benchmarks come first so that a slow test run (a cold Triton cache compiles every kernel it
# tunes) cannot cost the figures. Writes benchmarks/results/gpu-check-<gpu>-<date>.md and prints,
# last: the tables, then the tests' pass/fail lines.
#
# --smoke: the same script end to end on the CPU at tiny shapes (CI): each benchmark with its
# --smoke, what needs CUDA skipped with the reason printed, the report in a temporary folder.
#
# The limits below (seconds; each overridable from the environment) are estimates that have
# not yet been checked on a GPU with an empty Triton cache: the first run on a card says.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

smoke=0
case "${1:-}" in
  "") ;;
  --smoke) smoke=1 ;;
  *)
    echo "usage: bash benchmarks/gpu_check.sh [--smoke]" >&2
    exit 2
    ;;
esac

total_s=${GPU_CHECK_SECONDS:-480}
# The LLaDA sampler's limits were 110 and 160 s before the LLaDA2 parts came; they were cut to
# make room for those within the 8 minutes, and the LLaDA2 batch-1 and MOSA ones (90, 80) for
# MOSA at LLaDA2-mini shapes.
sampler_batch1_s=${GPU_CHECK_SAMPLER_BATCH1_S:-70}
sampler_batch32_s=${GPU_CHECK_SAMPLER_BATCH32_S:-100}
llada2_batch1_s=${GPU_CHECK_LLADA2_BATCH1_S:-75}
llada2_batch32_s=${GPU_CHECK_LLADA2_BATCH32_S:-75}
align_s=${GPU_CHECK_ALIGN_S:-70}
align_llada2_s=${GPU_CHECK_ALIGN_LLADA2_S:-60}
build_s=${GPU_CHECK_BUILD_S:-300}  # runs beside the benchmarks: only its wait after them counts
margin_s=15                        # writing the report, pytest's start-up

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
if ((smoke)); then
  gpu="cpu-smoke"
  results=$(mktemp -d)  # never into the repository
  device=(--device cpu)
else
  unset TRITON_INTERPRET
  if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh needs a CUDA GPU (torch.cuda.is_available() is False); --smoke runs it on the CPU" >&2
    exit 1
  fi
  gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))")
  results=benchmarks/results
  device=()
fi
mkdir -p "$results"
report="$results/gpu-check-$gpu-$(date +%F).md"
status=0

run_part() {  # run_part NAME SECONDS COMMAND...: COMMAND under a time limit, output in $logs/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit $limit s): $*"
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$logs/$name.log"
  local code=${PIPESTATUS[0]}
  if ((code == 124 || code == 137)); then
    echo "$name: timed out after $limit s" | tee -a "$logs/$name.log"
  elif ((code != 0)); then
    echo "$name: exited with status $code" | tee -a "$logs/$name.log"
  fi
  ((code == 0)) || status=1
}

table() {  # table NAME HEADING: the table NAME printed (HEADING to its footnote), or why none
  local found
  found=$(sed -n "/^$2/,/^\(smoke run\|written to\)/p" "$logs/$1.log" | grep -v '^\(smoke run\|written to\)')
  echo "${found:-$1: no table ($(tail -n 1 "$logs/$1.log"))}"
}

# The extension builds into build/ while the GPU runs the benchmarks, and is moved into place
# (a rename) only after them, so no benchmark imports a half-written library; 4 jobs leave
# most of the cores to the benchmarks, whose eager rows are bound by the host launching kernels.
build_pid=
if ((smoke)); then
  build_line="C++ extension: not rebuilt (smoke run: the tree's own build is used)"
else
  build_dir=build/gpu-check-lib
  rm -rf "$build_dir"
  timeout -k 10 "$build_s" python3 setup.py -q build_ext -j 4 --build-lib "$build_dir" >"$logs/build.log" 2>&1 &
  build_pid=$!
fi

if ((smoke)); then
  echo "smoke run: one tiny sampler case per family stands for batch 1 / gen 256 and batch 32 / gen 128"
  run_part sampler "$sampler_batch32_s" python3 -m benchmarks.sampler --smoke "${device[@]}"
  run_part llada2-sampler "$llada2_batch32_s" python3 -m benchmarks.sampler --family llada2 --smoke "${device[@]}"
  sampler_cases=(sampler)
  llada2_cases=(llada2-sampler)
else
  run_part sampler-batch1 "$sampler_batch1_s" python3 -m benchmarks.sampler --batch 1 --gen-length 256
  run_part sampler-batch32 "$sampler_batch32_s" python3 -m benchmarks.sampler --batch 32 --gen-length 128
  run_part llada2-batch1 "$llada2_batch1_s" python3 -m benchmarks.sampler --family llada2 --batch 1 --gen-length 256
  run_part llada2-batch32 "$llada2_batch32_s" python3 -m benchmarks.sampler --family llada2 --batch 32 --gen-length 128 --threshold 0.95 --loop-rows 4
  sampler_cases=(sampler-batch1 sampler-batch32)
  llada2_cases=(llada2-batch1 llada2-batch32)
fi
# issue 21's figure is projected from >= 200 measured prompts at LLaDA-8B shapes.
if ((smoke)); then
  run_part align-end-to-end "$align_s" python3 -m benchmarks.align_end_to_end --smoke "${device[@]}"
  run_part align-llada2 "$align_llada2_s" python3 -m benchmarks.align_end_to_end --family llada2 --smoke "${device[@]}"
else
  run_part align-end-to-end "$align_s" python3 -m benchmarks.align_end_to_end --prompts 208
  run_part align-llada2 "$align_llada2_s" python3 -m benchmarks.align_end_to_end --family llada2 --prompts 64
fi

if [[ -n "$build_pid" ]]; then
  if wait "$build_pid" && mv -f "$build_dir"/mosa_kernels/_C*.so mosa_kernels/; then
    build_line="C++ extension: built"
  else
    build_line="C++ extension: build failed or timed out after $build_s s (not fatal: the Triton and torch paths ran; $(tail -n 1 "$logs/build.log"))"
  fi
  echo "$build_line"
fi

# Autotuning compiles every config of every kernel variant the tests launch; with pytest-xdist
# four workers share that compile time.
parallel=()
((smoke)) || { python3 -c "import xdist" 2>/dev/null && parallel=(-n 4); }
run_tests() {  # run_tests NAME SECONDS PATH...: pytest under a time limit; sets tests_line
  local name=$1 limit=$2
  shift 2
  if ((limit < 20)); then
    tests_line="not run: the benchmarks spent the time budget"
    return
  fi
  run_part "$name" "$limit" python3 -m pytest "$@" "${parallel[@]}" -q -p no:cacheprovider
  tests_line=$(grep -E "[0-9]+ (passed|failed|skipped|errors?)" "$logs/$name.log" | tail -n 1)
  tests_line=${tests_line:-$(tail -n 1 "$logs/$name.log")}
}

left=$((total_s - SECONDS - margin_s))
model_paths=(tests/models/test_model_cuda.py tests/sampling/test_generate_cuda.py)
if ((smoke)); then
  kernel_tests="skipped: tests/kernels need CUDA to run compiled Triton (smoke run)"
  echo "$kernel_tests"
  # On the CPU the CUDA files skip: this checks that they collect and that the lines come back.
  run_tests cuda-tests "$left" "${model_paths[@]}"
  model_tests="$tests_line (no CUDA; tests/align/test_objective.py left to CI's own run)"
else
  run_tests kernel-tests $((left * 3 / 5)) tests/kernels
  kernel_tests=$tests_line
  model_paths+=(tests/align/test_objective.py)
  run_tests cuda-tests $((total_s - SECONDS - margin_s)) "${model_paths[@]}"
  model_tests=$tests_line
fi

{
  echo "# GPU check: $gpu, $(date +%F)"
  echo
  echo '```'
  if ((smoke)); then echo "smoke run on the CPU: tiny shapes, the figures mean nothing"; else
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  fi
  echo '```'
  for case in "${sampler_cases[@]}"; do
    echo
    table "$case" "## Sampler"
  done
  for case in "${llada2_cases[@]}"; do
    echo
    table "$case" "## LLaDA2 sampler"
  done
  echo
  table align-end-to-end "## MOSA end to end"
  echo
  table align-llada2 "## MOSA end to end"
  echo
  echo "$build_line"
  echo
  echo "Kernel tests (tests/kernels, compiled Triton): ${kernel_tests:-no summary line}"
  echo
  echo "Model, sampler and objective tests (${model_paths[*]}): ${model_tests:-no summary line}"
} >"$report"

echo
echo "== GPU check on $gpu ($SECONDS s): $report"
tail -n +6 "$report"
((smoke)) && rm -rf "$results"
exit $status
