r"""Runs experiments/r1_zero.py over a grid of flag values and draws their curves together.

  python experiments/sweep.py --base_flagfile=experiments/configs/countdown_tiny.flags \
      --grid=num_generations=2,4,8 --grid=beta=0,0.04 --root=runs/sweep_g_beta --parallel=2

Each point of the grid (the Cartesian product of the --grid axes) is one run of r1_zero.py with
the base flagfile, its own --workdir (<root>/<name>, e.g. runs/sweep_g_beta/num_generations=4,
beta=0) and the point's flags; --extra flags go to every run. Runs go sequentially or
--parallel at a time; rerunning resumes finished and unfinished runs alike (r1_zero.py resumes
from its workdir). Then one PNG per metric in <root>/ draws every run on shared axes, and
<root>/summary.json holds each run's first and last values. --plot_only redraws without running.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence

from absl import app, flags

from r1jax import logs

FLAGS = flags.FLAGS
flags.DEFINE_string("base_flagfile", "experiments/configs/countdown_tiny.flags",
                    "Flagfile every run starts from.")
flags.DEFINE_multi_string("grid", [], "An axis of the grid: flag=v1,v2,... (repeatable).")
flags.DEFINE_multi_string("extra", [], "A flag passed to every run, e.g. --extra=--max_steps=50.")
flags.DEFINE_string("root", "runs/sweep", "Directory holding one workdir per run and the plots.")
flags.DEFINE_integer("parallel", 1, "Runs at a time.")
flags.DEFINE_float("mem_fraction", 0.0, "With --parallel > 1 on one accelerator: each process's "
                   "XLA_PYTHON_CLIENT_MEM_FRACTION (0: leave JAX's default).")
flags.DEFINE_bool("parallel_autotune", False, "With --parallel > 1: let XLA autotune GPU kernels "
                  "in each process (off by default: see child_env).")
flags.DEFINE_string("compile_cache", "", "With --parallel > 1 on one GPU: a directory for JAX's "
                    "persistent compilation cache (and XLA's per-fusion autotune cache) shared by "
                    "the runs. The first run starts alone and compiles, autotuning on, until it "
                    "logs its first step; the others then start and load its kernels instead of "
                    "autotuning concurrently (see child_env). Empty: autotuning off instead.")
flags.DEFINE_bool("plot_only", False, "Only redraw the plots of existing runs.")
flags.DEFINE_string("script", "", "Training script (default: r1_zero.py next to this file).")

# (metrics file, key, y label, title) of each PNG; pass@1 is the held-out evaluation.
METRICS = (
    ("eval_metrics.jsonl", "pass@1", "held-out pass@1", "accuracy (cf. R1 paper Fig. 2)"),
    ("eval_metrics.jsonl", "format_rate", "held-out format rate", "well-formed answers"),
    ("metrics.jsonl", "accuracy", "train accuracy (smoothed)", "train accuracy"),
    ("metrics.jsonl", "completion_length_mean", "mean response length (tokens, smoothed)",
     "response length (cf. R1 paper Fig. 3)"),
    ("metrics.jsonl", "reflection_rate", "share of reflective completions (smoothed)",
     "reflection"),
    ("metrics.jsonl", "reward_mean", "mean reward (smoothed)", "reward"),
)


def parse_axis(spec: str) -> tuple[str, list[str]]:
  """'beta=0,0.04' -> ('beta', ['0', '0.04']); raises naming the bad --grid entry."""
  name, sep, values = spec.partition("=")
  name = name.strip().lstrip("-")
  items = [v.strip() for v in values.split(",")] if sep else []
  if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or not all(items):
    raise ValueError(f"--grid={spec!r}: expected flag=value1,value2,...")
  return name, items


def expand_grid(specs: Sequence[str]) -> list[dict[str, str]]:
  """The Cartesian product of the axes, first axis slowest: [{'flag': 'value', ...}, ...].
  No axes: one empty point (the base flagfile alone). A flag named twice raises."""
  axes = [parse_axis(s) for s in specs]
  names = [n for n, _ in axes]
  if len(set(names)) != len(names):
    raise ValueError(f"--grid names a flag twice: {names}")
  return [dict(zip(names, values)) for values in itertools.product(*(v for _, v in axes))]


def run_name(point: dict[str, str]) -> str:
  """'num_generations=4,beta=0' (the workdir name; 'base' for the empty point)."""
  name = ",".join(f"{k}={v}" for k, v in point.items()) or "base"
  return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)


def command(point: dict[str, str], workdir: str, base_flagfile: str, extra: Sequence[str],
            script: str) -> list[str]:
  """The r1_zero.py command line of one point: flagfile, workdir, extras, then the point's
  flags (last, so they win over the flagfile and the extras)."""
  return ([sys.executable, script, f"--flagfile={base_flagfile}", f"--workdir={workdir}"]
          + list(extra) + [f"--{k}={v}" for k, v in point.items()])


# Measured on one H100 (jax 0.11.2, 2026-11-23): four concurrent copies of the same held-out
# evaluation (25M model, bf16) all sampled corrupted text (format rate 0.12, pass@1 0.007) while
# one alone, also with a 0.2 memory fraction, gave format 0.97 and pass@1 0.066; with
# --xla_gpu_autotune_level=0 all four gave exactly the lone result. On an H200 (2026-12-01) a
# lone process's evaluation was corrupted too, so the sampler now compiles with autotuning off
# in every process (r1jax.sampling.COMPILER_OPTIONS) and the fault is not about concurrency
# alone. Turning it off for whole processes, as below, also slows the GEMM-heavy updates and
# pretraining 5-7x (BENCHMARKS.md); --compile_cache is the faster way to share a GPU.
NO_AUTOTUNE = "--xla_gpu_autotune_level=0"


def child_env(environ: dict, parallel: int, mem_fraction: float = 0.0,
              autotune: bool = False, compile_cache: str = "") -> dict:
  """The environment of each run: with parallel > 1, a share of accelerator memory each and
  either a shared compilation cache (`compile_cache`: autotuning stays on, and run_all lets the
  first run fill the cache alone) or, unless `autotune` or XLA_FLAGS already sets a level, GPU
  autotuning off; see NO_AUTOTUNE."""
  env = dict(environ)
  if parallel > 1 and mem_fraction > 0:
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = str(mem_fraction)
  if compile_cache:
    env.update(JAX_COMPILATION_CACHE_DIR=os.path.abspath(compile_cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
               JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES="xla_gpu_per_fusion_autotune_cache_dir")
    return env
  xla_flags = env.get("XLA_FLAGS", "")
  if parallel > 1 and not autotune and "xla_gpu_autotune_level" not in xla_flags:
    env["XLA_FLAGS"] = f"{xla_flags} {NO_AUTOTUNE}".strip()
  return env


def _train_rows(path: str) -> int:
  """Rows of a run's metrics.jsonl that log a training step (not only an evaluation)."""
  return sum(any(k != "step" and not k.startswith("eval/") for k in row)
             for row in logs.read_jsonl(path))


