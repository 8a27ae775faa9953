#!/usr/bin/env bash
# The DeepSeek-R1 pipeline and the distillation comparison in miniature on one GPU.
#
#   bash tools/gpu_jobs/r1_gpu.sh           # one H100: the four stages of experiments/r1.py from the
#                                       # ~25M medium base (r1_gpu.flags), then distillation of
#                                       # its final policy into a ~1.6M small base vs. R1-Zero RL
#                                       # on that base (distill_gpu.flags); results into $OUT
#   bash tools/gpu_jobs/r1_gpu.sh --small   # CPU check of the logic with tiny budgets (~4 min)
#
# Needs the medium base of tools/gpu_jobs/r1_zero_gpu.sh at runs/r1_zero_gpu/base_medium (a fresh
# machine: run `STAGE=pretrain bash tools/gpu_jobs/r1_zero_gpu.sh` first, in the same call or on the
# same warm machine). The small student base is pretrained here when missing; it can share the
# GPU with the medium pretraining, with XLA's GPU autotuning off (processes that compile at once
# on one GPU get kernels that compute wrong results: see experiments/sweep.py, NO_AUTOTUNE):
#   export XLA_FLAGS=--xla_gpu_autotune_level=0
#   STAGE=small_base bash tools/gpu_jobs/r1_gpu.sh & PRETRAIN_MEM_FRACTION=0.6 bash tools/gpu_jobs/r1_zero_gpu.sh
# Run the R1 stages alone on the GPU, or with that flag.
#
# Environment (all optional): STAGE=all|small_base|r1|distill, TEACHER (of the distillation: r1,
# the R1 pipeline's final policy with distill_gpu.flags, the default; or r1_zero, the final
# policy R1_ZERO_POLICY, by default that of seed 0 of tools/gpu_jobs/r1_zero_gpu.sh beside MEDIUM,
# with distill_r1_zero_gpu.flags, into $ROOT/distill_r1_zero_gpu), R1_TIME_S and DISTILL_TIME_S (guards:
# the stage is interrupted there; both scripts resume from their checkpoints when run again),
# SMALL_PRETRAIN_TIME_S, SMALL_MEM_FRACTION, ROOT, MEDIUM, SMALL_BASE and R1_DIR (directories;
# R1_DIR defaults to $ROOT/r1_gpu), R1_FLAGFILE (default experiments/configs/r1_gpu.flags; e.g.
# r1_from_zero_gpu.flags, the cold start from R1-Zero's outputs, with R1_DIR=runs/r1_from_zero_gpu), R1_FLAGS
# and DISTILL_FLAGS (extra flags, e.g. R1_FLAGS="--max_steps=100"), OUT (where results are
# copied; the device tool's $OUT).
#
# What comes back in $OUT:
#   r1_summary.md       held-out pass@1 / cons@16 / format / language / length after each stage
#   distill_table.md    the Table 6 analog (teacher, student base, distilled, R1-Zero RL);
#                       distill_r1_zero_table.md with TEACHER=r1_zero
#   results.tar.gz      every stage's metrics.jsonl, eval_metrics.jsonl, plots, summaries,
#                       rejection statistics and a few samples; the small base's README and loss
#                       (results_r1_zero.tar.gz with TEACHER=r1_zero)
#   log.txt             this script's output
set -euo pipefail
cd "$(dirname "$0")/../.."

