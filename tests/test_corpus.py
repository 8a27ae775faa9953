"""The pretraining corpus of R1-Zero in miniature: labels checked by the reward functions,
arithmetic checked by Python, the configured mix, determinism, and no test problem inside."""

import itertools
import json
import operator
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest

from r1jax import corpus, rewards
from r1jax.tasks import completion_prefix, get_task
from r1jax.tasks.countdown import evaluate
from r1jax.tokenizer import CharTokenizer

OPTIONS = dict(min_count=3, max_count=3, max_number=10, max_target=50,
               question_style="short", num_test=128)
PREFIX = completion_prefix("compact")


@pytest.fixture(scope="module")
def docs():
  return corpus.corpus_documents(1500, seed=3, task_options=OPTIONS)


def test_labels_agree_with_the_reward_functions(docs):
  for d in docs:
    if d.kind == "drill":
      assert d.problem is None and d.prompt == corpus.DRILL_PROMPT and not d.correct
      continue
    assert d.prompt.endswith("\n<think>")
    acc = rewards.countdown_reward(PREFIX + d.completion, d.problem)
    fmt = rewards.format_reward(d.completion, prefix=PREFIX)
    assert bool(acc) == d.correct, d.text
    assert bool(fmt) == d.formatted, d.text
  # All four kinds occur, and only searches and lucky singles solve their problem.
  assert {d.kind for d in docs} == set(corpus.KINDS)
  assert not any(d.correct for d in docs if d.kind == "give_up")
  assert any(d.correct for d in docs if d.kind == "search")


def test_every_written_step_is_correct_arithmetic(docs):
  ops = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}
  n = 0
  for d in docs:
    for x, op, y, r in re.findall(r"(\d+)([-+*/])(\d+)=(-?\d+)", d.completion):
      x, y, r = int(x), int(y), int(r)
      assert ops[op](x, y) == r and (r > 0 or op == "-"), d.text  # checks may give 0 or less
      if op == "/":
        assert x % y == 0
      n += 1
  assert n > 2 * len(docs)


def test_checks_compare_the_result_with_the_target(docs):
  for d in (d for d in docs if d.kind != "drill"):
    target = d.problem.meta["target"]
    checks = re.findall(r"=(\d+), check (\d+)-(\d+)=(-?\d+): (yes|no)\.", d.completion)
    assert len(checks) == (0 if d.kind == "single" else d.attempts) or d.kind == "malformed"
    for result, hi, lo, diff, verdict in checks:
      assert {int(hi), int(lo)} == {int(result), target} and int(hi) >= int(lo)
      assert int(hi) - int(lo) == int(diff)
      assert (verdict == "yes") == (int(result) == target) == (diff == "0"), d.text
  searches = [d for d in docs if d.kind == "search"]
  assert all(d.attempts <= corpus.CorpusConfig().max_attempts for d in searches)
  # A search stops at its first hit: "yes" only ever ends it.
  for d in searches:
    assert d.completion.count(": yes.") <= 1
    assert d.correct == (": yes." in d.completion)
    assert d.completion.count("try ") == d.attempts - 1


def test_mix_ratios_are_as_configured():
  cfg = corpus.CorpusConfig(single=0.4, search=0.3, give_up=0.15, malformed=0.05, drill=0.1)
  docs = corpus.corpus_documents(4000, seed=0, cfg=cfg, task_options=OPTIONS)
  n = len(docs)
  for kind, p in cfg.mix.items():
    share = sum(d.kind == kind for d in docs) / n
    assert abs(share - p) < 4 * np.sqrt(p * (1 - p) / n), (kind, share, p)
  # The search budget is 1 + Geometric(continue_prob), at least 2: mean attempts when no
  # attempt hits early, bounded by the hit-free expectation.
  geometric_mean = sum(min(max(k, 2), cfg.max_attempts) * (1 - cfg.continue_prob)
                       * cfg.continue_prob**(k - 1) for k in range(1, 60))
  searches = [d.attempts for d in docs if d.kind == "search"]
  assert 1 <= np.mean(searches) <= geometric_mean + 0.1


def test_deterministic_from_seed():
  a = corpus.corpus_documents(200, seed=7, task_options=OPTIONS)
  b = corpus.corpus_documents(200, seed=7, task_options=OPTIONS)
  c = corpus.corpus_documents(200, seed=8, task_options=OPTIONS)
  assert [d.text for d in a] == [d.text for d in b]
  assert [d.text for d in a] != [d.text for d in c]


