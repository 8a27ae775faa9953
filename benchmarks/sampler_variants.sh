#!/usr/bin/env bash
# The sampler's attention and XLA variants, each measured and checked in one device call
# (benchmarks/sampler.py --check: the ragged kernel against a float32 softmax, the returned
# log-probs against a full forward pass), at two shapes:
#   0.5b        issue 2's: Qwen2.5-0.5B, batch 64 and 256, prompt 128, 512 new tokens, bf16
#   rollout     a training rollout of countdown_gpu.flags: medium preset, 512 rows, prompt 36,
#               1024 new tokens forced (768 until 2026-12-02), bf16
# Variants: the whole-cache attention (the default), ragged attention, and ragged attention with
# the whole decode loop in CUDA graphs or with cuBLASLt GEMMs (process-wide XLA_FLAGS; the
# sampler's own options, r1jax.sampling.COMPILER_OPTIONS, apply on top). A variant that fails
# (an XLA flag this version does not know, a failed check) is reported and the rest go on.
#
#   bash benchmarks/sampler_variants.sh           # GPU, ~4 minutes (not run on one yet)
#   bash benchmarks/sampler_variants.sh --small   # CPU check of the plumbing (~1 minute)
#
# With OUT set (the device tool's result folder), everything printed also goes to
# $OUT/sampler_variants.log, whole: a device call returns only the end of its output.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -n ${OUT:-} ]]; then
  mkdir -p "$OUT"
  exec > >(tee -a "$OUT/sampler_variants.log") 2>&1
fi
PY=${PYTHON:-python3}
if [[ "${1:-}" == "--small" ]]; then
  SHAPES=("small|--small")
else
  SHAPES=("0.5b|--preset qwen2.5-0.5b --batch 64,256 --prompt_len 128 --new_tokens 512 --dtype bfloat16 --repeats 2"
          "rollout|--preset medium --batch 512 --prompt_len 36 --new_tokens 1024 --dtype bfloat16 --repeats 2")
fi
GRAPHS="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CONDITIONAL,WHILE"
VARIANTS=("whole cache|xla|"
          "ragged|ragged|"
          "ragged, decode loop in CUDA graphs|ragged|$GRAPHS"
          "ragged, cuBLASLt|ragged|--xla_gpu_enable_cublaslt=true")
status=0
for shape in "${SHAPES[@]}"; do
  name=${shape%%|*}
  read -r -a args <<< "${shape#*|}"
  for variant in "${VARIANTS[@]}"; do
    IFS='|' read -r label attention flags <<< "$variant"
    echo "== $name: $label (XLA_FLAGS='$flags')"
    XLA_FLAGS="$flags" "$PY" benchmarks/sampler.py "${args[@]}" --attention "$attention" --check
    rc=$?
    if (( rc != 0 )); then echo "== $name: $label FAILED (exit $rc)"; status=1; fi
  done
done
exit $status
