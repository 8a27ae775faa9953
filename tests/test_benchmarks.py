"""The benchmark scripts run in their --small CPU mode and print consistent tables."""

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
# The shell scripts that queue the GPU jobs through the device tool.
GPU_JOBS = os.path.join(os.path.dirname(__file__), "..", "tools", "gpu_jobs")
sys.path.insert(0, BENCHMARKS)

import grpo_step  # noqa: E402  pylint: disable=wrong-import-position
import sampler  # noqa: E402  pylint: disable=wrong-import-position


def _table(text: str) -> dict:
  """{phase: (ms, share %)} from the ` | `-separated rows of grpo_step's output."""
  rows = {}
  for line in text.splitlines():
    cells = line.split(" | ")
    if len(cells) == 4 and cells[0] != "phase":
      rows[cells[0]] = (float(cells[1]), float(cells[2].rstrip("%")))
  return rows


@pytest.mark.bench
def test_grpo_step_small_prints_every_phase(capsys):
  """The --small run end to end: the table lists every phase and the step's work. No timing is
  asserted (a loaded CI machine varies); how the phases split a step is checked exactly by
  test_phase_times_split_logprob_calls."""
  assert grpo_step.main(["--small"]) == 0
  out = capsys.readouterr().out
  assert out.startswith("device: ")
  rows = _table(out)
  assert set(rows) == set(grpo_step.PHASES) | {"total"}
  assert all(np.isfinite(v) for row in rows.values() for v in row), out
  # --small: 2 prompts x 4 completions, 16 tokens each, none stopped early.
  assert "generated tokens/step: 128;" in out


def test_phase_times_split_logprob_calls():
  metrics = {"sample_time_s": 1.0, "reward_time_s": 0.5, "update_time_s": 2.0}
  both = grpo_step.phase_times(metrics, [0.25, 0.125], 4.0, num_iterations=2, beta=0.04)
  assert both == {"rollout": 1.0, "rewards": 0.5, "old_logprobs": 0.25, "ref_logprobs": 0.125,
                  "update": 2.0, "other": 0.125}
  ref_only = grpo_step.phase_times(metrics, [0.25], 4.0, num_iterations=1, beta=0.04)
  assert (ref_only["old_logprobs"], ref_only["ref_logprobs"]) == (0.0, 0.25)
  old_only = grpo_step.phase_times(metrics, [0.25], 4.0, num_iterations=3, beta=0.0)
  assert (old_only["old_logprobs"], old_only["ref_logprobs"]) == (0.25, 0.0)


def test_bench_tokenizer_forces_no_stop_and_folds_ids():
  from r1jax.tokenizer import CharTokenizer  # pylint: disable=import-outside-toplevel
  char = CharTokenizer()
  tok = grpo_step.BenchTokenizer(char, allow_stop=False)
  assert tok.eos_ids == ()
  assert grpo_step.BenchTokenizer(char, allow_stop=True).eos_ids == char.eos_ids
  ids = char.encode("1+2")
  assert tok.decode(ids) == "1+2"
  assert tok.decode([i + 3 * char.vocab_size for i in ids]) == "1+2"
  assert tok.encode("ab", add_bos=True) == char.encode("ab", add_bos=True)


@pytest.mark.parametrize("argv, flag", [
    (["--num_generations", "1"], "--num_generations"),
    (["--prompts", "0"], "--prompts"),
    (["--checkpoint", "/no/such/dir"], "--checkpoint"),
])
def test_bad_flags_name_the_flag(argv, flag, capsys):
  with pytest.raises(SystemExit):
    grpo_step.parse_args(argv)
  assert flag in capsys.readouterr().err


def test_short_prompt_len_is_named():
  # Raised before anything is compiled: "Make 12 with 3, 4, 5.\n<think>" needs ~30 ids.
  with pytest.raises(SystemExit, match="--prompt_len=8 is shorter"):
    grpo_step.main(["--preset", "tiny", "--dtype", "float32", "--prompt_len", "8",
                    "--new_tokens", "4"])


@pytest.fixture
def own_compilations(monkeypatch):
  """The workers compile their programs themselves, without the session's compilation cache
  (conftest): what these tests compare is what each process's own compilation computes."""
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)


