"""SFT: the loss scores completion tokens only (checked by hand in float64 NumPy), a tiny set is
memorized, and a run cut short resumes exactly."""

import json
import os
import signal

import jax
import numpy as np
import pytest

from r1jax import checkpoint, logs, model, sampling, sft
from r1jax.config import get_config
from r1jax.tokenizer import CharTokenizer

TOK = CharTokenizer()
CONFIG = get_config("tiny")
EXAMPLES = [sft.Example("Make 7 with 3, 4.\n<think>", "3+4 </think> <answer>3+4</answer>"),
            sft.Example("Make 12 with 3, 4.\n<think>", "3*4 </think> <answer>3*4</answer>"),
            sft.Example("Go", "ok"),
            sft.Example("Make 1 with 4, 3.\n<think>", "4-3 </think> <answer>4-3</answer>")]


def _log_softmax64(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_batch_layout_is_the_samplers():
  batch = sft.encode_batch(TOK, EXAMPLES[:3], 32, 40)
  for i, ex in enumerate(EXAMPLES[:3]):
    prompt = [TOK.bos_id] + TOK.encode(ex.prompt)
    completion = TOK.encode(ex.completion) + [TOK.eos_id]
    row = batch["tokens"][i]
    # Left-padded prompt ending at slot P, completion (with EOS) right after, pads after it.
    assert list(row[32 - len(prompt):32]) == prompt
    assert list(row[32:32 + len(completion)]) == completion
    assert (row[:32 - len(prompt)] == TOK.pad_id).all()
    assert (row[32 + len(completion):] == TOK.pad_id).all()
    assert batch["mask"][i].sum() == len(prompt) + len(completion)
    assert list(np.flatnonzero(batch["loss_mask"][i])) == list(range(32, 32 + len(completion)))
  # Same prompt layout as the sampler's left_pad.
  ptoks, pmask = sampling.left_pad([[TOK.bos_id] + TOK.encode(e.prompt) for e in EXAMPLES[:3]],
                                   TOK.pad_id, 32)
  np.testing.assert_array_equal(batch["tokens"][:, :32], ptoks)
  np.testing.assert_array_equal(batch["mask"][:, :32], pmask)
  with pytest.raises(ValueError, match="max_prompt_length"):
    sft.encode_batch(TOK, EXAMPLES[:1], 8, 40)
  cut = sft.encode_batch(TOK, EXAMPLES[:1], 32, 5)
  assert cut["truncated"][0] and cut["loss_mask"][0].sum() == 5


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_loss_is_mean_nll_of_completion_tokens_only(chunk_size):
  params = model.init_params(CONFIG, jax.random.PRNGKey(1), init_std=0.2)
  batch = sft.encode_batch(TOK, EXAMPLES[:3], 32, 40)
  loss, count = jax.jit(lambda p, b: sft.sft_loss(p, b, CONFIG, chunk_size=chunk_size))(
      params, batch)
  # Reference: the model's logits, then float64 NumPy over the hand-picked completion slots.
  logits, _ = model.forward(params, batch["tokens"], CONFIG,
                            positions=model.positions_from_mask(batch["mask"]),
                            kv_mask=batch["mask"])
  logp = _log_softmax64(logits)
  nll = []
  for i, ex in enumerate(EXAMPLES[:3]):
    completion = TOK.encode(ex.completion) + [TOK.eos_id]
    for j, tok in enumerate(completion):
      slot = 32 + j  # token at `slot` is predicted from position slot - 1
      nll.append(-logp[i, slot - 1, tok])
  assert int(count) == len(nll)
  np.testing.assert_allclose(float(loss), np.mean(nll), rtol=1e-5)


def test_prompt_targets_do_not_change_the_loss():
  params = model.init_params(CONFIG, jax.random.PRNGKey(2), init_std=0.2)
  batch = sft.encode_batch(TOK, EXAMPLES[:2], 32, 40)
  logits, _ = model.forward(params, batch["tokens"], CONFIG,
                            positions=model.positions_from_mask(batch["mask"]),
                            kv_mask=batch["mask"])
  logits, targets, lmask = logits[:, :-1], batch["tokens"][:, 1:], batch["loss_mask"][:, 1:]
  base, _ = sft.sft_loss_from_logits(logits, targets, lmask)
  prompt_slot = 30  # predicts a prompt token of row 0
  assert batch["mask"][0, prompt_slot + 1] and not lmask[0, prompt_slot]
  changed = targets.copy()
  changed[0, prompt_slot] = (changed[0, prompt_slot] + 5) % CONFIG.vocab_size
  same, _ = sft.sft_loss_from_logits(logits, changed, lmask)
  assert float(same) == float(base)
  completion_slot = 32  # predicts the second completion token of row 0
  changed = targets.copy()
  changed[0, completion_slot] = (changed[0, completion_slot] + 5) % CONFIG.vocab_size
  different, _ = sft.sft_loss_from_logits(logits, changed, lmask)
  assert abs(float(different) - float(base)) > 1e-4


def _cfg(**kw):
  base = dict(batch_size=4, max_prompt_length=32, max_completion_length=40, learning_rate=1e-2,
              lr_scheduler_type="cosine", warmup_steps=2, max_steps=60, seed=3)
  return sft.SFTConfig(**{**base, **kw})


MEMORIZE_CFG = _cfg(learning_rate=5e-3, lr_scheduler_type="constant", max_steps=100)


def test_sft_memorizes_a_tiny_set(tmp_path):
  params = model.init_params(CONFIG, jax.random.PRNGKey(0))
  cfg = MEMORIZE_CFG
  state = sft.run_sft(CONFIG, params, TOK, EXAMPLES, cfg, str(tmp_path), save_steps=100)
  losses = [r["loss"] for r in logs.read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))]
  assert len(losses) == 100
  assert losses[0] > 3.0 and np.mean(losses[-5:]) < 0.02, (losses[0], losses[-5:])
  # Greedy decoding reproduces every memorized completion.
  prompts = [[TOK.bos_id] + TOK.encode(e.prompt) for e in EXAMPLES]
  ptoks, pmask = sampling.left_pad(prompts, TOK.pad_id, 32)
  out = sampling.generate(state["params"], CONFIG, ptoks, pmask, jax.random.PRNGKey(0),
                          sampling.SamplingConfig(max_new_tokens=40, temperature=0.0,
                                                  eos_ids=(TOK.eos_id,)))
  texts = [TOK.decode(t[:n]) for t, n in zip(np.asarray(out.tokens), np.asarray(out.lengths))]
  assert texts == [e.completion for e in EXAMPLES]


