"""Evaluation metrics (pass@k against its closed form, cons@k ties) and the evaluate CLI on a
tiny random Hugging Face checkpoint against five GSM8K problems."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import SHARED_DATA
from hf_utils import make_tiny_hf_model

from r1jax import eval as r1eval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------
# pass@k, cons@k
# ----------------------------------------------------------------------------------------------
def _closed_form(n, c, k):
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)  # math.comb(m, k) = 0 when k > m


def test_pass_at_k_matches_the_closed_form():
  for n in range(1, 13):
    for c in range(n + 1):
      for k in range(1, n + 1):
        assert r1eval.pass_at_k(n, c, k) == pytest.approx(_closed_form(n, c, k), abs=1e-12)
  assert r1eval.pass_at_k(200, 13, 50) == pytest.approx(_closed_form(200, 13, 50), rel=1e-12)


def test_pass_at_k_edge_cases():
  assert r1eval.pass_at_k(10, 0, 5) == 0.0  # c = 0: never
  assert r1eval.pass_at_k(10, 10, 1) == 1.0  # c = n: always
  assert r1eval.pass_at_k(10, 7, 4) == 1.0  # n - c = 3 < k = 4: any 4 samples hold a correct one
  assert r1eval.pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 = c / n
  for n, c, k in ((5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)):
    with pytest.raises(ValueError, match="pass_at_k"):
      r1eval.pass_at_k(n, c, k)


def test_majority_vote_breaks_ties_by_first_appearance():
  assert r1eval.majority_vote(["5", "7", "7", "5", None]) == 0  # 5 and 7 tie: 5 came first
  assert r1eval.majority_vote(["7", "5", "5", "7"]) == 0
  assert r1eval.majority_vote([None, "7", "5", "5 "]) == 2  # whitespace-normalized: 5 wins
  assert r1eval.majority_vote([None, None]) is None
  assert r1eval.majority_vote([]) is None
  votes = [["a", "b"], ["b", "a"], ["x", "y", "y", "x"]]
  assert [r1eval.majority_vote(v) for v in votes] == [0, 0, 0]
  assert all(r1eval.majority_vote(v) == r1eval.majority_vote(list(v)) for v in votes)


def test_summarize_by_hand():
  correct = np.array([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]], bool)
  answers = [["7", "8", "8", "7"],  # tie 7/8, 7 first and correct
             ["1", "2", None, None],
             ["3", "3", "3", "4"]]
  out = r1eval.summarize(correct, answers, ks=(1, 2, 4, 8))
  assert out["pass@1"] == pytest.approx(5 / 12)
  # Per-problem shares 1/2, 0, 3/4 around 5/12: squares 1/144, 25/144, 16/144 over 2, / 3.
  assert out["pass@1_stderr"] == pytest.approx(math.sqrt(42 / 144 / 2 / 3))
  assert out["cons@k"] == pytest.approx(2 / 3)
  expected2 = np.mean([_closed_form(4, c, 2) for c in (2, 0, 3)])
  assert out["pass@2"] == pytest.approx(expected2)
  assert out["pass@4"] == pytest.approx(2 / 3)
  assert "pass@8" not in out  # k = 4 samples cannot estimate pass@8
  assert out["num_problems"] == 3 and out["samples_per_problem"] == 4


# ----------------------------------------------------------------------------------------------
# The CLI
# ----------------------------------------------------------------------------------------------
def _small_data(tmp_path, n=5):
  """The first n records of GSM8K's splits and of AMC 2023 (a small TFDS preparation)."""
  for name in ("gsm8k/train", "gsm8k/test", "amc23/test"):
    os.makedirs(tmp_path / "data" / os.path.dirname(name), exist_ok=True)
    with open(os.path.join(SHARED_DATA, f"{name}.jsonl")) as f:
      lines = [next(f) for _ in range(n)]
    with open(tmp_path / "data" / f"{name}.jsonl", "w") as f:
      f.writelines(lines)
  return str(tmp_path / "data")


def _run_cli(args, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "evaluate.py"),
                         *args, f"--task_options=cache_dir={tmp_path / 'tfds'}",
                         "--noprogress"], capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def _check_report(report_path, records_path, task, n, k):
  with open(report_path) as f:
    report = json.load(f)
  with open(records_path) as f:
    records = [json.loads(line) for line in f if json.loads(line)["task"] == task]
  r = report["tasks"][task]
  assert r["num_problems"] == n and r["samples_per_problem"] == k and len(records) == n
  assert report["temperature"] == 0.6 and report["top_p"] == 0.95
  assert all(len(rec["completions"]) == k for rec in records)
  correct = np.array([rec["correct"] for rec in records])
  assert r["pass@1"] == pytest.approx(correct.mean())
  assert r[f"pass@{k}"] == pytest.approx(np.mean(correct.any(1)))
  return report, records


