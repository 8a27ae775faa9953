"""benchmarks/vs_trl.py: the shared completion lengths, TRL's forced lengths, the parsing of
grpo_step.py's table, and (marker `bench`) the whole --small comparison on the CPU."""

import json
import math
import os
import sys

import numpy as np
import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
sys.path.insert(0, BENCHMARKS)

import grpo_step  # noqa: E402  pylint: disable=wrong-import-position
import vs_trl  # noqa: E402  pylint: disable=wrong-import-position

GRPO_STEP_OUTPUT = """\
device: NVIDIA H100 80GB HBM3 (gpu) x 1, mesh none (one device, plain jit), preset qwen2.5-0.5b
phase | ms | share | what
rollout | 2290.00 | 20.8% | generate 256 x 512 tokens + copy to host
rewards | 40.50 | 0.4% | countdown rewards of 256 completions (process pool)
old_logprobs | 730.00 | 6.6% | π_old pass
ref_logprobs | 725.00 | 6.6% | π_ref pass
update | 7210.00 | 65.4% | 2 optimizer step(s)
other | 24.50 | 0.2% | encode, decode, advantages, shuffles
total | 11020.00 | 100.0% | trainer.step wall time
generated tokens/step: 131072; step tok/s: 11894; rollout tok/s: 57237; first step (compile): 48.3 s
"""


def test_completion_lengths_contract():
  a = vs_trl.completion_lengths(256, 512, seed=0)
  assert a.shape == (256,) and a.dtype == np.int32
  assert np.array_equal(a, vs_trl.completion_lengths(256, 512, seed=0))  # deterministic
  assert not np.array_equal(a, vs_trl.completion_lengths(256, 512, seed=1))
  for seed in range(5):
    x = vs_trl.completion_lengths(256, 512, seed)
    assert x.min() >= 1 and x.max() <= 512
    assert 0.25 < x.mean() / 512 < 0.35, (seed, x.mean())  # "mean ~30% of the max"
    assert 0 < np.mean(x == 512) < 0.05  # a few truncated rows, as in a run
  assert vs_trl.completion_lengths(8, 1, seed=0).tolist() == [1] * 8
  assert np.array_equal(vs_trl.case_lengths("fixed", 6, 16, 0), np.full(6, 16))
  assert np.array_equal(vs_trl.case_lengths("variable", 6, 16, 3),
                        vs_trl.completion_lengths(6, 16, 3))
  with pytest.raises(ValueError, match="rows=0"):
    vs_trl.completion_lengths(0, 16, 0)


def test_forced_lengths_processor_masks_like_a_loop():
  torch = pytest.importorskip("torch")
  pytest.importorskip("transformers")
  rng = np.random.default_rng(0)
  rows, vocab, eos, width = 5, 11, 3, 7
  lengths = np.array([1, 2, 4, 4, 6])
  proc = vs_trl.forced_lengths_processor(torch.tensor(lengths), eos)
  proc.prompt_width = width
  for t in range(7):
    scores = rng.normal(size=(rows, vocab)).astype(np.float32)
    got = proc(torch.zeros((rows, width + t), dtype=torch.long), torch.tensor(scores)).numpy()
    want = scores.copy()
    for r in range(rows):
      if t < lengths[r] - 1:  # too early to end
        want[r, eos] = -np.inf
      elif t == lengths[r] - 1:  # must end here
        want[r, :] = -np.inf
        want[r, eos] = scores[r, eos]
    np.testing.assert_array_equal(got, want, err_msg=f"t={t}")
  with pytest.raises(ValueError, match="generate got 2 rows"):
    proc(torch.zeros((2, width), dtype=torch.long), torch.zeros((2, vocab)))


def test_parse_grpo_step_reads_every_row():
  got = vs_trl.parse_grpo_step(GRPO_STEP_OUTPUT)
  assert got == {"device": "NVIDIA H100 80GB HBM3 (gpu)", "rollout": 2.29, "rewards": 0.0405,
                 "old_logprobs": 0.73, "ref_logprobs": 0.725, "update": 7.21, "other": 0.0245,
                 "total": 11.02, "generated_tokens": 131072, "first_step": 48.3}
  with pytest.raises(ValueError, match="update"):
    vs_trl.parse_grpo_step(GRPO_STEP_OUTPUT.replace("update | ", "updates | "))