SMALL=0
if [[ "${1:-}" == "--small" ]]; then SMALL=1; fi
PY=${PYTHON:-python3}
STAGE=${STAGE:-all}
OUT=${OUT:-runs/r1_gpu_out}
source tools/gpu_jobs/gpu_common.sh  # log.txt, wheels from .whl/, TASK_OPTIONS
read -r -a R1_EXTRA <<< "${R1_FLAGS:-}"
read -r -a DISTILL_EXTRA <<< "${DISTILL_FLAGS:-}"
if [[ $SMALL == 1 ]]; then
  ROOT=${ROOT:-runs/r1_gpu_small}
  MEDIUM=${MEDIUM:-runs/r1_zero_gpu_small/base}
  SMALL_BASE=${SMALL_BASE:-$ROOT/base_small}
  SMALL_PRETRAIN=(--model_preset=tiny --max_steps=20 --batch_size=8 --eval_num_problems=4
                  --eval_num_samples=2 --max_completion_length=64)
  TINY=(--max_completion_length=64 --eval_num_problems=4 --eval_num_samples=2 --eval_batch_size=4
        --dtype=float32 --prompts_per_step=2 --num_generations=4 --save_steps=2)
  R1_EXTRA=("${TINY[@]}" --cold_start_num_examples=16 --sft_batch_size=4 --max_steps=2
            --final_rl_max_steps=2 --rejection_num_prompts=4 --rejection_num_samples=2
            --eval_steps=1 "${R1_EXTRA[@]}")
  DISTILL_EXTRA=("${TINY[@]}" --budget_completions=16 --distill_num_prompts=4
                 --distill_num_samples=2 --sft_batch_size=4 "${DISTILL_EXTRA[@]}")
  R1_TIME_S=${R1_TIME_S:-400}
  DISTILL_TIME_S=${DISTILL_TIME_S:-300}
  SMALL_PRETRAIN_TIME_S=${SMALL_PRETRAIN_TIME_S:-120}
else
  ROOT=${ROOT:-runs}
  MEDIUM=${MEDIUM:-runs/r1_zero_gpu/base_medium}
  SMALL_BASE=${SMALL_BASE:-runs/r1_zero_gpu/base_small}
  # The student base: pretrained like the medium one (distill_gpu.flags).
  SMALL_PRETRAIN=(--model_preset=small --max_steps=5000 --batch_size=64 --learning_rate=1e-3
                  --warmup_steps=200 --dtype=bfloat16 --pad_multiple=128 --log_every=100
                  --eval_num_problems=128 --eval_num_samples=16 --eval_batch_size=128
                  --max_completion_length=512)
  R1_TIME_S=${R1_TIME_S:-420}
  DISTILL_TIME_S=${DISTILL_TIME_S:-420}
  SMALL_PRETRAIN_TIME_S=${SMALL_PRETRAIN_TIME_S:-150}
fi
R1_DIR=${R1_DIR:-$ROOT/r1_gpu}
R1_FLAGFILE=${R1_FLAGFILE:-experiments/configs/r1_gpu.flags}
TEACHER=${TEACHER:-r1}
case $TEACHER in
  r1)
    DISTILL_DIR=$ROOT/distill_gpu; DISTILL_FLAGFILE=experiments/configs/distill_gpu.flags
    TEACHER_POLICY=$R1_DIR/4_final_rl/policy; TEACHER_DONE=$R1_DIR/4_final_rl/DONE.json
    TEACHER_ARGS=(--language_vocabulary_data="$R1_DIR/1_cold_start_sft/sft_data.jsonl")
    TABLE=distill_table.md; RESULTS=results.tar.gz;;
  r1_zero)
    DISTILL_DIR=$ROOT/distill_r1_zero_gpu
    DISTILL_FLAGFILE=experiments/configs/distill_r1_zero_gpu.flags
    TEACHER_POLICY=${R1_ZERO_POLICY:-$(dirname "$MEDIUM")/seed=0/policy}
    TEACHER_DONE=$TEACHER_POLICY/config.json
    TEACHER_ARGS=(); TABLE=distill_r1_zero_table.md; RESULTS=results_r1_zero.tar.gz;;
  *) echo "TEACHER=$TEACHER: expected r1 or r1_zero" >&2; exit 2;;
esac

t0=$(date +%s)
guard() {  # guard SECONDS CMD...: run CMD, interrupted (SIGINT) after SECONDS; never fails the script
  local secs=$1; shift
  set +e
  timeout -s INT -k 60 "$secs" "$@"
  local rc=$?
  set -e
  if [[ $rc == 124 || $rc == 130 ]]; then echo "== stopped by the ${secs} s guard (exit $rc)"
  elif [[ $rc != 0 ]]; then echo "== failed with exit $rc"; fi
}