# 3 does not divide 4: epochs reshuffle mid-run. One configuration for the resume and interrupt
# tests below: sft builds one jitted step per configuration in a process, so they compile once.
RESUME_CFG = _cfg(max_steps=6, batch_size=3)


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
  """An uninterrupted run of RESUME_CFG: the reference of the resume tests."""
  workdir = tmp_path_factory.mktemp("sft_whole")
  state = sft.run_sft(CONFIG, model.init_params(CONFIG, jax.random.PRNGKey(0)), TOK, EXAMPLES,
                      RESUME_CFG, str(workdir), save_steps=3)
  return state, str(workdir)


def test_sft_resumes_exactly(whole_run, tmp_path):
  cfg = RESUME_CFG
  init = lambda: model.init_params(CONFIG, jax.random.PRNGKey(0))  # noqa: E731
  whole, workdir_a = whole_run
  sft.run_sft(CONFIG, init(), TOK, EXAMPLES, cfg, str(tmp_path / "b"), save_steps=3, stop_at=3)
  # A run that died after step 3 (checkpoint at 3, metrics of step 3 written) ...
  resumed = sft.run_sft(CONFIG, init(), TOK, EXAMPLES, cfg, str(tmp_path / "b"), save_steps=3)
  assert int(resumed["step"]) == 6 and int(resumed["data_position"]) == 18
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               whole["params"], resumed["params"])
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               whole["opt_state"], resumed["opt_state"])
  strip = lambda rows: [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k}  # noqa: E731
                        for r in rows]
  a = strip(logs.read_jsonl(os.path.join(workdir_a, "metrics.jsonl")))
  b = strip(logs.read_jsonl(os.path.join(tmp_path, "b", "metrics.jsonl")))
  assert [r["step"] for r in b] == list(range(1, 7))
  assert a == b


def test_load_examples_names_the_bad_line(tmp_path):
  path = tmp_path / "d.jsonl"
  sft.write_examples(str(path), EXAMPLES[:2])
  loaded = sft.load_examples(str(path))
  assert [(e.prompt, e.completion) for e in loaded] == [(e.prompt, e.completion)
                                                       for e in EXAMPLES[:2]]
  with open(path, "a") as f:
    f.write(json.dumps({"prompt": "x"}) + "\n")
  with pytest.raises(ValueError, match=r"d.jsonl:3"):
    sft.load_examples(str(path))
  with pytest.raises(FileNotFoundError, match="nope"):
    sft.load_examples(str(tmp_path / "nope.jsonl"))


def test_bad_config_names_the_flag():
  with pytest.raises(ValueError, match="batch_size"):
    sft.SFTConfig(batch_size=0).validate()
  with pytest.raises(ValueError, match="learning_rate"):
    sft.SFTConfig(learning_rate=-1.0).validate()


