"""Timing helpers shared by the benchmark scripts."""

import time


def median_seconds(fn, repeats: int) -> float:
  """Median wall time of `repeats` calls of fn() (fn must block until its work is done)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2]
