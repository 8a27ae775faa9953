#!/usr/bin/env bash
# R1-Zero in miniature on one GPU: pretrain the medium (~25M) base model on the procedural
# Countdown corpus, run GRPO from it for several seeds at once, and collect the curves.
#
#   bash tools/gpu_jobs/r1_zero_gpu.sh            # one H100: pretrain (~3 min) + 3 seeds of RL in
#                                             # parallel (~5 min); results into $OUT
#   bash tools/gpu_jobs/r1_zero_gpu.sh --small    # CPU check of the logic with tiny budgets (~3 min)
#
# Environment (all optional): STAGE=all|pretrain|rl, SEEDS="0 1 2", PARALLEL (default: number of
# seeds), RL_STEPS, PRETRAIN_STEPS, PRETRAIN_TIME_S (a guard: pretraining stops there),
# PRETRAIN_EXTRA (more experiments/pretrain_base.py flags, after and over the ones here and the
# corpus of tools/gpu_jobs/gpu_common.sh, e.g. PRETRAIN_EXTRA="--search_order=random"),
# RL_TIME_S (a guard: RL is interrupted there and the curves drawn from what was logged),
# BASE (checkpoint dir), ROOT (run dirs), OUT (where results are copied; the device tool's $OUT),
# GRID (a sweep.py --grid instead of the seeds, e.g. GRID=loss_type=grpo,dr_grpo,dapo with
# ROOT=runs/ablate_loss STAGE=rl for the GPU-scale ablations; PARALLEL defaults to 3 then),
# RL_MEM_FRACTION (each seed's share of GPU memory; default 0.9 / PARALLEL),
# COMPILE_CACHE (with PARALLEL > 1: the runs' shared JAX compilation cache, default
# $ROOT/jax_cache; the first run fills it alone, autotuning on, and the others load its kernels:
# experiments/sweep.py --compile_cache. Empty: autotuning off instead, which is slow),
# PRETRAIN_MEM_FRACTION (XLA_PYTHON_CLIENT_MEM_FRACTION of the pretraining process, so that another
# job, e.g. `STAGE=small_base bash tools/gpu_jobs/r1_gpu.sh`, can share the GPU meanwhile).
# STAGE=rl reuses BASE from an earlier STAGE=pretrain on the same machine.
# An RL stage cut by RL_TIME_S saves each seed's last step; STAGE=rl again on the same machine
# resumes from there (a 10-minute device call can hold pretraining plus ~5 minutes of RL).
#
# What comes back in $OUT (at most 8 files, so that the device tool returns all of them):
#   summary.json     first/last held-out pass@1, response length, reflection rate per seed
#   pass_1.png completion_length_mean.png reflection_rate.png   the seeds on shared axes
#   results.tar.gz   every seed's metrics.jsonl, eval_metrics.jsonl, plots and eval samples,
#                    the base model's README.md, loss curve and samples
#   log.txt          this script's output
# Missing on the GPU image (KINDS.md): tensorboardX and math-verify. Carry them as wheels in
# .whl/ (see the device tool's README); this script installs them from there when present.
set -euo pipefail
cd "$(dirname "$0")/../.."

