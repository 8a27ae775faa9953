#!/usr/bin/env bash
# The cost of the XLA flags that keep concurrent GPU runs correct, on the miniature's own shapes:
# one GRPO update of the medium (~25M) model on countdown_gpu.flags' batch (512 rows of 36 + 384
# tokens, remat full) and the sampler on the same rows, each alone on the GPU, under
#   (default)                      XLA autotunes every GEMM fusion
#   --xla_gpu_autotune_level=0     what experiments/sweep.py sets for --parallel > 1
#   ... --xla_gpu_enable_triton_gemm=false   the same, with GEMMs left to cuBLAS's heuristics
# Why: with autotuning off, an H200 shared by four runs took ~7 s per update where an H100 shared
# by four runs with autotuning took ~1.3 s (docs/r1_zero.md, 2026-12-01); this measures the
# flags alone, one process at a time.
#
#   bash tools/gpu_jobs/xla_flags.sh           # GPU (not run on one yet)
#   bash tools/gpu_jobs/xla_flags.sh --small   # CPU check of the plumbing, tiny shapes (~1 min)
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
if [[ "${1:-}" == "--small" ]]; then
  TRAIN=(--small); SAMPLE=(--small)
else
  TRAIN=(--preset medium --seq_len 420 --prompt_len 36 --batch 512 --remat full --repeats 5)
  SAMPLE=(--preset medium --batch 512 --prompt_len 36 --new_tokens 384 --repeats 3)
fi
for flags in "" "--xla_gpu_autotune_level=0" \
             "--xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false"; do
  echo "== XLA_FLAGS='$flags'"
  XLA_FLAGS="$flags" "$PY" benchmarks/train_step.py "${TRAIN[@]}" || echo "train_step failed"
  XLA_FLAGS="$flags" "$PY" benchmarks/sampler.py "${SAMPLE[@]}" || echo "sampler failed"
done
