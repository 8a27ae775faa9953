"""Resume falls back to the newest checkpoint that restores: a truncated array file in the newest
one (a full disk, a cut-short copy) costs the steps since the one before it, not the run."""

import dataclasses
import glob
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import checkpoint, grpo, logs, model, runner, trainer
from r1jax.config import get_config
from r1jax.tokenizer import CharTokenizer


@dataclasses.dataclass(frozen=True)
class Toy:
  question: str
  answer: str


def toy_reward(completions, problems):
  """Varies within a group, so that every step moves the params: first character's code / 128."""
  r = np.array([ord(c[0]) / 128 if c else 0.0 for c in completions], np.float32)
  return r, {"accuracy": r}, {}


def make_trainer():
  """test_trainer's toy trainer, shapes and all: in a full test run, this file then loads the
  programs that test_trainer.py compiled from the session's JAX cache (tests/conftest.py)."""
  mcfg = get_config("tiny", vocab_size=128)
  cfg = trainer.TrainConfig(prompts_per_step=2, num_generations=4, max_prompt_length=4,
                            max_completion_length=3, learning_rate=3e-3, max_steps=4, seed=0)
  loss_cfg = grpo.GRPOConfig(num_generations=cfg.num_generations,
                             max_completion_length=cfg.max_completion_length, beta=0.04)
  problems = [Toy(q, "7") for q in ("ab", "cd", "ef", "gh")]
  t = trainer.GRPOTrainer(mcfg, cfg, loss_cfg, CharTokenizer(), problems, lambda p: p.question,
                          toy_reward)
  return t, model.init_params(mcfg, jax.random.PRNGKey(0))


def truncate_arrays(step_dir):
  """Cuts every array data file of a checkpoint to half its size, as a full disk would."""
  files = [p for p in glob.glob(os.path.join(step_dir, "**", "d", "*"), recursive=True)
           if os.path.isfile(p)]
  assert files, step_dir
  for p in files:
    os.truncate(p, os.path.getsize(p) // 2)


def no_timing(rows):
  return [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in rows]


def test_truncated_newest_checkpoint_resumes_from_the_one_before(tmp_path, caplog):
  run = runner.RunConfig(workdir=str(tmp_path / "run"), save_steps=1, plot=False)
  ckdir = os.path.join(run.workdir, "checkpoints")
  t, params = make_trainer()
  keep = jax.tree.map(np.array, params)  # the run's state owns (and donates) `params`
  state_a = jax.tree.map(np.array, runner.run_grpo(t, params, run, max_steps=2))  # ckpts 1, 2
  rows_a = no_timing(logs.read_jsonl(os.path.join(run.workdir, "metrics.jsonl")))
  assert [r["step"] for r in rows_a] == [1, 2]

  truncate_arrays(os.path.join(ckdir, "2"))
  t2, _ = make_trainer()
  with caplog.at_level(logging.WARNING, logger="r1jax"):
    state_b = runner.run_grpo(t2, jax.tree.map(np.array, keep), run, max_steps=2)

  # Step 2 again, from checkpoint 1: the same log and state as the uninterrupted run, and a new
  # checkpoint 2 (not refused as a step that exists) that restores.
  rows_b = no_timing(logs.read_jsonl(os.path.join(run.workdir, "metrics.jsonl")))
  assert rows_b == rows_a
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(a, np.asarray(b))
  assert sorted(os.listdir(ckdir)) == ["1", "2", "2.corrupt-0"]
  ck = checkpoint.Checkpointer(ckdir, save_steps=1)
  restored, _ = ck.restore(state_b)
  ck.close()
  assert int(restored["step"]) == 2
  warned = " ".join(r.getMessage() for r in caplog.records)
  assert f"moved checkpoint {ckdir}/2, which does not restore" in warned
  assert f"{ckdir}/2.corrupt-0; delete that" in warned


def test_no_checkpoint_restores_names_each_and_moves_nothing(tmp_path, caplog):
  ckdir = str(tmp_path / "ck")
  ck = checkpoint.Checkpointer(ckdir, save_steps=1)
  for s in (1, 2):
    ck.save(s, {"step": jnp.int32(s), "w": jnp.full((32, 32), float(s))})
  for s in (1, 2):
    truncate_arrays(os.path.join(ckdir, str(s)))
  target = {"step": jnp.int32(0), "w": jnp.zeros((32, 32))}
  with pytest.raises(RuntimeError, match="no checkpoint in .* restores") as e:
    ck.restore(target)
  ck.close()
  assert f"{ckdir}/2: " in str(e.value) and f"{ckdir}/1: " in str(e.value)
  assert "is not valid" in str(e.value)  # orbax's reason, without its long tensorstore spec
  assert sorted(os.listdir(ckdir)) == ["1", "2"]