def test_evaluate_cli_on_a_tiny_hf_checkpoint(tmp_path):
  _, ckpt = make_tiny_hf_model(tmp_path, "qwen2", vocab_size=128, max_position_embeddings=1024)
  data = _small_data(tmp_path)
  out = _run_cli([f"--init_checkpoint={ckpt}", "--task=gsm8k", f"--data_dir={data}",
                  "--eval_num_samples=3", "--max_completion_length=12",
                  f"--report={tmp_path / 'report.json'}",
                  f"--records={tmp_path / 'records.jsonl'}"], tmp_path)
  _, records = _check_report(tmp_path / "report.json", tmp_path / "records.jsonl", "gsm8k", 5, 3)
  assert records[0]["gold"] == "18"  # Janet's ducks
  assert "gsm8k" in out and "pass@1" in out and "cons@k" in out


def test_evaluate_cli_with_a_tokenizer_json_and_two_tasks(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # pylint: disable=import-outside-toplevel
  _, ckpt = make_tiny_hf_model(tmp_path, "llama", vocab_size=128, max_position_embeddings=2048)
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=128, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()[:90])
  tok.train_from_iterator(["Natalia sold clips to 48 of her friends in April."] * 4, trainer)
  tok.save(os.path.join(ckpt, "tokenizer.json"))
  with open(os.path.join(ckpt, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}, f)
  data = _small_data(tmp_path, 3)
  _run_cli([f"--init_checkpoint={ckpt}", "--task=gsm8k,amc23", f"--data_dir={data}",
            "--num_problems=3", "--eval_num_samples=2",
            "--max_completion_length=8", "--pass_ks=1,2", "--template=r1_zero",
            f"--report={tmp_path / 'r.json'}", f"--records={tmp_path / 'rec.jsonl'}"], tmp_path)
  for task in ("gsm8k", "amc23"):
    _check_report(tmp_path / "r.json", tmp_path / "rec.jsonl", task, 3, 2)


def test_evaluate_policy_reports_scoring_failures():
  """Timed-out or failing reward calls score as wrong; the report counts them so that a broken
  scorer is not mistaken for a weak policy."""
  import jax  # pylint: disable=import-outside-toplevel
  from r1jax import model, rewards, tasks  # pylint: disable=import-outside-toplevel
  from r1jax.config import get_config  # pylint: disable=import-outside-toplevel
  from r1jax.tokenizer import load_tokenizer  # pylint: disable=import-outside-toplevel
  config = get_config("tiny")
  tok = load_tokenizer("char")
  problems = tasks.get_task("countdown", num_test=3).split("test", 0)

  def score(texts, rows):
    _, comps, _ = rewards.score_completions(texts, rows, "countdown",
                                            rewards.RewardConfig(executor="inline"))
    return None, comps, {"reward_errors": 1, "reward_timeouts": len(texts)}

  report, _ = r1eval.evaluate_policy(
      model.init_params(config, jax.random.PRNGKey(0)), config, tok, problems,
      format_prompt=lambda p: p.question, score_fn=score, extract_fn=rewards.extract_answer,
      num_samples=2, key=jax.random.PRNGKey(1), max_prompt_length=256, max_new_tokens=8,
      batch_size=2)
  # Two sampler calls (3 problems in batches of 2): 4 + 2 completions scored.
  assert report["reward_timeouts"] == 6
  assert report["reward_errors"] == 2
  # The reflection share is that of the returned completions.
  from r1jax.runner import reflection_rate  # pylint: disable=import-outside-toplevel
  _, records = r1eval.evaluate_policy(
      model.init_params(config, jax.random.PRNGKey(0)), config, tok, problems,
      format_prompt=lambda p: p.question, score_fn=score, extract_fn=rewards.extract_answer,
      num_samples=2, key=jax.random.PRNGKey(1), max_prompt_length=256, max_new_tokens=8,
      batch_size=2)
  texts = [c for r in records for c in r["completions"]]
  assert len(texts) == 6 and report["reflection_rate"] == reflection_rate(texts)