@pytest.mark.bench
@pytest.mark.usefixtures("own_compilations")
def test_concurrent_eval_small_rows_agree_with_a_lone_run(capsys):
  """The --small run with --warm_first: a lone process, then two concurrent CPU processes,
  evaluate the committed base to the same numbers (the property the GPU run checks), printed
  one row per process."""
  import concurrent_eval  # pylint: disable=import-outside-toplevel
  assert concurrent_eval.main(["--small", "--warm_first"]) == 0  # --small: 2 processes
  rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()
          if line.startswith("- | ")]
  assert [r[2] for r in rows] == ["warm", "0", "1"]
  assert all(r[1] == "default" for r in rows)
  assert rows[0][3:7] == rows[1][3:7] == rows[2][3:7]  # pass@1, format, length, truncated
  assert float(rows[0][4]) > 0.5  # the base formats its answers: real completions were scored


@pytest.mark.bench
def test_concurrent_eval_tries_each_sampler_setting(capsys):
  """--sampler_options reaches the workers' sampler (on CPU the GPU options change nothing, so
  both settings give the same numbers; a bad setting's error is tested in test_sampling)."""
  import concurrent_eval  # pylint: disable=import-outside-toplevel
  assert concurrent_eval.main(["--small", "--processes=1", "--sampler_options=default",
                               "--sampler_options="]) == 0
  rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()
          if line.startswith("- | ")]
  assert [r[1] for r in rows] == ["default", "-"]
  assert rows[0][3:7] == rows[1][3:7]


def test_choose_setting_takes_the_fastest_sound_one(tmp_path):
  """choose_sampler_options.sh's choice: a setting far from the reference's pass@1 or format rate
  is not sound however fast; a failed run is not sound; with no sound faster one, 'default'."""
  import concurrent_eval  # pylint: disable=import-outside-toplevel
  rows = [("default", "0.160", "1.000", "2.85"),
          ("", "0.012", "0.230", "1.00"),            # XLA defaults: fast but corrupted
          ("a=1", "0.150", "0.990", "2.00"),          # sound, faster
          ("b=1", "0.165", "1.000", "2.50"),          # sound, slower than a=1
          ("c=1", "error", "error", "0.50")]           # failed
  best, table = concurrent_eval.choose_setting(rows, tol=0.05)
  assert best == "a=1"
  assert [line.rsplit(" | ", 1)[-1] for line in table[1:-1]] == ["yes", "NO", "yes", "yes", "NO"]
  assert concurrent_eval.choose_setting(rows[:2], tol=0.05)[0] == "default"
  with pytest.raises(ValueError, match="failed"):
    concurrent_eval.choose_setting([("default", "error", "error", "1")], tol=0.05)
  # The command line: tab-separated rows in, the choice written to --choice_file.
  (tmp_path / "rows").write_text("".join("\t".join(r) + "\n" for r in rows[:3]))
  assert concurrent_eval.main(["--choose_from", str(tmp_path / "rows"), "--choice_file",
                               str(tmp_path / "choice")]) == 0
  assert (tmp_path / "choice").read_text() == "a=1"


def _fake_finished_queue(runs):
  """The directories of a finished `tools/gpu_jobs/gpu_all.sh --small`: both bases pretrained, the
  seeds evaluated at their last step, the R1 pipeline done, the distillation table written."""
  for base in ("r1_zero_gpu_small/base", "r1_gpu_small/base_small"):
    os.makedirs(os.path.join(runs, base))
    open(os.path.join(runs, base, "config.json"), "w").write("{}")
    open(os.path.join(runs, base, "README.md"), "w").write("| steps | 30 of 30 (batch 8) |\n")
  for seed in (0, 1, 2):
    os.makedirs(os.path.join(runs, "r1_zero_gpu_small", f"seed={seed}"))
    open(os.path.join(runs, "r1_zero_gpu_small", f"seed={seed}", "eval_metrics.jsonl"),
         "w").write('{"step": 0}\n{"step": 3}\n')
  os.makedirs(os.path.join(runs, "r1_gpu_small", "r1_gpu", "4_final_rl"))
  open(os.path.join(runs, "r1_gpu_small", "r1_gpu", "4_final_rl", "DONE.json"), "w").write("{}")
  os.makedirs(os.path.join(runs, "r1_gpu_small", "distill_gpu"))
  open(os.path.join(runs, "r1_gpu_small", "distill_gpu", "table.md"), "w").write("| a |\n")


