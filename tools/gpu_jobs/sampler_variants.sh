#!/usr/bin/env bash
# The sampler's attention and XLA variants, each measured and checked in one device call
# (benchmarks/sampler.py --check: the ragged kernel against a float32 softmax, the returned
# log-probs against a full forward pass), at two shapes:
#   0.5b        issue 2's: Qwen2.5-0.5B, batch 64 and 256, prompt 128, 512 new tokens, bf16
#   rollout     a training rollout of countdown_gpu.flags: medium preset, 512 rows, prompt 36,
#               1024 new tokens forced (768 until 2026-12-02), bf16
# Variants: the whole-cache attention (the default), ragged attention, and ragged attention with
# the whole decode loop in CUDA graphs, with cuBLASLt GEMMs (process-wide XLA_FLAGS; the
# sampler's own options, r1jax.sampling.COMPILER_OPTIONS, apply on top), or with XLA's default
# options instead of the sampler's (R1JAX_SAMPLER_XLA_OPTIONS='': autotuned Triton GEMMs, which
# once sampled corrupt text in training processes; here --check compares its log-probs with a
# full forward pass). At the rollout shape only the first three. A variant that fails (an XLA
# flag this version does not know, a failed check) is reported and the rest go on.
#
#   bash tools/gpu_jobs/sampler_variants.sh           # GPU, ~5 minutes (in part run on one, 2026-12-02)
#   bash tools/gpu_jobs/sampler_variants.sh --small   # CPU check of the plumbing (~1 minute)
#
# With OUT set (the device tool's result folder), everything printed also goes to
# $OUT/sampler_variants.log, whole: a device call returns only the end of its output.
set -uo pipefail
cd "$(dirname "$0")/../.."
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
# label | attention | XLA_FLAGS | R1JAX_SAMPLER_XLA_OPTIONS ("default": the sampler's own)
VARIANTS=("whole cache|xla||default"
          "ragged|ragged||default"
          "ragged, decode loop in CUDA graphs|ragged|$GRAPHS|default"
          "ragged, cuBLASLt|ragged|--xla_gpu_enable_cublaslt=true|default"
          "ragged, XLA's default options (autotuned GEMMs)|ragged||")
status=0
for shape in "${SHAPES[@]}"; do
  name=${shape%%|*}
  read -r -a args <<< "${shape#*|}"
  variants=("${VARIANTS[@]}")
  [[ $name == rollout ]] && variants=("${VARIANTS[@]:0:3}")
  for variant in "${variants[@]}"; do
    IFS='|' read -r label attention flags options <<< "$variant"
    env_opts=(-u R1JAX_SAMPLER_XLA_OPTIONS)
    [[ $options != default ]] && env_opts=(R1JAX_SAMPLER_XLA_OPTIONS="$options")
    echo "== $name: $label (XLA_FLAGS='$flags', sampler options '$options')"
    env "${env_opts[@]}" XLA_FLAGS="$flags" "$PY" benchmarks/sampler.py "${args[@]}" \
      --attention "$attention" --check
    rc=$?
    if (( rc != 0 )); then echo "== $name: $label FAILED (exit $rc)"; status=1; fi
  done
done
exit $status
