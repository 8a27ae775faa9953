#!/usr/bin/env bash
# The miniature's GPU experiments as one queue on one GPU, inside one wall-clock budget:
#   the medium (~25M) base and the small (~1.6M) student base (experiments/pretrain_base.py,
#   itself resumable: a base cut short by the deadline is continued by the next run), then the
#   jobs of ORDER, by default
#     seeds      R1-Zero, three seeds (tools/gpu_jobs/r1_zero_gpu.sh, countdown_gpu.flags)   issue 4
#     ablations  an ablation grid at the GPU scale (ABLATION_GRID)                      issue 4
#     r1         the R1 pipeline (tools/gpu_jobs/r1_gpu.sh, r1_gpu.flags)                   issue 6
#     distill    distillation vs. RL on the small student (the same script)             issue 6
#     distill_r1_zero  the same with the R1-Zero policy of seed 0 as the teacher
#                (TEACHER=r1_zero, distill_r1_zero_gpu.flags; not in the default ORDER)    issue 6
# Every part resumes: run the script again on the same machine (a later device call while it is
# still warm) and the queue continues from the checkpoints; finished parts are skipped.
#
#   DEADLINE_S=550 bash tools/gpu_jobs/gpu_all.sh     # one device call of at most 600 s
#   bash tools/gpu_jobs/gpu_all.sh --small            # CPU check of the plumbing (~5 min)
#
# The bases and the jobs run one after another. Within the seeds and the ablations, PARALLEL runs
# share the GPU (3 by default) through one JAX compilation cache (COMPILE_CACHE, default
# $RUNS/jax_cache): the first run compiles alone with XLA's autotuning on, the others start once
# it has logged a step and load its kernels. Why: several processes autotuning at once on one
# GPU got kernels that sampled corrupted text (the sampler now compiles untuned in every process
# for the same reason), and turning autotuning off for whole processes cost ~5x in the update
# step and ~10x in pretraining on an H200 (docs/r1_zero.md). PARALLEL=1 runs
# them one at a time. GRACE_S before DEADLINE_S the running job gets a SIGINT, finishes its
# step and saves it (checkpoint.StopAtStepBoundary).
#
# Environment (optional): ORDER (the jobs after the bases, default "seeds ablations r1 distill"),
# DEADLINE_S (550), GRACE_S (60), PARALLEL (3), COMPILE_CACHE, CHOOSE_SAMPLER=1 and
# SAMPLER_CANDIDATES (step 1b below),
# ABLATION_GRID (default loss_type=dr_grpo,dapo; empty: none), ABLATION_STEPS (40), R1_FLAGS
# (default: 80 reasoning-RL steps and 40 final ones), BASE_PASS1_MAX and PRETRAIN_STEPS_LIST
# (step 1 below),
# ALLOW_PARTIAL_BASE=1 (train on a base
# whose pretraining stopped early; by default the queue stops there, and the next run of the
# script continues the pretraining),
# RUNS (the folder of every run directory; default runs).
#
# What comes back in $OUT (at most 8 files): log.txt, r1_zero.tar.gz and r1.tar.gz (each script's
# results), summary.json (the seeds), ablation_summary.json, r1_summary.md, distill_table.md,
# distill_r1_zero_table.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

SMALL=()
if [[ "${1:-}" == "--small" ]]; then SMALL=(--small); fi
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu_all_out}
# Checked first: a bad ORDER fails before anything is logged or installed.
ORDER=${ORDER:-"seeds ablations r1 distill"}
for job in $ORDER; do
  case $job in seeds|r1|distill|distill_r1_zero|ablations) ;;
    *) echo "ORDER=$ORDER: unknown job '$job' (seeds, r1, distill, distill_r1_zero," \
         "ablations)" >&2; exit 2;;
  esac