def test_sft_step_on_a_data_parallel_mesh_matches_one_device(tmp_path):
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel
  mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
  # Two steps (stop_at) of the memorization run's configuration (batch 4, constant lr): the
  # one-device run reuses its jitted step, compiled once per configuration in a process.
  cfg = MEMORIZE_CFG
  init = lambda: model.init_params(CONFIG, jax.random.PRNGKey(0))  # noqa: E731
  one = sft.run_sft(CONFIG, init(), TOK, EXAMPLES, cfg, str(tmp_path / "one"), save_steps=10,
                    stop_at=2)
  sharded = sft.run_sft(CONFIG, init(), TOK, EXAMPLES, cfg, str(tmp_path / "dp"), save_steps=10,
                        batch_sharding=NamedSharding(mesh, PartitionSpec("data")), stop_at=2)
  assert int(one["step"]) == int(sharded["step"]) == 2
  a = logs.read_jsonl(os.path.join(tmp_path, "one", "metrics.jsonl"))
  b = logs.read_jsonl(os.path.join(tmp_path, "dp", "metrics.jsonl"))
  np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4,
                                                       atol=1e-5),
               one["params"], sharded["params"])


def test_interrupted_sft_keeps_its_last_step(whole_run, tmp_path):
  """A SIGINT between checkpoints (here from the evaluation after step 3) saves step 3, and the
  rerun finishes the same as an uninterrupted run."""
  cfg = RESUME_CFG
  init = lambda: model.init_params(CONFIG, jax.random.PRNGKey(0))  # noqa: E731

  def interrupt_at_3(params, step):
    del params
    if step == 3:
      raise KeyboardInterrupt()
    return {}

  workdir = str(tmp_path / "b")
  with pytest.raises(KeyboardInterrupt):
    sft.run_sft(CONFIG, init(), TOK, EXAMPLES, cfg, workdir, save_steps=100,
                eval_fn=interrupt_at_3, eval_steps=1)
  ck = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), save_steps=100)
  assert ck.latest_step() == 3
  ck.close()
  resumed = sft.run_sft(CONFIG, init(), TOK, EXAMPLES, cfg, workdir, save_steps=100)
  whole, _ = whole_run
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               whole["params"], resumed["params"])


def test_a_signal_mid_step_saves_that_step(tmp_path):
  """A real SIGINT during step 2's evaluation: the evaluation finishes, step 2 is saved, and the
  run stops before step 3."""
  cfg = RESUME_CFG  # the configuration of the tests above: its jitted step is compiled already
  seen = []

  def signal_at_2(params, step):
    del params
    seen.append(step)
    if step == 2:
      os.kill(os.getpid(), signal.SIGINT)
    return {"done": 1.0}

  workdir = str(tmp_path / "run")
  with pytest.raises(KeyboardInterrupt):
    sft.run_sft(CONFIG, model.init_params(CONFIG, jax.random.PRNGKey(0)), TOK, EXAMPLES, cfg,
                workdir, save_steps=100, eval_fn=signal_at_2, eval_steps=1)
  assert seen == [1, 2]
  assert [r["step"] for r in logs.read_jsonl(os.path.join(workdir, "eval_metrics.jsonl"))] == [
      1, 2]
  ck = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), save_steps=100)
  assert ck.latest_step() == 2
  ck.close()


def test_first_step_warns_when_the_data_is_foreign_to_the_params(tmp_path, caplog):
  """A starting loss more than a nat above log(vocab) (the policy predicts the data worse than
  uniform guessing, as a base on characters it never saw) logs a warning; a fresh random init,
  near log(vocab), does not."""
  assert sft.warn_if_foreign(8.18, 128) and not sft.warn_if_foreign(4.85, 128)
  fresh = model.init_params(CONFIG, jax.random.PRNGKey(0))
  # Confident random predictions: the final norm scaled up makes the logits large. (Its own
  # arrays: the SFT step donates its params' buffers.)
  confident = model.init_params(CONFIG, jax.random.PRNGKey(0))
  confident = dict(confident, final_norm=confident["final_norm"] * 50.0)
  caplog.set_level("WARNING", logger="r1jax")
  losses = {}
  for name, params in (("fresh", fresh), ("confident", confident)):
    caplog.clear()
    sft.run_sft(CONFIG, params, TOK, EXAMPLES, RESUME_CFG, str(tmp_path / name), stop_at=1)
    losses[name] = logs.read_jsonl(str(tmp_path / name / "metrics.jsonl"))[0]["loss"]
    warned = any("worse than uniform guessing" in r.getMessage() for r in caplog.records)
    assert warned == (name == "confident"), (name, losses)
  assert losses["confident"] > np.log(CONFIG.vocab_size) + 1.0 > losses["fresh"], losses