SMALL=0
if [[ "${1:-}" == "--small" ]]; then SMALL=1; fi
PY=${PYTHON:-python3}
STAGE=${STAGE:-all}
SEEDS=${SEEDS:-"0 1 2"}
read -r -a SEED_ARR <<< "$SEEDS"
PARALLEL=${PARALLEL:-${#SEED_ARR[@]}}
GRID=${GRID:-"seed=$(IFS=,; echo "${SEED_ARR[*]}")"}
OUT=${OUT:-runs/r1_zero_gpu_out}
source tools/gpu_jobs/gpu_common.sh  # log.txt, wheels from .whl/, TASK_OPTIONS
if [[ $SMALL == 1 ]]; then
  BASE=${BASE:-runs/r1_zero_gpu_small/base}
  ROOT=${ROOT:-runs/r1_zero_gpu_small}
  PRETRAIN_FLAGS=(--model_preset=tiny --max_steps="${PRETRAIN_STEPS:-30}" --batch_size=8
                  --eval_num_problems=4 --eval_num_samples=2 --max_completion_length=64)
  RL_FLAGS=(--max_steps="${RL_STEPS:-3}" --prompts_per_step=2 --num_generations=4
            --max_completion_length=64 --overlong_buffer=16 --eval_steps=2 --eval_num_problems=4
            --eval_num_samples=2 --eval_batch_size=4 --dtype=float32 --save_steps=2
            --logprob_batch_size=4)  # 2 x 4 rows: the flagfile's 256 would not divide them
  RL_TIME_S=${RL_TIME_S:-300}
else
  BASE=${BASE:-runs/r1_zero_gpu/base_medium}
  ROOT=${ROOT:-runs/r1_zero_gpu}
  # ~25M parameters, 4000 x 64 documents (~30M tokens); bf16 compute, fp32 master weights.
  # 4000 steps since 2026-12-02 (fourth session): with the corpus of gpu_common.sh 5000 steps gave
  # a base of held-out pass@1 0.218 and 3000 steps one of 0.138 (docs/r1_zero.md, "A weaker
  # base"); issue 4 asks for at most 0.20. 4000 steps not yet run.
  PRETRAIN_FLAGS=(--model_preset=medium --max_steps="${PRETRAIN_STEPS:-4000}" --batch_size=64
                  --learning_rate=1e-3 --warmup_steps=200 --dtype=bfloat16 --pad_multiple=128
                  --time_limit_s="${PRETRAIN_TIME_S:-170}" --log_every=100
                  --eval_num_problems=128 --eval_num_samples=16 --eval_batch_size=128
                  --max_completion_length=768)
  RL_FLAGS=(--max_steps="${RL_STEPS:-60}")
  RL_TIME_S=${RL_TIME_S:-330}
fi

read -r -a PRETRAIN_EXTRA_ARR <<< "${PRETRAIN_EXTRA:-}"
t0=$(date +%s)
if [[ $STAGE == all || $STAGE == pretrain ]]; then
  echo "== pretraining the base model into $BASE"
  XLA_PYTHON_CLIENT_MEM_FRACTION=${PRETRAIN_MEM_FRACTION:-${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.75}} \
  "$PY" experiments/pretrain_base.py --output_dir="$BASE" --seed=0 \
    --task_options="$TASK_OPTIONS" --max_prompt_length=36 \
    "${CORPUS_FLAGS[@]}" \
    "${PRETRAIN_FLAGS[@]}" "${PRETRAIN_EXTRA_ARR[@]}"
  echo "== pretraining done at $(( $(date +%s) - t0 )) s"
fi

if [[ $STAGE == all || $STAGE == rl ]]; then
  [[ -f "$BASE/config.json" ]] || { echo "no base checkpoint at $BASE (run STAGE=pretrain)" >&2; exit 2; }
  EXTRA=(--extra=--init_checkpoint="$BASE")
  for f in "${RL_FLAGS[@]}"; do EXTRA+=(--extra="$f"); done
  echo "== GRPO, $GRID, $PARALLEL at a time, into $ROOT"
  # Several small runs share the GPU: each process gets a slice of its memory.
  MEM=${RL_MEM_FRACTION:-$(awk -v p="$PARALLEL" 'BEGIN { printf "%.2f", (p > 1) ? 0.9 / p : 0 }')}
  CACHE=()
  COMPILE_CACHE=${COMPILE_CACHE-$ROOT/jax_cache}
  if (( PARALLEL > 1 )) && [[ -n $COMPILE_CACHE ]]; then
    CACHE=(--compile_cache="$COMPILE_CACHE")
    export JAX_EXPLAIN_CACHE_MISSES=1  # each run's log says which programs it loaded, not compiled
  fi
  set +e
  timeout -s INT -k 60 "$RL_TIME_S" "$PY" experiments/sweep.py \
    --base_flagfile=experiments/configs/countdown_gpu.flags --grid="$GRID" --root="$ROOT" \
    --parallel="$PARALLEL" --mem_fraction="$MEM" "${CACHE[@]}" "${EXTRA[@]}"
  rc=$?
  set -e
  if (( ${#CACHE[@]} )); then
    for f in "$ROOT"/*=*.log; do
      [[ -f $f ]] || continue
      echo "== $(basename "$f") (every call so far; the log is appended to): programs compiled," \
           "not loaded from the cache:" \
           "$(grep -ci 'persistent compilation cache miss' "$f")"
    done
  fi
  if [[ $rc != 0 ]]; then
    echo "== sweep exited with $rc (124/130: RL_TIME_S=$RL_TIME_S reached); drawing what was logged"
    "$PY" experiments/sweep.py --base_flagfile=experiments/configs/countdown_gpu.flags \
      --grid="$GRID" --root="$ROOT" --plot_only
    for d in "$ROOT"/*=*/; do
      "$PY" -c "import sys; from r1jax import logs; logs.plot_run(sys.argv[1])" "$d" || true
    done
  fi
  echo "== RL done at $(( $(date +%s) - t0 )) s"
fi

# Collect: at most 8 files in $OUT.
files=()
for f in "$ROOT"/summary.json "$ROOT"/pass_1.png "$ROOT"/completion_length_mean.png \
         "$ROOT"/reflection_rate.png; do
  [[ -f $f ]] && cp "$f" "$OUT/" && files+=("$f")
done
tar_items=()
for p in "$BASE"/README.md "$BASE"/loss.png "$BASE"/samples.jsonl "$BASE"/pretrain_metrics.jsonl \
         "$ROOT"/*.log "$ROOT"/*=*/metrics.jsonl "$ROOT"/*=*/eval_metrics.jsonl \
         "$ROOT"/*=*/*.png "$ROOT"/*=*/samples; do
  [[ -e $p ]] && tar_items+=("$p")
done
if (( ${#tar_items[@]} )); then tar czf "$OUT/results.tar.gz" "${tar_items[@]}"; fi
if [[ -f "$ROOT/summary.json" ]]; then
  "$PY" - "$ROOT/summary.json" <<'PY'
import json, sys
runs = json.load(open(sys.argv[1]))["runs"]
for name, m in runs.items():
  row = [f"{name:>8}"]
  for key in ("pass@1", "format_rate", "completion_length_mean", "reflection_rate"):
    if key in m:
      row.append(f"{key} {m[key]['first']:.3f} -> {m[key]['last']:.3f}")
  print("  ".join(row))
PY
fi
echo "== total $(( $(date +%s) - t0 )) s; results in $OUT"