def trained(metrics_path: str) -> Callable[[], bool]:
  """A test that is true once the run writing `metrics_path` (its metrics.jsonl) has logged a
  training step more than now: by then every program of a step and of an evaluation at its
  start has been compiled. Once true it stays true without reading the file again."""
  rows0, seen = _train_rows(metrics_path), False

  def test() -> bool:
    nonlocal seen
    seen = seen or _train_rows(metrics_path) > rows0
    return seen

  return test


def run_all(commands: dict[str, list[str]], root: str, parallel: int,
            env: Optional[dict] = None, stop_timeout_s: float = 50.0,
            first_warm: Optional[Callable[[], bool]] = None) -> dict[str, int]:
  """Runs the commands, `parallel` at a time, each logging to <root>/<name>.log; returns the
  exit codes by name. With `first_warm`, the first command runs alone until first_warm() is
  true or it exits. Interrupted, it sends each running command one SIGINT and gives it
  `stop_timeout_s` to save before killing it."""
  pending, running, codes = list(commands.items()), {}, {}
  first = pending[0][0] if pending else None
  try:
    while pending or running:
      while pending and len(running) < parallel:
        if first_warm is not None and first in running and not first_warm():
          break
        name, cmd = pending.pop(0)
        log = open(os.path.join(root, f"{name}.log"), "a")  # pylint: disable=consider-using-with
        print(f"[sweep] start {name}: {' '.join(cmd)}", flush=True)
        # A session of its own: a Ctrl-C or a time guard's SIGINT to the sweep's process group
        # reaches each run once, forwarded below (two would stop it inside a step).
        running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True), log, time.time())
      for name, (proc, log, t0) in list(running.items()):
        if proc.poll() is not None:
          log.close()
          codes[name] = proc.returncode
          print(f"[sweep] done {name}: exit {proc.returncode} in {time.time() - t0:.0f}s",
                flush=True)
          del running[name]
      time.sleep(0.2)
  finally:  # interrupted (e.g. a time limit): stop the runs still going, politely first; each
    # finishes its step in progress (an evaluation too) and saves it.
    for name, (proc, log, _) in running.items():
      proc.send_signal(signal.SIGINT)
    deadline = time.time() + stop_timeout_s  # one for all (a time guard kills the sweep soon)
    for name, (proc, log, _) in running.items():
      try:
        proc.wait(timeout=max(deadline - time.time(), 0.1))
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
      log.close()
      print(f"[sweep] stopped {name}", flush=True)
  return codes