if [[ $STAGE == all || $STAGE == small_base ]] && [[ ! -f $SMALL_BASE/config.json ]]; then
  echo "== pretraining the small student base into $SMALL_BASE"
  XLA_PYTHON_CLIENT_MEM_FRACTION=${SMALL_MEM_FRACTION:-${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.75}} \
  "$PY" experiments/pretrain_base.py --output_dir="$SMALL_BASE" --seed=0 \
    --task_options="$TASK_OPTIONS" --max_prompt_length=36 \
    "${CORPUS_FLAGS[@]}" \
    --time_limit_s="$SMALL_PRETRAIN_TIME_S" "${SMALL_PRETRAIN[@]}"
  echo "== small base done at $(( $(date +%s) - t0 )) s"
fi

if [[ $STAGE == all || $STAGE == r1 ]]; then
  [[ -f "$MEDIUM/config.json" ]] || {
    echo "no medium base at $MEDIUM (run STAGE=pretrain bash tools/gpu_jobs/r1_zero_gpu.sh)" >&2; exit 2; }
  echo "== experiments/r1.py into $R1_DIR"
  guard "$R1_TIME_S" "$PY" experiments/r1.py --flagfile="$R1_FLAGFILE" \
    --init_checkpoint="$MEDIUM" --workdir="$R1_DIR" "${R1_EXTRA[@]}"
  echo "== r1 done at $(( $(date +%s) - t0 )) s"
fi

if [[ $STAGE == all || $STAGE == distill ]]; then
  if [[ -f $TEACHER_DONE && -f $SMALL_BASE/config.json ]]; then
    echo "== experiments/compare_distill_rl.py into $DISTILL_DIR (teacher $TEACHER_POLICY)"
    guard "$DISTILL_TIME_S" "$PY" experiments/compare_distill_rl.py \
      --flagfile="$DISTILL_FLAGFILE" --workdir="$DISTILL_DIR" \
      --teacher_checkpoint="$TEACHER_POLICY" "${TEACHER_ARGS[@]}" \
      --init_checkpoint="$SMALL_BASE" "${DISTILL_EXTRA[@]}"
    echo "== distillation done at $(( $(date +%s) - t0 )) s"
  else
    echo "== distillation skipped: needs $TEACHER_DONE and $SMALL_BASE"
  fi
fi

# Collect.
[[ -f $R1_DIR/summary.md ]] && cp "$R1_DIR/summary.md" "$OUT/r1_summary.md"
[[ -f $DISTILL_DIR/table.md ]] && cp "$DISTILL_DIR/table.md" "$OUT/$TABLE"
tar_items=()
shopt -s nullglob
for p in "$SMALL_BASE"/README.md "$SMALL_BASE"/loss.png "$SMALL_BASE"/pretrain_metrics.jsonl \
         "$R1_DIR"/summary.* "$R1_DIR"/*/*.jsonl "$R1_DIR"/*/*.json "$R1_DIR"/*/*.png \
         "$DISTILL_DIR"/table.md "$DISTILL_DIR"/*.json "$DISTILL_DIR"/*_samples.jsonl \
         "$DISTILL_DIR"/*/*.jsonl "$DISTILL_DIR"/*/*.json "$DISTILL_DIR"/*/*.png \
         "$DISTILL_DIR"/*/*/*.jsonl "$DISTILL_DIR"/*/*/*.json "$DISTILL_DIR"/*/*/*.png; do
  [[ -e $p ]] || continue  # a literal path of a stage that did not run (tar would fail)
  # The sampled data sets are large; keep their first 200 lines.
  case $p in
    *rejection_samples.jsonl|*sft_data.jsonl|*traces*.jsonl|*rejection.jsonl)
      mkdir -p "$(dirname "/tmp/r1_gpu_head/$p")"; head -200 "$p" > "/tmp/r1_gpu_head/$p"
      tar_items+=("/tmp/r1_gpu_head/$p");;
    *) tar_items+=("$p");;
  esac
done
if (( ${#tar_items[@]} )); then tar czf "$OUT/$RESULTS" "${tar_items[@]}" 2>/dev/null; fi
for f in "$OUT"/r1_summary.md "$OUT/$TABLE"; do [[ -f $f ]] && { echo "== $f"; cat "$f"; }; done
echo "== total $(( $(date +%s) - t0 )) s; results in $OUT"
