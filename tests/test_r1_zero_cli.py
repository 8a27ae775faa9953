"""End to end: the README's first command (experiments/r1_zero.py with countdown_tiny.flags),
shortened to two steps of a tiny model: outputs, resume, and clear errors for bad flags."""

import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from r1jax import hf, model
from r1jax.config import get_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGFILE = os.path.join(REPO, "experiments", "configs", "countdown_tiny.flags")
SCRIPT = os.path.join(REPO, "experiments", "r1_zero.py")
# Shrinks the default run to seconds; everything else comes from the flagfile.
SHORT = ["--max_steps=2", "--save_steps=1", "--prompts_per_step=2", "--num_generations=2",
         "--max_completion_length=12", "--eval_num_problems=3", "--eval_num_samples=2",
         "--eval_batch_size=2", "--eval_steps=1"]


def _run(args, cwd=REPO, timeout=240):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.run([sys.executable, SCRIPT, f"--flagfile={FLAGFILE}", *args], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=timeout)


def _flagfile_values():
  out = {}
  with open(FLAGFILE) as f:
    for line in f:
      line = line.strip()
      if line.startswith("--"):
        k, _, v = line[2:].partition("=")
        out[k] = v
  return out


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("base"))
  config = get_config("tiny", bos_token_id=1, eos_token_id=2, pad_token_id=0)
  hf.save_hf_checkpoint(path, config, model.init_params(config, jax.random.PRNGKey(0)))
  return path


def test_flagfile_is_the_documented_default():
  flags = _flagfile_values()
  assert flags["init_checkpoint"] == "checkpoints/countdown_base_tiny"
  assert flags["workdir"] == "runs/countdown_tiny"
  assert flags["template"] == "compact" and flags["tokenizer"] == "char"
  assert flags["stop_strings"] == "</answer>"
  # The committed base model the flagfile points at loads and fits the char vocabulary.
  config = hf.load_hf_config(os.path.join(REPO, flags["init_checkpoint"]))
  assert config.vocab_size >= 100 and config.eos_token_id == 2
  assert os.path.getsize(os.path.join(REPO, flags["init_checkpoint"], "model.safetensors")) < 20e6


@pytest.mark.slow
def test_short_run_writes_everything_and_resumes(tiny_checkpoint, tmp_path):
  workdir = str(tmp_path / "run")
  # Weight decay moves the params even when every reward of the random policy is the same.
  args = SHORT + [f"--init_checkpoint={tiny_checkpoint}", f"--workdir={workdir}",
                  "--weight_decay=0.5"]
  first = _run(args)
  assert first.returncode == 0, first.stderr[-3000:]
  metrics = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train = [m for m in metrics if "reward_mean" in m]
  assert [m["step"] for m in train] == [1, 2]
  assert all(0 <= m["reflection_rate"] <= 1 for m in train)
  evals = [json.loads(l) for l in open(os.path.join(workdir, "eval_metrics.jsonl"))]
  assert [e["step"] for e in evals] == [0, 1, 2]
  assert all(0 <= e["pass@1"] <= 1 and e["num_problems"] == 3 for e in evals)
  assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) >= ["1", "2"]
  assert os.path.exists(os.path.join(workdir, "samples", "step_000002.jsonl"))
  for png in ("accuracy.png", "response_length.png", "reflection.png"):
    assert os.path.getsize(os.path.join(workdir, png)) > 1000
  # The final policy, exported as a Hugging Face directory, holds the last checkpoint's params
  # (read back by orbax without a target), not the base's.
  config, exported = hf.load_hf_checkpoint(os.path.join(workdir, "policy"))
  assert config == hf.load_hf_config(tiny_checkpoint)
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  saved = manager.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  saved = saved["state"]["params"]
  _, base = hf.load_hf_checkpoint(tiny_checkpoint)
  flat_exported, tree = jax.tree.flatten(exported)
  flat_saved = tree.flatten_up_to(saved)
  assert all(np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(flat_exported, flat_saved))
  assert not all(np.array_equal(a, b) for a, b in zip(flat_exported, jax.tree.leaves(base)))

  second = _run(args)  # same workdir, max_steps reached: resumes and does nothing
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resumed from" in second.stderr
  again = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [m["step"] for m in again if "reward_mean" in m] == [1, 2]
  assert len(open(os.path.join(workdir, "eval_metrics.jsonl")).readlines()) == 3


