"""Does a held-out evaluation give the same numbers when several processes share one device?

Runs the Countdown evaluation of one checkpoint (`r1jax.eval.evaluate_policy`, as
experiments/r1_zero.py calls it: compact template, "</answer>" stop, T=0.6, top-p 0.95) in
--processes concurrent processes, once per entry of --xla_flags, and prints one row per process:
pass@1, format rate, mean length, truncated share. Every row of a setting should match the
others (same key, same problems); a row far below them is a process whose compiled program
computes wrong results.

Measured with it on one H100 (2026-11-23, jax 0.11.2, a medium base pretrained for 60 s): four
concurrent processes with XLA's default autotuning all sampled corrupted text (format rate
~0.12, pass@1 ~0.007) where one process alone gives 0.97 / 0.066; with
--xla_gpu_autotune_level=0 all four gave the lone result (docs/r1_zero.md). On an H200
(2026-12-01) a lone process's evaluation with autotuning on was corrupted too, so r1jax's
sampler now compiles with GPU autotuning off in every process (r1jax.sampling.COMPILER_OPTIONS),
which made its rollouts 2.8x slower there (since 2026-12-02 with cuBLAS GEMMs too: untuned Triton
GEMMs were 3.5x slower than cuBLAS at the Qwen2.5-0.5B shape). --sampler_options tries other settings of the
sampler's options (R1JAX_SAMPLER_XLA_OPTIONS) for soundness and speed:

  python benchmarks/concurrent_eval.py --checkpoint runs/r1_zero_gpu/base_medium \
      --processes 1 --sampler_options=default --sampler_options= \
      --sampler_options=xla_gpu_enable_triton_gemm=false
  python benchmarks/concurrent_eval.py --small   # CPU check of the plumbing (~1 min)

Each process gets XLA_PYTHON_CLIENT_MEM_FRACTION=0.9/processes of the device's memory.
--warm_first runs one process alone before the concurrent ones (its row is "warm"), e.g. to
fill an autotune cache (--xla_flags=--xla_gpu_per_fusion_autotune_cache_dir=DIR) that the
concurrent ones then read.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK_OPTIONS = dict(min_count=3, max_count=3, max_number=10, max_target=50,
                    question_style="short", num_test=200)


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", default="", help="r1jax/HF directory of a Countdown policy")
  p.add_argument("--processes", type=int, default=None, help="default 4 (--small: 2)")
  p.add_argument("--xla_flags", action="append", default=None,
                 help="XLA_FLAGS of one setting (repeatable; default: '' only)")
  p.add_argument("--sampler_options", action="append", default=None,
                 help="R1JAX_SAMPLER_XLA_OPTIONS of one setting, the XLA options the sampler "
                      "compiles with (repeatable; 'default': r1jax.sampling's own, GPU "
                      "autotuning and Triton GEMMs off; '': XLA's defaults). Each is tried with each --xla_flags")
  p.add_argument("--num_problems", type=int, default=64)
  p.add_argument("--num_samples", type=int, default=16)
  p.add_argument("--batch_size", type=int, default=64, help="problems per sampler call")
  p.add_argument("--max_prompt_length", type=int, default=36)
  p.add_argument("--new_tokens", type=int, default=384)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--warm_first", action="store_true",
                 help="per setting, one process alone before the concurrent ones (e.g. to fill "
                      "an autotune cache that they then read)")
  p.add_argument("--small", action="store_true",
                 help="CPU check: the committed tiny base, 2 processes, a few short samples")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--choose_from", default="", help=argparse.SUPPRESS)  # choose_sampler_options.sh
  p.add_argument("--choice_file", default="", help=argparse.SUPPRESS)
  p.add_argument("--tol", type=float, default=0.05, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.choose_from:
    return args
  if args.small:
    args.checkpoint = args.checkpoint or os.path.join(REPO, "checkpoints", "countdown_base_tiny")
    args.processes = 2 if args.processes is None else args.processes
    args.num_problems, args.num_samples = 4, 2
    args.batch_size, args.new_tokens, args.dtype = 4, 96, "float32"
  args.processes = 4 if args.processes is None else args.processes
  if not args.checkpoint:
    p.error("--checkpoint is required (or --small)")
  if not os.path.isdir(args.checkpoint):
    p.error(f"--checkpoint={args.checkpoint!r} is not a directory")
  if args.processes < 1:
    p.error(f"--processes={args.processes} must be >= 1")
  args.xla_flags = args.xla_flags if args.xla_flags is not None else [""]
  args.sampler_options = args.sampler_options or ["default"]
  return args


def evaluate(args) -> dict:
  """One evaluation in this process; the report's headline numbers."""
  import jax  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, REPO)
  from r1jax import eval as r1eval  # pylint: disable=import-outside-toplevel
  from r1jax import hf, rewards, tasks  # pylint: disable=import-outside-toplevel
  from r1jax.tokenizer import load_tokenizer  # pylint: disable=import-outside-toplevel
  config, params = hf.load_hf_checkpoint(args.checkpoint)
  config = config.replace(dtype=args.dtype)
  tok_json = os.path.join(args.checkpoint, "tokenizer.json")
  tok = load_tokenizer(args.checkpoint if os.path.exists(tok_json) else "char")
  task = tasks.get_task("countdown", **TASK_OPTIONS)
  problems = task.split("test", 0)[:args.num_problems]
  score = functools.partial(rewards.score_completions, reward_kind=task.reward_kind,
                            config=rewards.RewardConfig(executor="inline"),
                            prefix=tasks.completion_prefix("compact"))
  t0 = time.perf_counter()
  report, _ = r1eval.evaluate_policy(
      params, config, tok, problems,
      format_prompt=functools.partial(tasks.format_problem, template="compact"),
      score_fn=score, extract_fn=rewards.extract_answer, num_samples=args.num_samples,
      key=jax.random.PRNGKey(1), max_prompt_length=args.max_prompt_length,
      max_new_tokens=args.new_tokens, batch_size=args.batch_size,
      stop_strings=("</answer>",), add_bos=tok.bos_id is not None)
  keys = ("pass@1", "format_rate", "completion_length_mean", "truncated_fraction")
  from r1jax import sampling  # pylint: disable=import-outside-toplevel
  return dict({k: report[k] for k in keys}, seconds=time.perf_counter() - t0,
              device=str(jax.devices()[0].device_kind), attention=sampling.DEFAULT_ATTENTION)