def _gpu_all(tmp_path, **env):
  import subprocess  # pylint: disable=import-outside-toplevel
  env = dict({k: v for k, v in os.environ.items() if not k.startswith("R1JAX_SAMPLER_")},
             RUNS=str(tmp_path / "runs"), OUT=str(tmp_path / "out"), ABLATION_GRID="",
             PYTHON=sys.executable, **env)
  return subprocess.run(["bash", os.path.join(GPU_JOBS, "gpu_all.sh"), "--small"], env=env,
                        capture_output=True, text=True, timeout=300)


def test_gpu_queue_skips_what_is_done(tmp_path):
  """tools/gpu_jobs/gpu_all.sh on a finished queue starts no job and still collects its files."""
  _fake_finished_queue(str(tmp_path / "runs"))
  result = _gpu_all(tmp_path)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  for job in ("pretraining", "R1-Zero seeds", "R1 pipeline", "distillation", "ablations"):
    assert job not in result.stdout, job
  assert {"r1_zero.tar.gz", "r1.tar.gz", "log.txt"} <= set(os.listdir(tmp_path / "out"))


def test_gpu_queue_stops_at_a_base_whose_pretraining_is_unfinished(tmp_path):
  """A base whose pretraining stopped early is not trained on: with time left the queue would
  continue its pretraining; without (DEADLINE_S=150) it stops with exit 3 and says why."""
  runs = str(tmp_path / "runs")
  _fake_finished_queue(runs)
  os.remove(os.path.join(runs, "r1_gpu_small", "r1_gpu", "4_final_rl", "DONE.json"))
  open(os.path.join(runs, "r1_zero_gpu_small", "base", "README.md"), "w").write(
      "| steps | 594 of 5000 (batch 64) - stopped early (time limit or signal); the same command"
      " continues it |\n")
  result = _gpu_all(tmp_path, DEADLINE_S="150")
  assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
  assert "is not fully pretrained yet" in result.stdout
  assert "R1 pipeline" not in result.stdout
  # Overridden, the queue goes on to the R1 pipeline (which fails at once on the fake base).
  result = _gpu_all(tmp_path, DEADLINE_S="150", ALLOW_PARTIAL_BASE="1")
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "is not fully pretrained yet" not in result.stdout and "R1 pipeline" in result.stdout


def test_gpu_queue_distills_from_r1_zero_only_with_its_policy(tmp_path):
  """The distill_r1_zero job waits for seed 0's exported policy; with a table it is skipped."""
  runs = str(tmp_path / "runs")
  _fake_finished_queue(runs)
  result = _gpu_all(tmp_path, ORDER="seeds distill_r1_zero")
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "waits for seed 0's final policy" in result.stdout
  os.makedirs(os.path.join(runs, "r1_gpu_small", "distill_r1_zero_gpu"))
  open(os.path.join(runs, "r1_gpu_small", "distill_r1_zero_gpu", "table.md"), "w").write("| b |\n")
  result = _gpu_all(tmp_path, ORDER="seeds distill_r1_zero")
  assert result.returncode == 0 and "distillation" not in result.stdout, result.stdout[-3000:]


def test_gpu_queue_stops_at_a_base_above_base_pass1_max(tmp_path):
  """BASE_PASS1_MAX: a base whose own held-out pass@1 is above it trains nothing (exit 4); at or
  below it the queue goes on."""
  runs = str(tmp_path / "runs")
  _fake_finished_queue(runs)
  readme = os.path.join(runs, "r1_zero_gpu_small", "base", "README.md")
  with open(readme, "a") as f:
    f.write("| held-out pass@1 | 0.218 (128 test problems x 16 samples, T=0.6) |\n")
  result = _gpu_all(tmp_path, BASE_PASS1_MAX="0.20")
  assert result.returncode == 4, result.stdout[-3000:] + result.stderr[-3000:]
  assert "pass@1 '0.218' is not at most BASE_PASS1_MAX=0.20" in result.stdout
  result = _gpu_all(tmp_path, BASE_PASS1_MAX="0.22")
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "held-out pass@1: 0.218 (BASE_PASS1_MAX=0.22)" in result.stdout