def test_no_test_split_problem_in_the_corpus(docs):
  task = get_task("countdown", **OPTIONS)
  test_keys = {(tuple(sorted(p.meta["numbers"])), p.meta["target"])
               for p in task.split("test", seed=3)}
  corpus_keys = {(tuple(sorted(d.problem.meta["numbers"])), d.problem.meta["target"])
                 for d in docs if d.problem is not None}
  assert len(test_keys) == 128 and len(corpus_keys) > 300
  assert not test_keys & corpus_keys


def _brute_force_values(numbers):
  """Every value reachable by combining all numbers pairwise with + - * / and positive integer
  intermediates (an independent re-derivation of all_attempts' value set)."""
  if len(numbers) == 1:
    return {numbers[0]}
  out = set()
  for i, j in itertools.combinations(range(len(numbers)), 2):
    a, b = max(numbers[i], numbers[j]), min(numbers[i], numbers[j])
    rest = [n for k, n in enumerate(numbers) if k not in (i, j)]
    for r in (a + b, a * b, a - b if a > b else None, a // b if a % b == 0 else None):
      if r is not None:
        out |= _brute_force_values(rest + [r])
  return out


@pytest.mark.parametrize("numbers", [(3, 5, 9), (2, 2, 8), (1, 7, 7), (4, 6, 10), (2, 3, 4, 6)])
def test_all_attempts_match_brute_force(numbers):
  atts = corpus.all_attempts(numbers)
  assert {a.value for a in atts} == _brute_force_values(list(numbers))
  for a in atts:
    value, used = evaluate(a.expression)
    assert value == a.value and sorted(used) == sorted(numbers)
  assert len({a.expression for a in atts}) == len(atts)


def test_correct_traces_verify_and_are_well_formed():
  problems = get_task("countdown", **{**OPTIONS, "num_train": 200}).split("train", 0)
  for style in ("long", "short"):
    pairs = corpus.correct_traces(problems, seed=1, style=style)
    assert len(pairs) == len(problems)
    for (prompt, completion), p in zip(pairs, problems):
      assert prompt == p.question + "\n<think>"
      assert rewards.countdown_reward(PREFIX + completion, p) == 1.0, completion
      assert rewards.format_reward(completion, prefix=PREFIX) == 1.0, completion
  long = corpus.correct_traces(problems[:50], seed=1, style="long")
  assert np.mean([len(c) for _, c in long]) > 100
  with pytest.raises(ValueError, match="style"):
    corpus.correct_traces(problems, style="medium")
  with pytest.raises(ValueError, match="search_order"):
    corpus.correct_traces(problems, search_order="sorted")
  with pytest.raises(ValueError, match="max_misses"):
    corpus.correct_traces(problems, max_misses=-1)


@pytest.mark.parametrize("style", ["long", "short"])
def test_systematic_correct_traces_are_real_searches(style):
  """Each trace is consecutive attempts of one systematic order that end at its first hit: at
  most max_misses misses, as many as the order has before the hit when that is fewer."""
  problems = get_task("countdown", **{**OPTIONS, "num_train": 120}).split("train", 0)
  pairs = corpus.correct_traces(problems, seed=2, style=style, max_misses=4,
                                search_order="systematic")
  pattern = (r"Try (\d+) (.) (\d+) = (-?\d+), then (\d+) (.) (\d+) = (-?\d+)\." if style == "long"
             else r"(?:^ |try )(\d+)(.)(\d+)=(-?\d+), (\d+)(.)(\d+)=(-?\d+), check")
  counts = []
  for (prompt, completion), p in zip(pairs, problems):
    assert rewards.countdown_reward(PREFIX + completion, p) == 1.0, completion
    written = [((int(m[0]), m[1], int(m[2]), int(m[3])), (int(m[4]), m[5], int(m[6]), int(m[7])))
               for m in re.findall(pattern, completion)]
    assert written, completion
    counts.append(len(written) - 1)
    target, n = p.meta["target"], len(written)
    for seed in range(60):  # some order of this problem holds them consecutively, up to a hit
      order = corpus.systematic_attempts(p.meta["numbers"], random.Random(seed))
      first_hit = next(j for j, a in enumerate(order) if a.value == target)
      start = first_hit + 1 - n
      if start >= 0 and [a.steps for a in order[start:first_hit + 1]] == written and (
          n == 5 or start == 0):
        break
    else:
      raise AssertionError(f"not the end of a systematic search up to its first hit: {completion}")
  assert max(counts) == 4 and min(counts) < 4


def test_readable_trace_of_a_compact_search_is_the_long_trace_of_the_same_search():
  """A systematic search in the compact notation, rewritten, is word for word the long trace
  that correct_traces writes of the same search (same seed: the same attempts)."""
  problems = get_task("countdown", **{**OPTIONS, "num_train": 100}).split("train", 0)
  kw = dict(seed=3, max_misses=100, search_order="systematic")
  short = corpus.correct_traces(problems, style="short", **kw)
  long = corpus.correct_traces(problems, style="long", **kw)
  for p, (_, compact), (_, readable) in zip(problems, short, long):
    assert corpus.readable_trace(p, compact) == readable
    assert rewards.countdown_reward(PREFIX + readable, p) == 1.0
  # max_misses keeps the last misses and the hit.
  p, compact = next((p, c) for p, (_, c) in zip(problems, short) if c.count("check") >= 4)
  two = corpus.readable_trace(p, compact, max_misses=2)
  assert two.count("not 0, so try another way") == 2 and two.count("it works") == 1
  assert two.split(". Try ", 1)[1] in corpus.readable_trace(p, compact)


def test_readable_trace_drops_what_it_cannot_vouch_for():
  p = get_task("countdown", **{**OPTIONS, "num_train": 10}).split("train", 0)[0]
  numbers, target = p.meta["numbers"], p.meta["target"]
  hit = corpus.systematic_search(p, random.Random(0))[1]
  good = " " + corpus._checked(hit, target, first=True) + f"</think> <answer>{hit.expression}</answer>"
  assert corpus.readable_trace(p, good) is not None
  x, op, y, r = hit.steps[0]
  bad_step = good.replace(f"{x}{op}{y}={r}", f"{x}{op}{y}={r + 1}", 1)
  wrong_check = good.replace(": yes.", ": no.")
  junk = good.replace("</think>", " hmm.</think>")
  give_up = good.replace("</think>", " give up.</think>")
  not_verified = good.replace(f"<answer>{hit.expression}</answer>", "<answer>1+1</answer>")
  no_tags = good.replace("</think>", "")
  miss = next(a for a in corpus.all_attempts(tuple(numbers)) if a.value != target)
  ends_in_a_miss = (" " + corpus._checked(hit, target, True) + " " + corpus._checked(
      miss, target, False) + f"</think> <answer>{hit.expression}</answer>")
  for name, text in [("step", bad_step), ("check", wrong_check), ("junk", junk),
                     ("give up", give_up), ("answer", not_verified), ("tags", no_tags),
                     ("after the hit", ends_in_a_miss)]:
    assert corpus.readable_trace(p, text) is None, name
  assert corpus.parse_search("", target) == []


def test_bad_config_is_named():
  with pytest.raises(ValueError, match="continue_prob"):
    corpus.CorpusConfig(continue_prob=1.0)
  with pytest.raises(ValueError, match="mix weights"):
    corpus.CorpusConfig(single=-1)
  with pytest.raises(ValueError, match="kind"):
    corpus.make_document(None, "perfect", corpus.CorpusConfig(), None)
  with pytest.raises(ValueError, match="search_order"):
    corpus.CorpusConfig(search_order="sorted")
  with pytest.raises(ValueError, match="hit_bias"):
    corpus.CorpusConfig(search_order="systematic", hit_bias=0.5)


def test_batches_are_the_sampler_layout():
  tok = CharTokenizer()
  docs = corpus.corpus_documents(100, seed=0, task_options=OPTIONS)
  enc = corpus.encode_documents(docs, tok)
  batches = corpus.length_grouped_batches([len(e[0]) for e in enc], 16, seed=0)
  assert len(batches) == 6  # 100 // 16, the partial batch dropped
  flat = np.concatenate(batches)
  assert len(set(flat.tolist())) == len(flat)
  assert [b.tolist() for b in batches] == [
      b.tolist() for b in corpus.length_grouped_batches([len(e[0]) for e in enc], 16, seed=0)]
  batch = corpus.pad_batch(enc, batches[0], tok.pad_id, loss_on_prompt=False, multiple=64)
  assert batch["tokens"].shape[1] % 64 == 0
  for row, i in enumerate(batches[0]):
    ids, n_prompt = enc[i]
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == docs[i].text
    assert batch["mask"][row].sum() == len(ids)
    assert batch["loss_mask"][row].sum() == len(ids) - n_prompt
    assert tok.decode(ids[n_prompt:]) == docs[i].completion
  with pytest.raises(ValueError, match="max_length"):
    corpus.encode_documents(docs, tok, max_length=10)


def test_hit_bias_makes_searches_guess_the_target():
  always = corpus.CorpusConfig(single=0, search=1, give_up=0, malformed=0, drill=0,
                               hit_bias=1.0)
  docs = corpus.corpus_documents(200, seed=0, cfg=always, task_options=OPTIONS)
  assert all(d.correct and d.attempts == 1 for d in docs)
  never = corpus.CorpusConfig(single=0, search=1, give_up=0, malformed=0, drill=0,
                              hit_bias=0.0)
  docs = corpus.corpus_documents(1000, seed=0, cfg=never, task_options=OPTIONS)
  first_hit = np.mean([": yes." in d.completion.split(" try ")[0] for d in docs])
  # Unbiased first attempts hit about as often as a random attempt does.
  expected = np.mean([corpus.hit_rate(d.problem) for d in docs])
  assert abs(first_hit - expected) < 0.05 and first_hit < 0.3


SYSTEMATIC = corpus.CorpusConfig(single=0.2, search=0.4, give_up=0.3, malformed=0.1, drill=0,
                                 continue_prob=0.8, max_attempts=32, search_order="systematic")


@pytest.mark.parametrize("numbers", [(9, 3, 5), (4, 4, 2), (7, 1, 10)])
def test_systematic_attempts_are_every_attempt_pair_by_pair(numbers):
  expected = {a.expression for a in corpus.all_attempts(tuple(sorted(numbers)))}
  firsts = set()
  for seed in range(12):
    order = corpus.systematic_attempts(numbers, random.Random(seed))
    assert [a.expression for a in order] and {a.expression for a in order} == expected
    assert len(order) == len(expected)
    pairs = [a.steps[0][::2][:2] for a in order]
    # Each first pair's attempts are contiguous, and within a pair the operations come in the
    # order + - * /, the first step's before the second's.
    runs = [p for i, p in enumerate(pairs) if i == 0 or p != pairs[i - 1]]
    assert len(runs) == len(set(runs))
    for i in range(1, len(order)):
      if pairs[i] == pairs[i - 1]:
        ops = lambda a: tuple("+-*/".index(s[1]) for s in a.steps)
        assert ops(order[i - 1]) < ops(order[i]), (order[i - 1], order[i])
    firsts.add(pairs[0])
  assert len(firsts) == len(set(pairs)) > 1  # the first pair is random


def test_systematic_searches_follow_the_order_and_label_right():
  docs = corpus.corpus_documents(600, seed=4, cfg=SYSTEMATIC, task_options=OPTIONS)
  kinds = {"search": 0, "give_up": 0}
  for d in docs:
    acc = rewards.countdown_reward(PREFIX + d.completion, d.problem)
    assert bool(acc) == d.correct, d.text
    if d.kind not in kinds or d.attempts < 2:
      continue
    kinds[d.kind] += 1
    written = re.findall(r"(?:^ |try )([^c]*?), check [^:]*: (no|yes)\.", d.completion)
    texts = [t for t, _ in written]
    assert len(texts) == d.attempts, d.text
    # The attempts are consecutive in the order that starts with the document's first pair.
    for seed in range(50):
      order = [a.text() for a in corpus.systematic_attempts(d.problem.meta["numbers"],
                                                            random.Random(seed))]
      if order[:len(texts)] == texts:
        break
    else:
      raise AssertionError(f"not a systematic prefix: {d.text}")
    verdicts = [v for _, v in written]
    assert "yes" not in verdicts[:-1]
    if d.kind == "give_up":
      assert "yes" not in verdicts and d.completion.count("give up.") == 1
  assert kinds["search"] > 50 and kinds["give_up"] > 50
  assert max(d.attempts for d in docs) >= 8


def test_drills_check_half_of_their_steps_right():
  cfg = corpus.CorpusConfig(single=0, search=0, give_up=0, malformed=0, drill=1)
  docs = corpus.corpus_documents(300, seed=2, cfg=cfg, task_options=OPTIONS)
  verdicts = []
  for d in docs:
    items = re.findall(r"\d+[-+*/]\d+=(\d+), check (\d+)-(\d+)=(-?\d+): (yes|no)\.",
                       d.completion)
    assert len(items) == cfg.drill_items
    for r, hi, lo, diff, v in items:
      assert r in (hi, lo) and int(hi) - int(lo) == int(diff) >= 0
      assert (v == "yes") == (diff == "0")
      verdicts.append(v == "yes")
  assert abs(np.mean(verdicts) - 0.5) < 0.05


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pretrain(out, *extra, ok=True):
  """experiments/pretrain_base.py, 4 steps of the tiny preset on 16 documents. --pad_multiple=512
  (= --max_length) pads every batch to one shape: one compilation per run instead of one per
  length bucket (the loss is masked, so the weights do not depend on the padding)."""
  args = [sys.executable, os.path.join(REPO, "experiments", "pretrain_base.py"),
          f"--output_dir={out}", "--model_preset=tiny", "--max_steps=4", "--batch_size=4",
          "--warmup_steps=1", "--eval_num_problems=2", "--eval_num_samples=1",
          "--eval_batch_size=2", "--max_completion_length=8", "--max_prompt_length=36",
          "--log_every=1", "--pad_multiple=512",
          "--task_options=" + ",".join(f"{k}={v}" for k, v in OPTIONS.items()), *extra]
  result = subprocess.run(args, env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""),
                          capture_output=True, text=True, timeout=300)
  if not ok:
    return result
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(out, "model.safetensors"), "rb") as f:
    return f.read(), open(os.path.join(out, "README.md")).read(), json.loads(
        result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def whole_seed0(tmp_path_factory):
  """One uninterrupted seed-0 pretraining, the reference of both tests below."""
  out = tmp_path_factory.mktemp("pretrain") / "whole"
  return (str(out),) + _pretrain(str(out), "--seed=0")


@pytest.mark.slow
def test_pretrain_base_is_deterministic_from_its_seed(whole_seed0, tmp_path):
  """experiments/pretrain_base.py twice with the same flags writes identical weights, and its
  README records the command; a third run with another seed differs."""
  out_a, a, readme, _ = whole_seed0
  assert a == _pretrain(str(tmp_path / "b"), "--seed=0")[0]
  assert a != _pretrain(str(tmp_path / "c"), "--seed=1")[0]
  assert "python experiments/pretrain_base.py --output_dir=" + out_a in readme
  assert "--seed=0" in readme
  assert "held-out pass@1" in readme


@pytest.mark.slow
def test_pretraining_stopped_early_continues_to_the_same_weights(whole_seed0, tmp_path):
  """A pretraining run stopped after step 2 (as its time limit would stop it) writes a partial
  base that says so; the same command again resumes from its checkpoint and ends with the
  weights of an uninterrupted run, bit for bit."""
  out_whole, whole, _, info = whole_seed0
  assert info["finished"] and info["steps"] == 4
  run = lambda *extra, ok=True: _pretrain(str(tmp_path / "cut"), "--seed=0", *extra, ok=ok)  # noqa: E731
  part, readme, info = run("--stop_after_steps=2")
  assert not info["finished"] and info["steps"] == 2 and part != whole
  assert "2 of 4 (batch 4) - stopped early" in readme
  bad = run("--learning_rate=1e-3", ok=False)  # not the run it continues
  assert bad.returncode != 0 and "--learning_rate: 0.002 there, 0.001 now" in bad.stderr
  resumed, readme, info = run("--eval_num_samples=2")  # eval flags: free
  assert info["finished"] and "4 of 4 (batch 4) (resumed at step 2)" in readme
  assert resumed == whole
  assert not os.path.exists(tmp_path / "cut" / "pretrain_checkpoints")  # finished: removed
  assert not os.path.exists(os.path.join(out_whole, "pretrain_checkpoints"))
  losses = [json.loads(line) for line in open(tmp_path / "cut" / "pretrain_metrics.jsonl")]
  assert [r["step"] for r in losses] == [1, 2, 3, 4]
