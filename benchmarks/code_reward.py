"""Throughput of execution-based code rewards (r1jax.sandbox.score_code_batch).

A batch of code_expression completions: mostly correct, some wrong, a few syntax errors, answers
with no program, and a few that never terminate (`any(iter(int, 1))` loops forever inside an
expression). Prints completions scored per second for a few pool sizes.

  python benchmarks/code_reward.py            # batch of 256
  python benchmarks/code_reward.py --small    # batch of 32, quick CPU check
"""

import argparse
import os
import random
import time

from r1jax import sandbox
from r1jax.tasks.code import CodeExpressionTask, format_answer


def make_batch(size: int, timeout_share: float, seed: int = 0):
  problems = CodeExpressionTask(num_train=size).split("train", seed)
  rng = random.Random(seed)
  completions, kinds = [], []
  for problem in problems:
    u = rng.random()
    if u < timeout_share:
      kind, text = "timeout", "<answer>any(iter(int, 1))</answer>"
    elif u < 0.15:
      kind, text = "wrong", "<answer>x+1000</answer>"
    elif u < 0.20:
      kind, text = "error", "<answer>x +* 2</answer>"
    elif u < 0.22:
      kind, text = "no_program", "<think>hmm</think> I give up."
    else:
      kind, text = "correct", format_answer(problem, "fit the points")
    completions.append(text)
    kinds.append(kind)
  return completions, problems, kinds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true", help="batch of 32 instead of 256")
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--timeout_s", type=float, default=1.0)
  parser.add_argument("--timeout_share", type=float, default=0.02)
  parser.add_argument("--workers", type=str, default=None,
                      help="comma-separated pool sizes (default: 1,2,...,cpu_count)")
  args = parser.parse_args()
  size = args.batch or (32 if args.small else 256)
  cpus = os.cpu_count() or 1
  workers = ([int(w) for w in args.workers.split(",")] if args.workers else
             sorted({1, max(1, cpus // 2), cpus, 2 * cpus}))

  t0 = time.monotonic()
  caps = sandbox.sandbox_capabilities()
  probe_s = time.monotonic() - t0
  layers = [k for k in ("namespaces", "readonly_fs", "seccomp", "audit_hook") if caps[k]]
  completions, problems, kinds = make_batch(size, args.timeout_share)
  counts = {k: kinds.count(k) for k in sorted(set(kinds))}
  single = sandbox.run_completion(completions[kinds.index("correct")],
                                  problems[kinds.index("correct")])
  print(f"cpus={cpus} layers={'+'.join(layers)} probe={probe_s * 1e3:.0f} ms "
        f"one correct run={single.time_s * 1e3:.0f} ms")
  print(f"batch={size} {counts} timeout_s={args.timeout_s}")
  print(f"{'workers':>7} {'time_s':>7} {'compl/s':>8} {'timeouts':>8} {'errors':>6} "
        f"{'no_prog':>7} {'reward':>6}")
  for w in workers:
    rewards, stats = sandbox.score_code_batch(completions, problems, timeout_s=args.timeout_s,
                                              max_workers=w)
    expected = [1.0 if k == "correct" else 0.0 for k in kinds]
    assert list(rewards) == expected, "rewards disagree with the kinds of completions"
    print(f"{w:>7} {stats['time_s']:>7.2f} {stats['completions_per_s']:>8.1f} "
          f"{stats['timeouts']:>8} {stats['errors']:>6} {stats['no_program']:>7} "
          f"{stats['mean_reward']:>6.3f}")


if __name__ == "__main__":
  main()