def test_gpu_queue_pretrains_the_next_length_after_a_base_over_the_max(tmp_path):
  """PRETRAIN_STEPS_LIST: a finished base over BASE_PASS1_MAX is moved aside and the next length
  is pretrained (for real: the tiny preset, 20 steps) and checked; a second run does not try the
  moved-aside length again."""
  runs = str(tmp_path / "runs")
  _fake_finished_queue(runs)
  base = os.path.join(runs, "r1_zero_gpu_small", "base")
  with open(os.path.join(base, "README.md"), "a") as f:
    f.write("| held-out pass@1 | 0.500 (4 test problems x 2 samples) |\n")
  env = dict(PRETRAIN_STEPS_LIST="30 20", BASE_PASS1_MAX="0.2", ORDER="seeds")
  result = _gpu_all(tmp_path, **env)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "the 30-step base's held-out pass@1 '0.500' is over BASE_PASS1_MAX=0.2" in result.stdout
  assert "pretraining the medium base (20 steps)" in result.stdout
  assert os.path.exists(base + "_over_max_30/README.md")
  with open(os.path.join(base, "README.md")) as f:
    assert "| steps | 20 of 20" in f.read()
  assert "held-out pass@1: 0.0" in result.stdout  # the new base, at most 0.2: the queue goes on
  result = _gpu_all(tmp_path, **env)
  assert result.returncode == 0 and "pretraining" not in result.stdout, result.stdout[-3000:]


def test_gpu_queue_small_seed_trains_with_the_gpu_flagfile(tmp_path):
  """The seeds job of `gpu_all.sh --small` on the committed tiny base: countdown_gpu.flags with
  the small overrides trains and evaluates (a flag of the GPU recipe that the small batch cannot
  take, like a --logprob_batch_size that does not divide it, fails here)."""
  import json  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  runs = tmp_path / "runs"
  shutil.copytree(os.path.join(os.path.dirname(BENCHMARKS), "checkpoints", "countdown_base_tiny"),
                  runs / "r1_zero_gpu_small" / "base")
  result = _gpu_all(tmp_path, ORDER="seeds", SEEDS="0", PARALLEL="1")
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  with open(runs / "gpu_all_small" / "out_r1_zero" / "summary.json") as f:
    summary = json.load(f)
  assert set(summary["exit_codes"].values()) <= {0} and "pass@1" in summary["runs"]["seed=0"], summary


def _split_choice(setting):
  import subprocess  # pylint: disable=import-outside-toplevel
  script = (f"source {os.path.join(GPU_JOBS, 'sampler_choice.sh')}; "
            'split_choice "$1" || exit $?; echo "$ATTENTION|$XLA_OPTS"')
  result = subprocess.run(["bash", "-c", script, "-", setting], capture_output=True, text=True,
                          timeout=60)
  return result.returncode, result.stdout.strip(), result.stderr


@pytest.mark.parametrize("setting, want", [
    ("default", "xla|default"),
    ("", "xla|"),  # XLA's own defaults, not the library's
    ("attention=ragged", "ragged|default"),
    ("attention=ragged,xla_gpu_autotune_level=0,a=1", "ragged|xla_gpu_autotune_level=0,a=1"),
    ("xla_gpu_autotune_level=0", "xla|xla_gpu_autotune_level=0"),
])
def test_sampler_choice_splits_attention_from_xla_options(setting, want):
  assert _split_choice(setting)[:2] == (0, want)


def test_sampler_choice_names_a_bad_attention():
  rc, _, err = _split_choice("attention=flash")
  assert rc == 2 and "attention=flash (expected attention=xla or attention=ragged)" in err


def test_gpu_queue_exports_the_chosen_sampler_setting(tmp_path):
  """A choice file in RUNS (choose_sampler_options.sh's) sets the jobs' sampler: attention and
  XLA options, as the queue's log says."""
  runs = str(tmp_path / "runs")
  _fake_finished_queue(runs)
  with open(os.path.join(runs, "sampler_options.txt"), "w") as f:
    f.write("attention=ragged")
  result = _gpu_all(tmp_path)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert ("'attention=ragged': attention ragged, XLA options 'the library default'"
          in result.stdout)


