# Sourced by benchmarks/r1_zero_gpu.sh and benchmarks/r1_gpu.sh, from the repository root with
# PY (the Python) and OUT (where results go) set: logs this run into $OUT/log.txt, installs the
# packages the GPU image lacks (tensorboardX, math-verify: carried as wheels in .whl/, see the
# device tool's README) and checks the imports; sets the Countdown task both scripts train on.
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1

if [[ -d .whl ]] && ! "$PY" -c "import tensorboardX, math_verify" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" -c "import jax, tensorboardX, math_verify; print('JAX', jax.__version__, jax.devices())" || {
  echo "missing Python packages: carry tensorboardX and math-verify wheels in .whl/" >&2; exit 2; }

TASK_OPTIONS="min_count=3,max_count=3,max_number=10,max_target=50,question_style=short,num_test=200"