@pytest.mark.parametrize("bad, named", [
    (["--loss_type=foo"], "loss_type"),
    (["--num_minibatches=3"], "--num_minibatches=3"),
])
def test_bad_flags_exit_nonzero_naming_the_flag(bad, named, tiny_checkpoint, tmp_path):
  result = _run(SHORT + [f"--init_checkpoint={tiny_checkpoint}",
                         f"--workdir={tmp_path / 'bad'}", *bad])
  assert result.returncode != 0
  assert named in result.stderr


def test_missing_init_checkpoint_exits_nonzero_naming_the_path(tmp_path):
  missing = str(tmp_path / "no_such_base")
  result = _run(SHORT + [f"--init_checkpoint={missing}", f"--workdir={tmp_path / 'w'}"])
  assert result.returncode != 0
  assert missing in result.stderr and "--init_checkpoint" in result.stderr


def test_held_out_set_is_the_same_for_every_seed():
  """A seed sweep's spread must not mix in a different test set per seed (--eval_seed)."""
  code = ("import json, sys; sys.path.insert(0, 'experiments'); import r1_zero; "
          "from absl import flags; flags.FLAGS(['x', sys.argv[1], sys.argv[2]]); "
          "_, train, test, _ = r1_zero.build_task(); "
          "print(json.dumps([[p.question for p in train[:20]], [p.question for p in test]]))")

  def splits(seed):
    out = subprocess.run([sys.executable, "-c", code, f"--flagfile={FLAGFILE}", f"--seed={seed}"],
                         cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])

  (train0, test0), (train1, test1) = splits(0), splits(1)
  assert test0 == test1 and len(test0) == 200
  assert train0 != train1  # the seed still orders the training problems


def test_both_rl_scripts_take_every_trainer_flag():
  """r1_zero.py and r1.py build the trainer's config with one function (common.train_config);
  a flag it reads reaches TrainConfig, and an R1 stage's own steps and rate override the flags."""
  code = ("import json, sys; sys.path.insert(0, 'experiments'); import r1, common; "
          "from absl import flags; flags.FLAGS(['x'] + sys.argv[1:]); "
          "a, b = common.train_config(), common.train_config(7, 0.5); "
          "print(json.dumps([a.gradient_accumulation_steps, a.logprob_batch_size, "
          "a.adam_mu_dtype, a.overlong_buffer, a.max_steps, b.max_steps, b.learning_rate]))")
  out = subprocess.run([sys.executable, "-c", code, "--gradient_accumulation_steps=2",
                        "--logprob_batch_size=4", "--adam_mu_dtype=bfloat16",
                        "--overlong_buffer=16", "--max_steps=3"],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-2000:]
  assert json.loads(out.stdout.strip().splitlines()[-1]) == [2, 4, "bfloat16", 16, 3, 7, 0.5]


def test_an_interrupt_ends_a_script_with_status_130_and_no_traceback():
  """checkpoint.run_app (the training scripts' entry point): the loop's KeyboardInterrupt after
  it saved its state ends the process with one log line, not a traceback; other errors keep
  theirs."""
  code = ("import sys; from r1jax import checkpoint\n"
          "def main(argv):\n"
          "  if sys.argv[-1] == 'interrupt': raise KeyboardInterrupt('stopped at a step boundary')\n"
          "  raise ValueError('a real error')\n"
          "checkpoint.run_app(main)\n")
  out = subprocess.run([sys.executable, "-c", code, "interrupt"], capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 130, out.stderr
  assert "interrupted (stopped at a step boundary): the same command resumes" in out.stderr
  assert "Traceback" not in out.stderr
  out = subprocess.run([sys.executable, "-c", code, "error"], capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 1 and "ValueError: a real error" in out.stderr, out.stderr
