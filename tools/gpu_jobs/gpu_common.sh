# Sourced by tools/gpu_jobs/r1_zero_gpu.sh and tools/gpu_jobs/r1_gpu.sh, from the repository root with
# PY (the Python) and OUT (where results go) set: logs this run into $OUT/log.txt, installs the
# packages the GPU image lacks (tensorboardX, math-verify: carried as wheels in .whl/, see the
# device tool's README) and checks the imports; sets the Countdown task both scripts train on.
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1

# Whether the packages are there, without importing them (importing jax and math-verify takes ~7 s
# on a CPU, and the scripts source this file several times per run).
have() {
  "$PY" -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))' "$@"
}
if [[ -d .whl ]] && ! have tensorboardX math_verify latex2sympy2_extended; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
have jax tensorboardX math_verify latex2sympy2_extended || {
  echo "missing Python packages: carry tensorboardX and math-verify wheels in .whl/" >&2; exit 2; }
"$PY" -c 'import importlib.metadata as m; print("JAX", m.version("jax"), "math-verify", m.version("math-verify"))'

TASK_OPTIONS="min_count=3,max_count=3,max_number=10,max_target=50,question_style=short,num_test=200"
# The pretraining corpus of both bases (medium and small): searches that go through the attempts
# in a fixed order after a random first pair (r1jax.corpus.systematic_attempts), up to 32 of
# them. Since 2026-12-02 (later); before, distinct random attempts with --mix_single=0.5
# --mix_search=0.35 --mix_give_up=0.1 --continue_prob=0.5 --max_attempts=8, whose R1-Zero runs
# plateaued at pass@1 0.58-0.61. With the mix 0.6 / 0.15 / 0.2 a probe went from 0.20 to 0.72;
# search 0.1 and give-up 0.25 (here) bring the solved share of the corpus from 16.5% to 14.8%,
# for a base at or below the 20% of issue 4 (docs/r1_zero.md, "Systematic search probe").
# That base read 0.231-0.249 all the same (three seeds, 2026-12-02): its pass@1 follows the share
# of completions that search (0.45 at step 0), not the corpus's solved share, which stays ~14%
# whatever the mix (single attempts are right by luck about as often). Since 2026-12-03 single
# 0.72 / search 0.07 / give-up 0.16: a quarter (0.23) rather than a third (0.35) of the documents
# search, for a base that searches less often at step 0.
CORPUS_FLAGS=(--search_order=systematic --continue_prob=0.8 --max_attempts=32 --mix_single=0.72
              --mix_search=0.07 --mix_give_up=0.16 --mix_malformed=0.05 --max_length=2048)