done
source tools/gpu_jobs/gpu_common.sh  # log.txt; the wheels the GPU image lacks, installed once here
DEADLINE_S=${DEADLINE_S:-550}
GRACE_S=${GRACE_S:-60}
PARALLEL=${PARALLEL:-3}
ABLATION_GRID=${ABLATION_GRID-loss_type=dr_grpo,dapo}
ABLATION_STEPS=${ABLATION_STEPS:-40}
R1_FLAGS=${R1_FLAGS:---max_steps=80 --final_rl_max_steps=40 --eval_steps=40}
SEEDS=${SEEDS:-"0 1 2"}
RUNS=${RUNS:-runs}  # every directory below lives here
export COMPILE_CACHE=${COMPILE_CACHE-$RUNS/jax_cache}
if (( ${#SMALL[@]} )); then
  TAG=_small; R1_FLAGS=${R1_FLAGS_SMALL:-}; ABLATION_STEPS=2; RL_STEPS=3
  MEDIUM=$RUNS/r1_zero_gpu_small/base; ROOT_A=$RUNS/r1_zero_gpu_small; ROOT_B=$RUNS/r1_gpu_small
  SMALL_BASE=$ROOT_B/base_small
else
  TAG=; RL_STEPS=60
  MEDIUM=$RUNS/r1_zero_gpu/base_medium; ROOT_A=$RUNS/r1_zero_gpu; ROOT_B=$RUNS
  SMALL_BASE=$RUNS/r1_zero_gpu/base_small
fi
R1_DIR=${R1_DIR:-$ROOT_B/r1_gpu}  # R1_FLAGFILE (r1_gpu.sh) picks the pipeline's flagfile
DISTILL_DIR=$ROOT_B/distill_gpu
DISTILL_R1_ZERO_DIR=$ROOT_B/distill_r1_zero_gpu
# The teacher of distill_r1_zero: seed 0's exported policy, or R1_ZERO_POLICY (e.g. a copy that
# benchmarks/pack_policy.py brought back from an earlier session and the call carries).
R1_ZERO_POLICY=${R1_ZERO_POLICY:-$ROOT_A/seed=0/policy}
# The directories of this script, for the two it runs.
A_DIRS=(BASE="$MEDIUM" ROOT="$ROOT_A")
B_DIRS=(ROOT="$ROOT_B" MEDIUM="$MEDIUM" SMALL_BASE="$SMALL_BASE" R1_DIR="$R1_DIR")
OUT_A=$RUNS/gpu_all$TAG/out_r1_zero
OUT_B=$RUNS/gpu_all$TAG/out_r1
mkdir -p "$OUT_A" "$OUT_B"
t0=$(date +%s)
left() { echo $(( DEADLINE_S - GRACE_S - ($(date +%s) - t0) )); }
say() { echo "== [gpu_all $(( $(date +%s) - t0 )) s] $*"; }
# evaluated ROOT STEPS NAME...: every run ROOT/NAME has an evaluation at step STEPS.
evaluated() {
  "$PY" - "$@" <<'PY'
import os, sys
from r1jax import logs
root, steps, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
sys.exit(0 if all(any(r.get("step") == steps for r in logs.read_jsonl(
    os.path.join(root, n, "eval_metrics.jsonl"))) for n in names) else 1)
PY
}
# partial DIR: a base whose pretraining stopped early (pretrain_base.py's README says so); running
# its command again continues it from its checkpoint.
partial() { grep -qE "stopped (by --time_limit_s|early)" "$1/README.md" 2>/dev/null; }
unfinished() { [[ ! -f $1/config.json ]] || partial "$1"; }

# base_pass1: the medium base's own held-out pass@1 (its README), empty if none.
base_pass1() { sed -n 's/^| held-out pass@1 | \([0-9.]*\).*/\1/p' "$MEDIUM/README.md" 2>/dev/null; }
# over_max: BASE_PASS1_MAX is set and the medium base's pass@1 is above it (or unknown).
over_max() {
  [[ -n ${BASE_PASS1_MAX:-} ]] || return 1
  local p; p=$(base_pass1)
  [[ -z $p ]] || awk -v a="$p" -v b="$BASE_PASS1_MAX" 'BEGIN { exit !(a > b) }'
}
pretrain_medium() {  # [STEPS]: pretrains (or continues) the medium base, STEPS steps if given
  local steps=(); [[ -n ${1:-} ]] && steps=(PRETRAIN_STEPS="$1")
  say "pretraining the medium base${1:+ ($1 steps)}"
  env "${A_DIRS[@]}" "${steps[@]}" STAGE=pretrain PRETRAIN_TIME_S=$(( $(left) - 60 )) \
    OUT=$OUT_A bash tools/gpu_jobs/r1_zero_gpu.sh "${SMALL[@]}" >> "$OUT_A/pretrain.log" 2>&1 \
    || say "medium base: exit $?"
}

# 1. The bases (each stops training 60 s before the guard, leaving time for its evaluation); the
# small one only when distillation is queued. With PRETRAIN_STEPS_LIST (e.g. "4000 3500") and
# BASE_PASS1_MAX, a finished medium base over BASE_PASS1_MAX is moved aside to
# ${MEDIUM}_over_max_<steps> and the next length of the list is pretrained, in the same call
# if time is left; a length whose base was moved aside is not tried again.
if [[ -n ${PRETRAIN_STEPS_LIST:-} ]]; then
  read -r -a STEPS_LIST <<< "$PRETRAIN_STEPS_LIST"
  for i in "${!STEPS_LIST[@]}"; do
    steps=${STEPS_LIST[$i]}
    [[ -e ${MEDIUM}_over_max_$steps ]] && continue
    if unfinished "$MEDIUM"; then
      (( $(left) > 120 )) || break
      pretrain_medium "$steps"
    fi
    unfinished "$MEDIUM" && break  # cut short: the next run of this script continues it
    over_max && (( i + 1 < ${#STEPS_LIST[@]} )) || break
    say "the $steps-step base's held-out pass@1 '$(base_pass1)' is over" \
        "BASE_PASS1_MAX=$BASE_PASS1_MAX: moved to ${MEDIUM}_over_max_$steps"
    mv "$MEDIUM" "${MEDIUM}_over_max_$steps"
  done
elif unfinished "$MEDIUM" && (( $(left) > 120 )); then
  pretrain_medium
fi
if [[ " $ORDER " == *" distill"* ]] && unfinished "$SMALL_BASE" && (( $(left) > 120 )); then
  say "pretraining the small student base"
  env "${B_DIRS[@]}" STAGE=small_base SMALL_PRETRAIN_TIME_S=$(( $(left) - 60 )) OUT=$OUT_B \
    bash tools/gpu_jobs/r1_gpu.sh "${SMALL[@]}" > "$OUT_B/small_base.log" 2>&1 \
    || say "small base: exit $?"
fi
# ready DIR: a base to train from (pretrained to its last step, or ALLOW_PARTIAL_BASE=1).
ready() {
  [[ -f $1/config.json ]] || return 1
  if partial "$1" && [[ ${ALLOW_PARTIAL_BASE:-0} != 1 ]]; then
    say "$1 is not fully pretrained yet ($(grep '^| steps' "$1/README.md")): an"
    say "undertrained base changes every result after it. Run this script again to continue"
    say "its pretraining (or set ALLOW_PARTIAL_BASE=1 to train on it as it is)."
    return 1
  fi
}
if ! ready "$MEDIUM"; then
  say "no usable medium base yet: nothing trains from it in this run"
  STOPPED=3
fi
# BASE_PASS1_MAX (optional): stop before the jobs when the medium base's own held-out pass@1
# (its README) is above it, e.g. 0.20 for issue 4's "from at most 20%".
if [[ -n ${BASE_PASS1_MAX:-} && ${STOPPED:-0} == 0 ]]; then
  if over_max; then
    say "the medium base's held-out pass@1 '$(base_pass1)' is not at most BASE_PASS1_MAX=$BASE_PASS1_MAX:"
    say "no job trains from it (remove $MEDIUM, or set PRETRAIN_STEPS_LIST, to pretrain another)"
    STOPPED=4
  else
    say "the medium base's held-out pass@1: $(base_pass1) (BASE_PASS1_MAX=$BASE_PASS1_MAX)"
  fi
fi

# 1b. With CHOOSE_SAMPLER=1 (and neither R1JAX_SAMPLER_XLA_OPTIONS nor R1JAX_SAMPLER_ATTENTION
# set), the sampler's setting for this machine: the fastest sound one of SAMPLER_CANDIDATES
# (default: choose_sampler_options.sh's own) on the medium base
# (tools/gpu_jobs/choose_sampler_options.sh), chosen once and kept in $RUNS/sampler_options.txt for
# the later runs of this script; e.g. SAMPLER_CANDIDATES=attention=ragged tries the ragged decode
# attention against the default.
CHOICE=$RUNS/sampler_options.txt
if [[ ${CHOOSE_SAMPLER:-0} == 1 && -z ${R1JAX_SAMPLER_XLA_OPTIONS+x} \
      && -z ${R1JAX_SAMPLER_ATTENTION+x} && ${STOPPED:-0} == 0 ]]; then
  say "choosing the sampler's setting"
  CHOOSE_ENV=(); (( ${#SMALL[@]} )) && CHOOSE_ENV=(SPEED_ARGS=--small EVAL_ARGS=--small)
  read -r -a CANDIDATE_ARR <<< "${SAMPLER_CANDIDATES:-}"
  env "${CHOOSE_ENV[@]}" bash tools/gpu_jobs/choose_sampler_options.sh "$MEDIUM" "$CHOICE" \
    "${CANDIDATE_ARR[@]}" 2>&1 | tee "$OUT_A/sampler_options.log" \
    || say "choose_sampler_options: exit $?"
fi
if [[ -z ${R1JAX_SAMPLER_XLA_OPTIONS+x} && -z ${R1JAX_SAMPLER_ATTENTION+x} && -f $CHOICE ]]; then
  source tools/gpu_jobs/sampler_choice.sh && export_choice "$CHOICE"
  say "sampler setting (from $CHOICE): '$(cat "$CHOICE")': attention $R1JAX_SAMPLER_ATTENTION," \
      "XLA options '${R1JAX_SAMPLER_XLA_OPTIONS-the library default}'"
fi

# 2. The jobs, in ORDER.
job_seeds() {  # R1-Zero, three seeds
  local names=() s
  for s in $SEEDS; do names+=("seed=$s"); done
  evaluated "$ROOT_A" "$RL_STEPS" "${names[@]}" && return
  (( $(left) > 60 )) || return 0
  say "R1-Zero seeds ($SEEDS, $PARALLEL at a time), $(left) s"
  env "${A_DIRS[@]}" STAGE=rl SEEDS="$SEEDS" PARALLEL=$PARALLEL RL_TIME_S=$(left) OUT=$OUT_A \
    bash tools/gpu_jobs/r1_zero_gpu.sh "${SMALL[@]}" >> "$OUT_A/track.log" 2>&1 || say "seeds: exit $?"
}
job_r1() {  # the four stages of experiments/r1.py
  [[ -f $R1_DIR/4_final_rl/DONE.json ]] && return
  (( $(left) > 60 )) || return 0
  say "the R1 pipeline, $(left) s"
  env "${B_DIRS[@]}" STAGE=r1 R1_TIME_S=$(left) R1_FLAGS="$R1_FLAGS" OUT=$OUT_B \
    bash tools/gpu_jobs/r1_gpu.sh "${SMALL[@]}" >> "$OUT_B/track.log" 2>&1 || say "r1: exit $?"
}
job_distill() {  # distillation of the R1 policy vs. RL on the small student
  [[ -f $DISTILL_DIR/table.md ]] && return
  [[ -f $R1_DIR/4_final_rl/DONE.json ]] || { say "distillation waits for the R1 pipeline"; return; }
  ready "$SMALL_BASE" || { say "distillation waits for the small base"; return; }
  (( $(left) > 60 )) || return 0
  say "distillation vs. RL, $(left) s"
  env "${B_DIRS[@]}" STAGE=distill DISTILL_TIME_S=$(left) OUT=$OUT_B \
    bash tools/gpu_jobs/r1_gpu.sh "${SMALL[@]}" >> "$OUT_B/track.log" 2>&1 || say "distill: exit $?"
}
job_distill_r1_zero() {  # distillation of the R1-Zero policy (seed 0) vs. RL on the small student
  [[ -f $DISTILL_R1_ZERO_DIR/table.md ]] && return
  [[ -f $R1_ZERO_POLICY/config.json ]] || {
    say "distillation from R1-Zero waits for seed 0's final policy"; return; }
  ready "$SMALL_BASE" || { say "distillation waits for the small base"; return; }
  (( $(left) > 60 )) || return 0
  say "distillation from R1-Zero vs. RL, $(left) s"
  env "${B_DIRS[@]}" TEACHER=r1_zero R1_ZERO_POLICY="$R1_ZERO_POLICY" STAGE=distill \
    DISTILL_TIME_S=$(left) OUT=$OUT_B \
    bash tools/gpu_jobs/r1_gpu.sh "${SMALL[@]}" >> "$OUT_B/track.log" 2>&1 \
    || say "distill_r1_zero: exit $?"
}
job_ablations() {  # ABLATION_GRID at the GPU scale (runs that are done resume in seconds)
  [[ -n $ABLATION_GRID ]] || return 0
  (( $(left) > 120 )) || return 0
  say "ablations $ABLATION_GRID, $(left) s"
  mkdir -p "$OUT_A/ablations"
  env "${A_DIRS[@]}" GRID="$ABLATION_GRID" ROOT="$ROOT_A/ablations" STAGE=rl RL_TIME_S=$(left) \
    PARALLEL=$PARALLEL RL_STEPS=$ABLATION_STEPS OUT=$OUT_A/ablations \
    bash tools/gpu_jobs/r1_zero_gpu.sh "${SMALL[@]}" >> "$OUT_A/track.log" 2>&1 \
    || say "ablations: exit $?"
}
if [[ ${STOPPED:-0} == 0 ]]; then
  for job in $ORDER; do "job_$job"; done
fi

# Collect.
for f in "$OUT_A"/summary.json "$OUT_B"/r1_summary.md "$OUT_B"/distill_table.md \
         "$OUT_B"/distill_r1_zero_table.md; do
  [[ -f $f ]] && cp "$f" "$OUT/"
done
if [[ -f $OUT_A/ablations/summary.json ]]; then
  cp "$OUT_A/ablations/summary.json" "$OUT/ablation_summary.json"
fi
tar czf "$OUT/r1_zero.tar.gz" "$OUT_A"
tar czf "$OUT/r1.tar.gz" "$OUT_B"
for f in "$OUT"/*.md; do [[ -f $f ]] && { echo "== $f"; cat "$f"; }; done
say "total; results in $OUT"
exit "${STOPPED:-0}"