def run_setting(argv, args, xla_flags: str, processes: int,
                sampler_options: str = "default") -> list[dict]:
  """`processes` concurrent workers with XLA_FLAGS=xla_flags and R1JAX_SAMPLER_XLA_OPTIONS=
  sampler_options (from the environment; a worker ignores its own --xla_flags and
  --sampler_options); their reports (or errors)."""
  env = dict(os.environ, XLA_FLAGS=xla_flags,
             XLA_PYTHON_CLIENT_MEM_FRACTION=f"{0.9 / args.processes:.2f}")
  env.pop("R1JAX_SAMPLER_XLA_OPTIONS", None)
  if sampler_options != "default":
    env["R1JAX_SAMPLER_XLA_OPTIONS"] = sampler_options
  cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker"]
  procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for _ in range(processes)]
  results = []
  for proc in procs:
    out, err = proc.communicate()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
      results.append({"error": (err.strip().splitlines() or ["no output"])[-1]})
    else:
      results.append(json.loads(lines[-1]))
  return results


def choose_setting(rows: list[tuple[str, str, str, str]], tol: float) -> tuple[str, list[str]]:
  """For tools/gpu_jobs/choose_sampler_options.sh: rows of (options, pass@1, format rate, ms per
  decode step), as text ('error' where a run failed), the first row the reference ('default').
  A setting is sound when its pass@1 and format rate are within `tol` of the reference's; the
  choice is the fastest sound one ('default' when none beats it). Returns (choice, table)."""
  def num(s):
    return None if s in ("", "error") else float(s)
  ref = rows[0]
  if num(ref[1]) is None or num(ref[2]) is None:
    raise ValueError(f"the reference setting {ref[0]!r} failed: no choice made")
  table = ["options | pass@1 | format | ms per decode step (sampler.py) | sound"]
  best, best_ms = ref[0], num(ref[3])
  for opts, p, f, ms in rows:
    sound = None not in (num(p), num(f)) and (abs(num(p) - num(ref[1])) <= tol
                                             and abs(num(f) - num(ref[2])) <= tol)
    table.append(f"{opts or repr('')} | {p} | {f} | {ms} | {'yes' if sound else 'NO'}")
    if sound and num(ms) is not None and (best_ms is None or num(ms) < best_ms):
      best, best_ms = opts, num(ms)
  table.append(f"chosen: {best!r} ({best_ms} ms per step)")
  return best, table


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  if args.choose_from:
    with open(args.choose_from) as f:
      rows = [tuple(line.rstrip("\n").split("\t")) for line in f if line.strip()]
    best, table = choose_setting(rows, args.tol)
    print("\n".join(table))
    with open(args.choice_file, "w") as f:
      f.write(best)
    return 0
  if args.worker:
    print(json.dumps(evaluate(args)), flush=True)
    return 0
  print(f"checkpoint {args.checkpoint}: {args.num_problems} problems x {args.num_samples} "
        f"samples, {args.new_tokens} new tokens, {args.dtype}, {args.processes} processes")
  print("XLA_FLAGS | sampler options | process | pass@1 | format | mean length | truncated | "
        "seconds | attention")
  failed = 0
  for flags_ in args.xla_flags:
    for opts in args.sampler_options:
      rows = []
      if args.warm_first:
        rows += [("warm", r) for r in run_setting(argv, args, flags_, 1, opts)]
      rows += list(enumerate(run_setting(argv, args, flags_, args.processes, opts)))
      for i, r in rows:
        head = f"{flags_ or '-'} | {opts or '-'} | {i}"
        if "error" in r:
          failed += 1
          print(f"{head} | error: {r['error']}")
          continue
        print(f"{head} | {r['pass@1']:.3f} | {r['format_rate']:.3f} | "
              f"{r['completion_length_mean']:.1f} | {r['truncated_fraction']:.3f} | "
              f"{r['seconds']:.1f} | {r['attention']}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
