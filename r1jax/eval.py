"""Evaluation as the DeepSeek-R1 paper reports it: pass@1 averaged over k samples, cons@k
(majority vote over the extracted answers) and the unbiased pass@k estimator."""

from __future__ import annotations

import collections
import math
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from r1jax import sampling
from r1jax.config import ModelConfig


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k of Chen et al. (2021): 1 − C(n−c, k) / C(n, k), for n samples of which c
  are correct. Computed as a product so large n does not overflow."""
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
  if n - c < k:
    return 1.0
  return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def normalize_answer(answer: Optional[str]) -> Optional[str]:
  """The key answers are voted on by: whitespace removed. None stays None (no answer)."""
  if answer is None:
    return None
  key = "".join(answer.split())
  return key or None


def majority_vote(answers: Sequence[Optional[str]]) -> Optional[int]:
  """Index of a sample carrying the most frequent normalized answer (None answers don't vote).

  Ties are broken deterministically by the answer that appears first; the index returned is
  that answer's first occurrence. None when no sample has an answer.
  """
  keys = [normalize_answer(a) for a in answers]
  counts = collections.Counter(k for k in keys if k is not None)
  if not counts:
    return None
  best = max(counts.values())
  for i, k in enumerate(keys):
    if k is not None and counts[k] == best:
      return i
  return None


def summarize(correct: np.ndarray, answers: Sequence[Sequence[Optional[str]]],
              ks: Sequence[int] = (1,)) -> dict[str, float]:
  """Metrics from a [P, k] boolean matrix of sample correctness and the extracted answers.

  pass@1 is the mean over problems of the share of correct samples (the paper's "pass@1
  averaged over k samples"); pass@1_stderr its standard error over problems (the std of the
  per-problem shares, ddof 1, over sqrt(P)), which holds both the draw of problems and the k
  samples' noise; cons@k the share of problems whose majority answer is correct; pass@j the
  unbiased estimator for each j in `ks` (j <= k).
  """
  correct = np.asarray(correct, bool)
  p, k = correct.shape
  shares = correct.mean(1) if k else np.zeros(p)
  out = {"num_problems": p, "samples_per_problem": k,
         "pass@1": float(shares.mean()) if p else 0.0,
         "pass@1_stderr": float(shares.std(ddof=1) / math.sqrt(p)) if p > 1 else 0.0}
  cons = []
  for i in range(p):
    j = majority_vote(answers[i])
    cons.append(bool(correct[i, j]) if j is not None else False)
  out["cons@k"] = float(np.mean(cons)) if p else 0.0
  for j in ks:
    if j <= k:
      out[f"pass@{j}"] = float(np.mean([pass_at_k(k, int(c), j) for c in correct.sum(1)]))
  return out


def evaluate_policy(params, model_config: ModelConfig, tokenizer, problems: Sequence[Any], *,
                    format_prompt: Callable[[Any], str],
                    score_fn: Callable[[list[str], list[Any]], tuple],
                    extract_fn: Callable[[str], Optional[str]],
                    num_samples: int, key, temperature: float = 0.6, top_p: float = 0.95,
                    top_k: int = 0, max_prompt_length: int = 256, max_new_tokens: int = 256,
                    batch_size: int = 16, stop_sequences=(), stop_strings: Sequence[str] = (),
                    add_bos: bool = True,
                    ks: Sequence[int] = (1,), progress: bool = False):
  """Samples `num_samples` completions per problem and scores them.

  Problems go through the sampler `batch_size` at a time with fixed shapes (the last batch is
  padded by repeating a problem and the padding is discarded), so there is one compilation.
  Returns (report dict, records: one dict per problem with its prompt, completions, extracted
  answers and per-sample correct / format / truncated / lengths lists). `stop_strings` end a
  completion wherever its text holds one (trainer.text_stops, trainer.decode_completions);
  `stop_sequences` are token-id sequences matched as ids.
  """
  from r1jax.runner import reflection_rate  # pylint: disable=import-outside-toplevel
  from r1jax import trainer  # pylint: disable=import-outside-toplevel
  cfg = sampling.SamplingConfig(
      max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
      num_samples=num_samples, eos_ids=tuple(tokenizer.eos_ids), stop_sequences=stop_sequences,
      stop_strings=trainer.text_stops(tokenizer, stop_strings), pad_id=tokenizer.pad_id)
  problems = list(problems)
  records, correct, answers = [], [], []
  lengths = []
  reward_stats = {"reward_errors": 0, "reward_timeouts": 0}
  starts = range(0, len(problems), batch_size)
  if progress:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    starts = tqdm(starts, desc="eval", unit="batch")
  for start in starts:
    chunk = problems[start:start + batch_size]
    real = len(chunk)
    chunk = chunk + [chunk[-1]] * (batch_size - real)
    prompts = [format_prompt(p) for p in chunk]
    ptoks, pmask = trainer.encode_prompts(tokenizer, prompts, max_prompt_length, add_bos)
    key, sub = jax.random.split(key)
    out = jax.device_get(sampling.generate(params, model_config, ptoks, pmask, sub, cfg))
    n = real * num_samples
    out, texts = trainer.decode_completions(tokenizer, jax.tree.map(lambda x: x[:n], out),
                                            stop_strings)
    rows = [p for p in chunk[:real] for _ in range(num_samples)]
    _, components, stats = score_fn(texts, rows)
    for name in reward_stats:
      reward_stats[name] += int(stats.get(name, 0))
    ok = np.asarray(components["accuracy"]) > 0.5
    formatted = np.asarray(components.get("format", np.zeros(n))) > 0.5
    truncated = np.asarray(out.truncated[:n], bool)
    lengths.extend(np.asarray(out.lengths[:n]).tolist())
    for i in range(real):
      sl = slice(i * num_samples, (i + 1) * num_samples)
      ans = [extract_fn(t) for t in texts[sl]]
      correct.append(ok[sl])
      answers.append(ans)
      records.append({"question": getattr(chunk[i], "question", str(chunk[i])),
                      "gold": getattr(chunk[i], "answer", None), "prompt": prompts[i],
                      "completions": texts[sl], "answers": ans, "correct": ok[sl].tolist(),
                      "format": formatted[sl].tolist(), "truncated": truncated[sl].tolist(),
                      "lengths": np.asarray(out.lengths[sl]).tolist()})
  report = summarize(np.array(correct).reshape(len(problems), num_samples), answers, ks)
  report["completion_length_mean"] = float(np.mean(lengths)) if lengths else 0.0
  for name, field in (("format_rate", "format"), ("truncated_fraction", "truncated")):
    flat = [x for r in records for x in r[field]]
    report[name] = float(np.mean(flat)) if flat else 0.0
  # The share of completions that check a result or try again (runner.REFLECTION_PATTERNS).
  report["reflection_rate"] = reflection_rate([c for r in records for c in r["completions"]])
  # Scoring failures count as wrong answers; a non-zero count here says the numbers above are
  # not the policy's alone.
  report.update(reward_stats)
  return report, records