def test_table_ratios_are_trl_over_r1jax():
  r1 = {"rollout": 2.0, "update": 4.0, "total": 8.0, "rewards": 0.0}
  trl = {"rollout": 5.0, "update": 6.0, "total": 12.0, "rewards": 0.5, "other": 1.0}
  table = {k: (a, b, r) for k, a, b, r in vs_trl.case_table(r1, trl)}
  assert [k for k, *_ in vs_trl.case_table(r1, trl)] == list(vs_trl.ROWS)
  assert table["rollout"] == (2.0, 5.0, 2.5)
  assert table["total"] == (8.0, 12.0, 1.5)
  assert table["rewards"] == (0.0, 0.5, None)  # r1jax 0 s: no ratio
  assert table["other"] == (None, 1.0, None)
  text = vs_trl.format_table(vs_trl.case_table(r1, trl))
  assert "rollout | 2.000 | 5.000 | 2.50" in text and "other | n/a | 1.000 | n/a" in text


def test_grpo_step_gets_the_same_work():
  """grpo_step.py's own parser reads back the shape this script gives TRL."""
  for argv in ([], ["--small"], ["--prompts", "4", "--new_tokens", "64", "--beta", "0"]):
    args = vs_trl.parse_args(argv + ["--grpo_step_args", "--mesh_fsdp 1"])
    ours = vs_trl.grpo_step_argv(args, "lengths.json")
    theirs = grpo_step.parse_args([a for a in ours[2:] if a not in ("--lengths_file",
                                                                    "lengths.json")])
    for name in ("preset", "dtype", "prompts", "num_generations", "prompt_len", "new_tokens",
                 "num_iterations", "beta", "remat", "gradient_accumulation_steps", "repeats",
                 "seed"):
      assert getattr(theirs, name) == getattr(args, name), (argv, name)
    assert theirs.logprob_batch_size == theirs.prompts * theirs.num_generations // (
        theirs.gradient_accumulation_steps)
    assert ours[-4:-2] == ["--lengths_file", "lengths.json"]
    assert ours[-2:] == ["--mesh_fsdp", "1"]


@pytest.mark.parametrize("argv, flag", [
    (["--cases", "fixed,long"], "--cases"),
    (["--sides", "vllm"], "--sides"),
    (["--gradient_accumulation_steps", "3"], "--gradient_accumulation_steps"),
    (["--num_generations", "1"], "--num_generations"),
    (["--dtype", "float16"], "--dtype"),
])
def test_bad_flags_name_the_flag(argv, flag, capsys):
  with pytest.raises(SystemExit):
    vs_trl.parse_args(argv)
  assert flag in capsys.readouterr().err


@pytest.mark.bench
def test_vs_trl_small_end_to_end(tmp_path, capsys):
  """The --small run (CPU, both sides, both cases) end to end. Skipped only where trl is not
  importable: CI does not install it (the GPU run carries it as wheels). No timing is asserted;
  the forced completion lengths and the generated token counts are."""
  pytest.importorskip("trl")
  out = tmp_path / "vs_trl.json"
  assert vs_trl.main(["--small", "--out", str(out)]) == 0
  text = capsys.readouterr().out
  assert text.count("phase | r1jax s | TRL s | TRL / r1jax") == 2
  result = json.loads(out.read_text())
  assert set(result["cases"]) == {"fixed", "variable"}
  assert result["versions"]["trl"] == __import__("trl").__version__
  for case, entry in result["cases"].items():
    lengths = vs_trl.case_lengths(case, 8, 16, 0)
    assert entry["lengths"]["sum"] == lengths.sum()
    trl = entry["trl"]
    assert trl["lengths_match"] is True and trl["generated_tokens"] == lengths.sum(), case
    assert all(math.isfinite(trl[k]) for k in vs_trl.ROWS), trl
    assert trl["old_logprobs"] > 0 and trl["ref_logprobs"] > 0  # μ = 2, beta = 0.04
    for cycle in trl["cycles"]:  # the phases split each cycle
      assert sum(cycle[k] for k in vs_trl.PHASES) == pytest.approx(cycle["total"], abs=1e-9)
    r1 = entry["r1jax"]
    if case == "variable" and "skipped" in r1:  # grpo_step.py without --lengths_file
      assert entry["ratio"]["total"] is None
      continue
    assert r1["generated_tokens"] == lengths.sum(), case
    assert entry["ratio"]["total"] == pytest.approx(trl["total"] / r1["total"])