def test_r1_gpu_names_an_unknown_teacher(tmp_path):
  import subprocess  # pylint: disable=import-outside-toplevel
  env = dict(os.environ, STAGE="distill", TEACHER="r2", ROOT=str(tmp_path), OUT=str(tmp_path / "o"),
             PYTHON=sys.executable)
  result = subprocess.run(["bash", os.path.join(GPU_JOBS, "r1_gpu.sh"), "--small"], env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
  assert "TEACHER=r2: expected r1 or r1_zero" in result.stdout + result.stderr


def test_gpu_queue_names_an_unknown_job(tmp_path):
  result = _gpu_all(tmp_path, ORDER="seeds rl")
  assert result.returncode == 2 and "unknown job 'rl'" in result.stdout + result.stderr


def test_pretrain_extra_flags_reach_the_pretraining(tmp_path):
  """r1_zero_gpu.sh's PRETRAIN_EXTRA goes to experiments/pretrain_base.py after its own flags:
  a bad value there is named by the pretraining script."""
  import subprocess  # pylint: disable=import-outside-toplevel
  env = dict(os.environ, STAGE="pretrain", BASE=str(tmp_path / "base"), OUT=str(tmp_path / "out"),
             PYTHON=sys.executable, PRETRAIN_EXTRA="--continue_prob=0.8 --max_attempts=0")
  result = subprocess.run(["bash", os.path.join(GPU_JOBS, "r1_zero_gpu.sh"), "--small"],
                          env=env, capture_output=True, text=True, timeout=300)
  assert "max_attempts=0 must be >= 1" in result.stdout + result.stderr, result.stdout[-3000:]
  assert not os.path.exists(tmp_path / "base" / "config.json")


def _ignoring_start(real):
  def kernel(q, ck, cv, start, end):  # every slot below `end`, the left padding included
    return real(q, ck, cv, start * 0, end)
  return kernel


def test_ragged_kernel_check_passes_the_kernel_and_fails_a_wrong_one(monkeypatch):
  """The ragged kernel (interpreted on CPU) is within float32 rounding of a masked softmax; a
  kernel that ignores the rows' start slots is off by order 1."""
  from r1jax import config as cfg  # pylint: disable=import-outside-toplevel
  from r1jax import model  # pylint: disable=import-outside-toplevel
  tiny = cfg.get_config("tiny")
  assert sampler.check_ragged_kernel(tiny, rows=4, slots=100, dtype="float32") < 1e-5
  monkeypatch.setattr(model, "ragged_decode_attention",
                      _ignoring_start(model.ragged_decode_attention))
  assert sampler.check_ragged_kernel(tiny, rows=4, slots=100, dtype="float32") > 1e-2


@pytest.mark.bench
def test_sampler_check_reports_and_exits_1_on_a_wrong_kernel(monkeypatch, capsys):
  from r1jax import model  # pylint: disable=import-outside-toplevel
  argv = ["--small", "--check", "--attention", "ragged", "--batch", "4"]
  assert sampler.main(argv) == 0
  out = capsys.readouterr().out
  assert "ragged kernel vs float32 softmax" in out and ": ok" in out
  worst = float(out.split("over 128 tokens: max ")[1].split(",")[0])
  assert worst < 1e-5, out
  monkeypatch.setattr(model, "ragged_decode_attention",
                      _ignoring_start(model.ragged_decode_attention))
  assert sampler.main(argv) == 1
  assert "WRONG" in capsys.readouterr().out


def test_logprob_errors_sees_wrong_log_probs():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from r1jax import config as cfg  # pylint: disable=import-outside-toplevel
  from r1jax import model  # pylint: disable=import-outside-toplevel
  from r1jax.sampling import SamplingConfig, generate  # pylint: disable=import-outside-toplevel
  tiny = cfg.get_config("tiny", dtype="float32")
  params = model.init_params(tiny, jax.random.PRNGKey(0), init_std=0.5)
  tokens = jnp.tile(jnp.arange(3, 9, dtype=jnp.int32), (3, 1))
  mask = jnp.ones_like(tokens, bool).at[0, :2].set(False)  # one left-padded row
  out = generate(params, tiny, tokens, mask, jax.random.PRNGKey(1),
                 SamplingConfig(max_new_tokens=12))
  worst, mean = sampler.logprob_errors(params, tiny, out, rows_per_call=2)
  assert worst < 1e-4 and mean <= worst
  shifted = out._replace(log_probs=jnp.roll(out.log_probs, 1, axis=1))
  assert sampler.logprob_errors(params, tiny, shifted)[0] > 1e-2


@pytest.mark.bench
def test_sampler_variants_small_runs_and_checks_every_variant(tmp_path):
  import subprocess  # pylint: disable=import-outside-toplevel
  result = subprocess.run(["bash", os.path.join(GPU_JOBS, "sampler_variants.sh"), "--small"],
                          env=dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path)),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert result.stdout.count("\n== small: ") + result.stdout.startswith("== small: ") == 5
  assert result.stdout.count("ragged kernel vs float32 softmax") == 8  # 4 ragged variants x 2
  assert "FAILED" not in result.stdout and "WRONG" not in result.stdout
  log = (tmp_path / "sampler_variants.log").read_text()  # the whole output, kept in OUT
  assert log.count("ragged kernel vs float32 softmax") == 8 and log.count("== small: ") == 5


