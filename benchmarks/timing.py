"""Helpers shared by the benchmark scripts: timing, profiling, CPU smoke-run set-up."""

import os
import time


def use_fake_cpu_devices(count: int = 8):
  """Before jax is imported: run on the CPU as `count` devices (the --small smoke runs)."""
  os.environ["JAX_PLATFORMS"] = "cpu"
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def comma_list(kind, text: str, flag: str) -> list:
  """`--flag=a,b,c` as a list of kind; a bad item exits naming the flag."""
  try:
    return [kind(x) for x in text.split(",") if x]
  except ValueError:
    raise SystemExit(f"--{flag}={text!r} must be a comma-separated list of {kind.__name__}")


def median_seconds(fn, repeats: int) -> float:
  """Median wall time of `repeats` calls of fn() (fn must block until its work is done)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2]


def device_op_times(fn, top: int = 25):
  """Runs fn() once under the JAX profiler; returns (total ms, [(op name, ms, count)]) of the
  events on the accelerator's planes ("/device:..."), largest first, or (0, []) where the backend
  records none (CPU). For finding where a step's time goes without TensorBoard."""
  import collections  # pylint: disable=import-outside-toplevel
  import glob  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  from jax._src.lib import _profile_data  # pylint: disable=import-outside-toplevel

  logdir = tempfile.mkdtemp(prefix="r1jax_profile_")
  jax.profiler.start_trace(logdir)
  try:
    fn()
  finally:
    jax.profiler.stop_trace()
  totals, counts = collections.Counter(), collections.Counter()
  for path in glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True):
    for plane in _profile_data.ProfileData.from_file(path).planes:
      if not plane.name.startswith("/device:"):
        continue
      for line in plane.lines:
        # Kernels appear once on their stream line and again on summary lines ("XLA Ops",
        # "XLA Modules"); keep the stream lines only.
        if not line.name.lower().startswith("stream"):
          continue
        for event in line.events:
          totals[event.name] += event.duration_ns / 1e6
          counts[event.name] += 1
  ops = [(name, ms, counts[name]) for name, ms in totals.most_common(top)]
  return sum(totals.values()), ops
