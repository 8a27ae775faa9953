#!/usr/bin/env bash
# The miniature's GPU experiments side by side on one GPU, inside one wall-clock budget:
#   track A  R1-Zero seeds (benchmarks/r1_zero_gpu.sh, countdown_gpu.flags), then an ablation grid
#   track B  the R1 pipeline, then distillation vs. RL on the small student (benchmarks/r1_gpu.sh)
# after pretraining both base models at once. Every part resumes: run the script again on the
# same machine (a later device call while it is still warm) and each track continues from its
# checkpoints; finished runs are skipped.
#
#   DEADLINE_S=560 bash benchmarks/gpu_all.sh     # one device call of at most 600 s
#   bash benchmarks/gpu_all.sh --small            # CPU check of the plumbing (~6 min)
#
# All processes run with XLA's GPU autotuning off: processes that compile at once on one GPU got
# kernels that sampled corrupted text (docs/r1_zero_gpu.md). GRACE_S before DEADLINE_S every run
# gets a SIGINT, finishes its step in progress and saves it (checkpoint.StopAtStepBoundary).
#
# Environment (optional): DEADLINE_S (560), GRACE_S (60), ABLATION_GRID (a sweep.py --grid for
# track A after the seeds; default loss_type=dr_grpo,dapo; empty: none), ABLATION_STEPS (50),
# R1_FLAGS (default: 80 reasoning-RL steps and 40 final ones), SEED_MEM, R1_MEM (memory shares).
#
# What comes back in $OUT (at most 8 files): log.txt, r1_zero.tar.gz and r1.tar.gz (each script's
# results), summary.json (the seeds), ablation_summary.json, r1_summary.md, distill_table.md.
set -euo pipefail
cd "$(dirname "$0")/.."

SMALL=()
if [[ "${1:-}" == "--small" ]]; then SMALL=(--small); fi
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu_all_out}
# log.txt; the wheels the GPU image lacks, installed once here for every job below (two scripts
# installing into one folder at once could break it).
source benchmarks/gpu_common.sh
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0"
DEADLINE_S=${DEADLINE_S:-560}
GRACE_S=${GRACE_S:-60}
ABLATION_GRID=${ABLATION_GRID-loss_type=dr_grpo,dapo}
ABLATION_STEPS=${ABLATION_STEPS:-50}
R1_FLAGS=${R1_FLAGS:---max_steps=80 --final_rl_max_steps=40 --eval_steps=40}
if (( ${#SMALL[@]} )); then
  TAG=_small; R1_FLAGS=${R1_FLAGS_SMALL:-}; ABLATION_STEPS=2
  MEDIUM=runs/r1_zero_gpu_small/base; SMALL_BASE=runs/r1_gpu_small/base_small
  ROOT_A=runs/r1_zero_gpu_small; R1_DIR=runs/r1_gpu_small/r1_gpu
else
  TAG=; MEDIUM=runs/r1_zero_gpu/base_medium; SMALL_BASE=runs/r1_zero_gpu/base_small
  ROOT_A=runs/r1_zero_gpu; R1_DIR=runs/r1_gpu
fi
OUT_A=runs/gpu_all$TAG/out_r1_zero
OUT_B=runs/gpu_all$TAG/out_r1
mkdir -p "$OUT_A" "$OUT_B"
t0=$(date +%s)
left() { echo $(( DEADLINE_S - GRACE_S - ($(date +%s) - t0) )); }
say() { echo "== [gpu_all $(( $(date +%s) - t0 )) s] $*"; }

# The two bases at once (the small one is the distillation student).
pids=()
if [[ ! -f $MEDIUM/config.json ]]; then
  say "pretraining the medium base"
  STAGE=pretrain PRETRAIN_MEM_FRACTION=0.3 PRETRAIN_TIME_S=${PRETRAIN_TIME_S:-170} OUT=$OUT_A \
    bash benchmarks/r1_zero_gpu.sh "${SMALL[@]}" > "$OUT_A/pretrain.log" 2>&1 & pids+=($!)
fi
if [[ ! -f $SMALL_BASE/config.json ]]; then
  say "pretraining the small student base"
  STAGE=small_base SMALL_MEM_FRACTION=0.15 OUT=$OUT_B \
    bash benchmarks/r1_gpu.sh "${SMALL[@]}" > "$OUT_B/small_base.log" 2>&1 & pids+=($!)
fi
for p in "${pids[@]}"; do wait "$p" || say "a pretraining job failed (exit $?)"; done
[[ -f $MEDIUM/config.json ]] || { say "no medium base: see $OUT_A/pretrain.log"; exit 2; }

track_a() {
  if (( $(left) > 60 )); then
    say "track A: R1-Zero seeds, $(left) s"
    STAGE=rl RL_TIME_S=$(left) RL_MEM_FRACTION=${SEED_MEM:-0.14} OUT=$OUT_A \
      bash benchmarks/r1_zero_gpu.sh "${SMALL[@]}" || say "seeds: exit $?"
  fi
  if [[ -n $ABLATION_GRID ]] && (( $(left) > 120 )); then
    say "track A: ablations $ABLATION_GRID, $(left) s"
    GRID=$ABLATION_GRID ROOT=$ROOT_A/ablations STAGE=rl RL_TIME_S=$(left) \
      RL_STEPS=$ABLATION_STEPS RL_MEM_FRACTION=${SEED_MEM:-0.14} OUT=$OUT_A/ablations \
      bash benchmarks/r1_zero_gpu.sh "${SMALL[@]}" || say "ablations: exit $?"
  fi
  say "track A done"
}

track_b() {
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${R1_MEM:-0.2}
  if (( $(left) > 60 )) && [[ ! -f $R1_DIR/4_final_rl/DONE.json ]]; then
    say "track B: the R1 pipeline, $(left) s"
    STAGE=r1 R1_TIME_S=$(left) R1_FLAGS=$R1_FLAGS OUT=$OUT_B \
      bash benchmarks/r1_gpu.sh "${SMALL[@]}" || say "r1: exit $?"
  fi
  if (( $(left) > 60 )) && [[ -f $R1_DIR/4_final_rl/DONE.json ]]; then
    say "track B: distillation vs. RL, $(left) s"
    STAGE=distill DISTILL_TIME_S=$(left) OUT=$OUT_B \
      bash benchmarks/r1_gpu.sh "${SMALL[@]}" || say "distill: exit $?"
  fi
  say "track B done"
}

track_a > "$OUT_A/track.log" 2>&1 &
pa=$!
track_b > "$OUT_B/track.log" 2>&1 &
pb=$!
wait $pa || true
wait $pb || true

# Collect.
for f in "$OUT_A"/summary.json "$OUT_B"/r1_summary.md "$OUT_B"/distill_table.md; do
  [[ -f $f ]] && cp "$f" "$OUT/"
done
[[ -f $OUT_A/ablations/summary.json ]] && cp "$OUT_A/ablations/summary.json" "$OUT/ablation_summary.json"
tar czf "$OUT/r1_zero.tar.gz" "$OUT_A"
tar czf "$OUT/r1.tar.gz" "$OUT_B"
tail -n 5 "$OUT_A"/track.log "$OUT_B"/track.log || true
for f in "$OUT"/*.md; do [[ -f $f ]] && { echo "== $f"; cat "$f"; }; done
say "total; results in $OUT"
