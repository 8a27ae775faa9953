"""experiments/sweep.py: grid expansion, command lines, and plots of fake runs' metrics."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "experiments"))
import sweep  # noqa: E402  pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_expand_grid_is_the_cartesian_product_first_axis_slowest():
  points = sweep.expand_grid(["num_generations=2,4,8", "--beta=0,0.04"])
  assert points == [{"num_generations": g, "beta": b} for g in ("2", "4", "8")
                    for b in ("0", "0.04")]
  assert sweep.expand_grid([]) == [{}]
  assert sweep.run_name(points[1]) == "num_generations=2,beta=0.04"
  assert sweep.run_name({}) == "base"
  assert sweep.run_name({"stop_strings": "</answer>"}) == "stop_strings=__answer_"


@pytest.mark.parametrize("bad", ["beta", "beta=", "beta=0,,1", "=1,2", "be ta=1"])
def test_bad_axis_is_named(bad):
  with pytest.raises(ValueError, match="--grid"):
    sweep.expand_grid([bad])


def test_a_flag_named_twice_is_an_error():
  with pytest.raises(ValueError, match="twice"):
    sweep.expand_grid(["beta=0", "beta=0.1"])


def test_command_puts_the_point_last():
  cmd = sweep.command({"beta": "0"}, "runs/x", "base.flags", ["--max_steps=5", "--beta=1"],
                      "r1_zero.py")
  assert cmd[1:] == ["r1_zero.py", "--flagfile=base.flags", "--workdir=runs/x",
                     "--max_steps=5", "--beta=1", "--beta=0"]


def _fake_run(workdir, slope, steps=10):
  os.makedirs(workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for s in range(1, steps + 1):
      f.write(json.dumps({"step": s, "accuracy": slope * s, "completion_length_mean": 10 + s,
                          "reflection_rate": 0.1, "reward_mean": slope * s}) + "\n")
      f.write(json.dumps({"step": s, "eval/pass@1": 0.0}) + "\n")  # runner's mirrored evals
  with open(os.path.join(workdir, "eval_metrics.jsonl"), "w") as f:
    for s in (0, 5, 10):
      f.write(json.dumps({"step": s, "pass@1": slope * s, "cons@k": 0.0}) + "\n")


def test_curves_and_plots_from_fake_metrics(tmp_path):
  runs = {"a": str(tmp_path / "a"), "b": str(tmp_path / "b"), "missing": str(tmp_path / "m")}
  _fake_run(runs["a"], 0.01)
  _fake_run(runs["b"], 0.05)
  acc = sweep.curves(runs, "eval_metrics.jsonl", "pass@1")
  assert set(acc) == {"a", "b"}  # a run with no metrics is left out
  assert acc["b"] == ([0, 5, 10], [0.0, 0.25, 0.5])
  length = sweep.curves(runs, "metrics.jsonl", "completion_length_mean")
  assert length["a"][0] == list(range(1, 11))  # only rows that have the key
  # Smoothed over a window of max(1, 10 // 20) = 1: the raw values.
  assert length["a"][1] == [10.0 + s for s in range(1, 11)]
  paths = sweep.plot_sweep(runs, str(tmp_path / "plots"))
  names = sorted(os.path.basename(p) for p in paths)
  assert names == ["accuracy.png", "completion_length_mean.png", "pass_1.png",
                   "reflection_rate.png", "reward_mean.png"]
  assert all(os.path.getsize(p) > 5000 for p in paths)
  summary = sweep.summarize(runs)
  assert summary["b"]["pass@1"] == {"first": 0.0, "last": 0.5}
  assert summary["missing"] == {}


def test_cli_plot_only_and_bad_grid(tmp_path):
  root = tmp_path / "sweep"
  _fake_run(str(root / "beta=0"), 0.02)
  _fake_run(str(root / "beta=0.04"), 0.03)
  run = lambda *a: subprocess.run([sys.executable, os.path.join(REPO, "experiments", "sweep.py"),
                                   f"--root={root}", *a], capture_output=True, text=True,
                                  timeout=120, cwd=REPO)
  ok = run("--grid=beta=0,0.04", "--plot_only")
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert os.path.exists(root / "pass_1.png")
  summary = json.load(open(root / "summary.json"))
  assert summary["runs"]["beta=0.04"]["pass@1"]["last"] == pytest.approx(0.3)
  bad = run("--grid=beta")
  assert bad.returncode != 0 and "--grid='beta'" in bad.stderr


def test_child_env_turns_gpu_autotuning_off_for_parallel_runs():
  base = {"PATH": "/bin", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  env = sweep.child_env(base, parallel=3, mem_fraction=0.3)
  assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.3"
  assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2 --xla_gpu_autotune_level=0"
  assert base["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"  # not modified
  # One run at a time, an explicit level, or --parallel_autotune: left alone.
  assert sweep.child_env(base, parallel=1, mem_fraction=0.3) == base
  tuned = dict(base, XLA_FLAGS="--xla_gpu_autotune_level=4")
  assert sweep.child_env(tuned, parallel=3)["XLA_FLAGS"] == "--xla_gpu_autotune_level=4"
  assert "XLA_FLAGS" not in sweep.child_env({}, parallel=2, autotune=True)


def test_child_env_with_a_compile_cache_keeps_autotuning_and_shares_the_cache(tmp_path):
  base = {"PATH": "/bin"}
  env = sweep.child_env(base, parallel=3, mem_fraction=0.3, compile_cache=str(tmp_path))
  assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path)
  assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
  assert "XLA_FLAGS" not in env  # autotuning stays on: the first run's kernels are shared
  # The variables are JAX's own: a program run with them writes its compiled kernels there.
  out = subprocess.run([sys.executable, "-c", "import jax, jax.numpy as jnp; "
                        "print(jax.jit(lambda x: x @ x + 1)(jnp.ones((4, 4))).sum())"],
                       env=dict(os.environ, **{k: v for k, v in env.items() if k != "PATH"}),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert any(n.startswith("jit__lambda") for n in os.listdir(tmp_path))


STARTS_CHILD = r"""
import sys, time
log, marker = sys.argv[1], sys.argv[2]
open(log, "a").write(f"start {time.time()}\n")
if marker != "-":
  time.sleep(1.0)
  open(marker, "a").write('{"step": 0, "eval/pass@1": 0.1}\n')
  time.sleep(0.5)  # an evaluation alone does not count
  open(log, "a").write(f"evaluated {time.time()}\n")
  open(marker, "a").write('{"step": 1, "loss": 0.5}\n')
  open(log, "a").write(f"warm {time.time()}\n")
  time.sleep(0.5)