def curves(workdirs: dict[str, str], file: str, key: str) -> dict[str, tuple[list, list]]:
  """{run name: (steps, values)} of `key` in each workdir's `file` (runs without it left out);
  train metrics are smoothed over a window of 1/20 of the run."""
  out = {}
  for name, wd in workdirs.items():
    rows = [r for r in logs.read_jsonl(os.path.join(wd, file)) if key in r and "step" in r]
    if rows:
      steps, values = [r["step"] for r in rows], [float(r[key]) for r in rows]
      if file == "metrics.jsonl":
        values = logs.smooth(values, max(1, len(values) // 20))
      out[name] = (steps, values)
  return out


def plot_sweep(workdirs: dict[str, str], out_dir: str, metrics=METRICS) -> list[str]:
  """One PNG per metric with every run's curve on shared axes; returns the paths written."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for file, key, ylabel, title in metrics:
    data = curves(workdirs, file, key)
    if not data:
      continue
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, (steps, values) in data.items():
      ax.plot(steps, values, marker="o" if file != "metrics.jsonl" else None, label=name)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, re.sub(r"[^A-Za-z0-9_]", "_", key) + ".png"))
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
  return paths


def summarize(workdirs: dict[str, str], metrics=METRICS) -> dict[str, dict]:
  """{run: {key: {'first', 'last'}}} of the raw (unsmoothed) values."""
  out = {}
  for name, wd in workdirs.items():
    out[name] = {}
    for file, key, _, _ in metrics:
      rows = [r[key] for r in logs.read_jsonl(os.path.join(wd, file)) if key in r]
      if rows:
        out[name][key] = {"first": rows[0], "last": rows[-1]}
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; flags go through --extra")
  if FLAGS.parallel < 1:
    raise app.UsageError(f"--parallel={FLAGS.parallel} must be >= 1")
  if not FLAGS.plot_only and not os.path.exists(FLAGS.base_flagfile):
    raise app.UsageError(f"--base_flagfile={FLAGS.base_flagfile!r} does not exist")
  try:
    points = expand_grid(FLAGS.grid)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  script = FLAGS.script or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                        "r1_zero.py")
  os.makedirs(FLAGS.root, exist_ok=True)
  workdirs = {run_name(p): os.path.join(FLAGS.root, run_name(p)) for p in points}
  codes = {}
  if not FLAGS.plot_only:
    cache = FLAGS.compile_cache if FLAGS.parallel > 1 else ""
    env = child_env(dict(os.environ), FLAGS.parallel, FLAGS.mem_fraction,
                    FLAGS.parallel_autotune, cache)
    cmds = {run_name(p): command(p, workdirs[run_name(p)], FLAGS.base_flagfile, FLAGS.extra,
                                 script) for p in points}
    first_warm = None
    if cache:
      os.makedirs(cache, exist_ok=True)
      first_warm = trained(os.path.join(workdirs[run_name(points[0])], "metrics.jsonl"))
    codes = run_all(cmds, FLAGS.root, FLAGS.parallel, env, first_warm=first_warm)
  paths = plot_sweep(workdirs, FLAGS.root)
  summary = summarize(workdirs)
  with open(os.path.join(FLAGS.root, "summary.json"), "w") as f:
    json.dump({"exit_codes": codes, "runs": summary}, f, indent=2)
  print(json.dumps({"plots": paths, "exit_codes": codes}, indent=2))
  failed = {k: v for k, v in codes.items() if v != 0}
  if failed:
    sys.exit(f"[sweep] runs failed: {failed} (logs in {FLAGS.root}/<name>.log)")


if __name__ == "__main__":
  app.run(main)
