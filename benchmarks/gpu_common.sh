# Sourced by benchmarks/r1_zero_gpu.sh and benchmarks/r1_gpu.sh, from the repository root with
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