"""


def test_run_all_starts_the_others_once_the_first_is_warm(tmp_path):
  child = tmp_path / "child.py"
  child.write_text(STARTS_CHILD)
  marker = tmp_path / "metrics.jsonl"
  marker.write_text('{"step": 0, "loss": 1.0}\n')  # a resumed run: only a new step counts
  logs = {n: str(tmp_path / f"{n}.times") for n in "abc"}
  cmds = {"a": [sys.executable, str(child), logs["a"], str(marker)],
          "b": [sys.executable, str(child), logs["b"], "-"],
          "c": [sys.executable, str(child), logs["c"], "-"]}
  codes = sweep.run_all(cmds, str(tmp_path), 3, first_warm=sweep.trained(str(marker)))
  assert codes == {"a": 0, "b": 0, "c": 0}
  times = {n: dict(line.split() for line in open(p)) for n, p in logs.items()}
  warm = float(times["a"]["warm"])
  assert float(times["b"]["start"]) >= warm and float(times["c"]["start"]) >= warm
  assert warm > float(times["a"]["evaluated"])
  # Without first_warm all three start at once (before the first is warm).
  for p in logs.values():
    os.remove(p)
  sweep.run_all(cmds, str(tmp_path), 3)
  times = {n: dict(line.split() for line in open(p)) for n, p in logs.items()}
  assert float(times["b"]["start"]) < float(times["a"]["warm"])


def test_run_all_starts_the_others_when_the_first_exits_unwarmed(tmp_path):
  child = tmp_path / "child.py"
  child.write_text(STARTS_CHILD)
  logs = {n: str(tmp_path / f"{n}.times") for n in "ab"}
  cmds = {n: [sys.executable, str(child), logs[n], "-"] for n in "ab"}
  never = lambda: False  # e.g. a finished run that resumes, logs nothing and exits
  assert sweep.run_all(cmds, str(tmp_path), 2, first_warm=never) == {"a": 0, "b": 0}


COUNTING_CHILD = r"""
import os, signal, sys, time
got = []
signal.signal(signal.SIGINT, lambda *a: got.append(1))
open(sys.argv[1] + ".ready", "w").close()
deadline = time.time() + 20
while not got and time.time() < deadline:
  time.sleep(0.05)
time.sleep(1.0)  # "finishing its step": a second SIGINT would arrive in here
open(sys.argv[1], "w").write(str(len(got)))
"""


def test_interrupted_sweep_signals_each_run_once(tmp_path):
  """SIGINT to the sweep's whole process group (Ctrl-C, `timeout -s INT`) reaches each run
  exactly once: twice would stop a run inside its step, before it saves."""
  child = tmp_path / "child.py"
  child.write_text(COUNTING_CHILD)
  counts = [str(tmp_path / f"count{i}") for i in range(2)]
  driver = (f"import sys; sys.path.insert(0, {os.path.join(REPO, 'experiments')!r}); import sweep; "
            f"sweep.run_all({{'a': [sys.executable, {str(child)!r}, {counts[0]!r}], "
            f"'b': [sys.executable, {str(child)!r}, {counts[1]!r}]}}, {str(tmp_path)!r}, 2)")
  proc = subprocess.Popen([sys.executable, "-c", driver], start_new_session=True)
  deadline = time.time() + 60
  while not all(os.path.exists(c + ".ready") for c in counts):
    assert time.time() < deadline and proc.poll() is None
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGINT)
  proc.wait(timeout=60)
  assert [open(c).read() for c in counts] == ["1", "1"]


def test_read_jsonl_leaves_out_a_line_still_being_written(tmp_path):
  from r1jax import logs  # pylint: disable=import-outside-toplevel
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 0.5}\n\n{"step": 2, "lo')  # a writer mid-line
  assert logs.read_jsonl(str(path)) == [{"step": 1, "loss": 0.5}]
  path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')  # a finished bad line is an error
  with pytest.raises(json.JSONDecodeError):
    logs.read_jsonl(str(path))