@pytest.mark.bench
def test_choose_sampler_options_tries_the_ragged_attention(tmp_path):
  """choose_sampler_options.sh with the candidate attention=ragged: evaluated with the ragged
  decode attention (the worker reports the attention it sampled with, and a row whose attention
  is not its candidate's counts as failed), sound on the committed tiny base (same pass@1 and
  format rate as the default's), and a choice is written."""
  import subprocess  # pylint: disable=import-outside-toplevel
  repo = os.path.dirname(BENCHMARKS)
  env = dict({k: v for k, v in os.environ.items() if not k.startswith("R1JAX_SAMPLER_")},
             PYTHON=sys.executable, SPEED_ARGS="--small", EVAL_ARGS="--small")
  result = subprocess.run(
      ["bash", os.path.join(GPU_JOBS, "choose_sampler_options.sh"),
       os.path.join(repo, "checkpoints", "countdown_base_tiny"), str(tmp_path / "choice"),
       "attention=ragged"], env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  row = [ln for ln in result.stdout.splitlines() if ln.startswith("attention=ragged | ")]
  assert len(row) == 1 and row[0].endswith("| yes"), result.stdout
  assert (tmp_path / "choice").read_text() in ("default", "attention=ragged")


def test_pack_policy_shards_rounds_and_checks(tmp_path, capsys):
  """benchmarks/pack_policy.py: a bfloat16 copy in shards under the size limit whose logits stay
  near the original's; a float32 copy is exact; a tolerance of 0 fails the rounded copy; a
  destination that holds a policy is refused."""
  import pack_policy  # pylint: disable=import-outside-toplevel
  from r1jax import hf  # pylint: disable=import-outside-toplevel
  src = os.path.join(os.path.dirname(BENCHMARKS), "checkpoints", "countdown_base_tiny")
  assert pack_policy.main([src, str(tmp_path / "bf16"), "--max_shard_mib=0.5"]) == 0
  shards = [f for f in os.listdir(tmp_path / "bf16") if f.endswith(".safetensors")]
  assert len(shards) >= 2
  assert all(os.path.getsize(tmp_path / "bf16" / f) <= 0.5 * 2**20 for f in shards)
  config, params = hf.load_hf_checkpoint(str(tmp_path / "bf16"))
  assert config.param_dtype == "bfloat16"
  assert str(params["embed"].dtype) == "bfloat16"
  assert pack_policy.main([src, str(tmp_path / "f32"), "--dtype=float32"]) == 0
  assert "= 0.00e+00" in capsys.readouterr().out
  assert pack_policy.main([src, str(tmp_path / "strict"), "--tolerance=0"]) == 1
  assert "TOO LARGE" in capsys.readouterr().out
  with pytest.raises(SystemExit):
    pack_policy.main([src, str(tmp_path / "bf16")])
  assert "already holds a policy" in capsys.readouterr().err
  # A policy with a tokenizer.json (a Hugging Face tokenizer) keeps its tokenizer files.
  import shutil  # pylint: disable=import-outside-toplevel
  with_tok = tmp_path / "with_tokenizer"
  shutil.copytree(src, with_tok)
  (with_tok / "tokenizer.json").write_text('{"fake": true}')
  assert pack_policy.main([str(with_tok), str(tmp_path / "tok")]) == 0
  assert (tmp_path / "tok" / "tokenizer.json").read_text() == '{"fake": true}'
  assert not (tmp_path / "bf16" / "tokenizer.json").exists()


def _detached(tmp_path, *args, timeout=60):
  env = dict(os.environ, DETACHED=str(tmp_path / "detached"))
  return subprocess.run(["bash", os.path.join(GPU_JOBS, "gpu_detached.sh"), *args], env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_detached_job_outlives_its_starter_and_reports_in_parts(tmp_path):
  """gpu_detached.sh: `start` returns while the job runs on in its own session; each `wait`
  prints the log lines not printed before and exits 3 while the job runs, 0 once it has ended
  (with its status in the log); a second `start` of the same name is refused."""
  flag = tmp_path / "go"
  job = f"echo first; while [ ! -e {flag} ]; do sleep 0.2; done; echo second; exit 7"
  started = _detached(tmp_path, "start", "j", "bash", "-c", job)
  assert started.returncode == 0, started.stderr
  assert os.getsid(int((tmp_path / "detached" / "j.pid").read_text())) != os.getsid(0)
  for _ in range(50):
    if "first" in (tmp_path / "detached" / "j.log").read_text():
      break
    time.sleep(0.1)
  running = _detached(tmp_path, "wait", "j", "1")
  assert running.returncode == 3 and "first" in running.stdout and "still running" in running.stdout
  again = _detached(tmp_path, "start", "j", "true")
  assert again.returncode == 2 and "already running" in again.stderr
  flag.touch()
  ended = _detached(tmp_path, "wait", "j", "30")
  assert ended.returncode == 0, ended.stderr
  assert "second" in ended.stdout and "first" not in ended.stdout
  assert "ended: exit 7" in ended.stdout
  done = _detached(tmp_path, "start", "j", "true")
  assert done.returncode == 2 and "already done (exit 7)" in done.stderr


def test_detached_wait_names_a_job_never_started(tmp_path):
  result = _detached(tmp_path, "wait", "nothing", "1")
  assert result.returncode == 2 and "never started" in result.stderr


def test_decode_gemm_small_checks_every_op():
  """benchmarks/decode_gemm.py --small (interpret mode, tiny shapes): every op at both row
  counts is compared with the XLA path, none is WRONG, and the per-layer sums are printed."""
  run = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "decode_gemm.py"), "--small"],
                       capture_output=True, text=True, timeout=300, check=False)
  assert run.returncode == 0, run.stdout + run.stderr
  out = run.stdout
  wrong = [int(n) for n in re.findall(r"(\d+) WRONG;", out)]
  assert len(wrong) == 8 and not any(wrong), out  # one count per (op, rows), each 0
  assert " WRONG\n" not in out, out  # no config row flagged
  best = [line for line in out.splitlines() if line.count(" | ") == 8 and "x | " in line]
  assert {tuple(line.split(" | ")[:2]) for line in best} == {
      (op, rows) for op in ("qkv", "wo", "gate_up", "down") for rows in ("16", "32")}, out
  assert out.count("sum over") == 2, out


@pytest.mark.bench
def test_train_step_small_check(capsys):
  """train_step --small --check: the cuDNN path's attention call (jax's xla implementation on a
  CPU) and fused log-probs pass the comparison, and the table has a row per combination."""
  import train_step  # pylint: disable=import-outside-toplevel
  assert train_step.main(["--small", "--check", "--logprobs", "fused,unfused"]) == 0
  out = capsys.readouterr().out
  assert "check passed" in out and "FAIL" not in out
  rows = [line.split(" | ") for line in out.splitlines() if line.startswith("tiny | ")]
  assert [(r[4], r[5]) for r in rows] == [("xla", "fused"), ("xla", "unfused")]
