#!/usr/bin/env bash
# Picks the XLA options the sampler compiles with on this machine (R1JAX_SAMPLER_XLA_OPTIONS):
# the fastest candidate whose evaluation of a real checkpoint matches that of the library's own
# setting ('default': GPU autotuning off and cuBLAS GEMMs, r1jax.sampling.COMPILER_OPTIONS).
#
#   bash tools/gpu_jobs/choose_sampler_options.sh CHECKPOINT CHOICE_FILE [CANDIDATE...]
#
# Each setting gets (1) soundness: benchmarks/concurrent_eval.py, one process, 64 problems x 16
# samples of CHECKPOINT; it is sound when its pass@1 and format rate are within TOL (0.05) of the
# default's; (2) speed: benchmarks/sampler.py at the shape of a training rollout of
# countdown_gpu.flags (medium preset, 512 rows, prompt 36, 512 new tokens forced; SPEED_ARGS).
# CHOICE_FILE gets the chosen options ("default" when no candidate is sound and faster); a
# CHOICE_FILE that exists already is kept (the choice is made once per machine). The table of
# every setting goes to stdout. Default candidates: cuBLAS with autotuning, and untuned Triton
# GEMMs (the library's default until 2026-12-02). XLA's defaults ('', autotuned Triton GEMMs)
# sampled corrupted text on an H200 on 2026-12-01, so they are tried only when named. The check
# is made on CHECKPOINT's evaluation; a run's own held-out evaluations keep checking it.
# A candidate may name the decode attention too: an item `attention=ragged` in its comma list
# (e.g. `attention=ragged`, or `attention=ragged,xla_gpu_autotune_level=0`) evaluates and times
# the sampler with R1JAX_SAMPLER_ATTENTION=ragged and the other items as its XLA options (none:
# the library's own options).
#
#   source tools/gpu_jobs/sampler_choice.sh && export_choice CHOICE_FILE   # exports what it names
set -euo pipefail
cd "$(dirname "$0")/../.."
CKPT=${1:?usage: choose_sampler_options.sh CHECKPOINT CHOICE_FILE [CANDIDATE...]}
CHOICE=${2:?usage: choose_sampler_options.sh CHECKPOINT CHOICE_FILE [CANDIDATE...]}
shift 2
CANDIDATES=("$@")
if (( ${#CANDIDATES[@]} == 0 )); then
  CANDIDATES=("xla_gpu_enable_triton_gemm=false" "xla_gpu_autotune_level=0")
fi
PY=${PYTHON:-python3}
TOL=${TOL:-0.05}
DEFAULT_SPEED="--preset medium --batch 512 --prompt_len 36 --new_tokens 512 --repeats 1"
read -r -a SPEED <<< "${SPEED_ARGS:-$DEFAULT_SPEED}"
read -r -a EVAL <<< "${EVAL_ARGS:---new_tokens 512}"
if [[ -f $CHOICE ]]; then
  echo "sampler options already chosen in $CHOICE: '$(cat "$CHOICE")'"; exit 0
fi
unset R1JAX_SAMPLER_XLA_OPTIONS R1JAX_SAMPLER_ATTENTION
rows=$(mktemp)
source tools/gpu_jobs/sampler_choice.sh  # split_choice
for opts in default "${CANDIDATES[@]}"; do
  split_choice "$opts"  # -> ATTENTION, XLA_OPTS (default: the library's own options)
  # concurrent_eval's row: XLA_FLAGS | options | process | pass@1 | format | length | trunc | s
  # | attention
  ev=$(R1JAX_SAMPLER_ATTENTION=$ATTENTION "$PY" benchmarks/concurrent_eval.py \
       --checkpoint "$CKPT" --processes 1 "${EVAL[@]}" --sampler_options="$XLA_OPTS" 2>&1 \
       | grep -E '^- \| ' | tail -1 || true)
  env_opts=(); [[ $XLA_OPTS != default ]] && env_opts=(R1JAX_SAMPLER_XLA_OPTIONS="$XLA_OPTS")
  # sampler.py's row: batch | tok/s | ms/step | ...
  sp=$(env "${env_opts[@]}" "$PY" benchmarks/sampler.py "${SPEED[@]}" --attention "$ATTENTION" \
       2>&1 | grep -E '^[0-9]+ \| ' | tail -1 || true)
  pass=$(awk -F' \\| ' '{print $4}' <<< "$ev"); fmt=$(awk -F' \\| ' '{print $5}' <<< "$ev")
  # The worker reports the attention it sampled with: a candidate that did not reach it fails.
  if [[ $(awk -F' \\| ' '{print $9}' <<< "$ev") != "$ATTENTION" ]]; then pass=; fmt=; fi
  ms=$(awk -F' \\| ' '{print $3}' <<< "$sp")
  printf '%s\t%s\t%s\t%s\n' "$opts" "${pass:-error}" "${fmt:-error}" "${ms:-error}" \
    | tee -a "$rows"
done
"$PY" benchmarks/concurrent_eval.py --choose_from "$rows" --choice_file "$CHOICE" --tol "$TOL"
