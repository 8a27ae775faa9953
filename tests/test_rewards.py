"""Rule-based rewards: format, answer extraction, the Countdown verifier against adversarial
equations, numeric answers on real GSM8K lines, math-verify on MATH-500, and batch scoring with
errors and timeouts."""

import json
import os
import random
import re
import threading
import time
from fractions import Fraction

import numpy as np
import pytest
from conftest import SHARED_DATA
from reward_fns import crashing_reward, raising_reward, sleeping_reward

from r1jax import rewards
from r1jax.rewards import (RewardConfig, extract_answer, format_reward, last_boxed,
                           math_reward, numeric_reward, parse_number, score_completions)
from r1jax.tasks import Problem, completion_prefix, format_prompt
from r1jax.tasks.countdown import evaluate, verify_equation

INLINE = RewardConfig(executor="inline", timeout_s=2.0)


def _jsonl(path, n=None):
  with open(path) as f:
    return [json.loads(line) for _, line in zip(range(n or 10**9), f)]


# ----------------------------------------------------------------------------------------------
# Format and extraction
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("completion,expected", [
    ("<think>a</think><answer>1</answer>", 1.0),
    (" <think>\nstep 1\nstep 2\n</think>\n<answer> 42 </answer>\n", 1.0),
    ("<think></think> <answer></answer>", 1.0),  # structure only; accuracy judges content
    ("<answer>1</answer>", 0.0),  # no think block
    ("<think>a</think>", 0.0),  # no answer block
    ("<think>a</think> 42", 0.0),
    ("<answer>1</answer><think>a</think>", 0.0),  # out of order
    ("<think>a<think>b</think></think><answer>1</answer>", 0.0),  # nested
    ("<think>a</think><think>b</think><answer>1</answer>", 0.0),  # duplicated think
    ("<think>a</think><answer>1</answer><answer>2</answer>", 0.0),  # duplicated answer
    ("<think>a</think><answer>1</answer> So the answer is 2.", 0.0),  # text after </answer>
    ("Sure! <think>a</think><answer>1</answer>", 0.0),  # text before <think>
    ("<think>a</think> and so <answer>1</answer>", 0.0),  # text between the blocks
    ("<think>a<answer>1</answer></think>", 0.0),  # answer inside think
    ("<think>a</think><answer>1", 0.0),  # unclosed
])
def test_format_reward(completion, expected):
  assert format_reward(completion) == expected


def test_format_reward_prefix_for_the_compact_template():
  prompt = format_prompt("Make 5 with 2, 3.", "compact")
  completion = " 2+3=5 </think> <answer>2+3</answer>"  # the model continues inside <think>
  assert prompt.endswith("<think>")
  assert format_reward(completion) == 0.0
  assert format_reward(completion, prefix=completion_prefix("compact")) == 1.0
  assert format_reward("<think>" + completion, prefix="<think>") == 0.0  # two think tags


def test_extract_answer():
  assert extract_answer("<think>x</think><answer> 7 </answer>") == "7"
  assert extract_answer("<answer>1</answer> <answer>\n2\n</answer>") == "2"  # the last one
  assert extract_answer("no tags") is None
  assert extract_answer(r"so \boxed{\frac{1}{2}}.") is None
  assert extract_answer(r"so \boxed{\frac{1}{2}}.", boxed_fallback=True) == r"\frac{1}{2}"
  assert extract_answer(r"\boxed{1} then \boxed{\sqrt{2}}", boxed_fallback=True) == r"\sqrt{2}"
  assert last_boxed(r"\boxed{x") is None


# ----------------------------------------------------------------------------------------------
# Countdown verifier
# ----------------------------------------------------------------------------------------------
NUMS, TARGET = (19, 36, 55, 7), 65


@pytest.mark.parametrize("answer", [
    "55 + 36 - 19 - 7",
    "55 + 36 - 7 - 19 = 65",
    "36 + 55 - (19 + 7)",
    "36+55-(19+7)=65",
    "-(19 + 7) + 36 + 55",  # unary minus
    "55 + 36 − 19 − 7",  # unicode minus
])
def test_countdown_correct_equations(answer):
  assert verify_equation(answer, NUMS, TARGET)
  problem = Problem("q", answer, {"numbers": NUMS, "target": TARGET})
  assert rewards.countdown_reward(f"<think>t</think><answer>{answer}</answer>", problem) == 1.0


def test_countdown_operator_spellings_and_fractions():
  assert verify_equation("3 x 4 ÷ 2", (2, 3, 4), 6)
  assert verify_equation(r"3 \times 4 \div 2", (2, 3, 4), 6)
  assert verify_equation("(8 / 3) * 3 × 1", (1, 3, 3, 8), 8)  # exact: no float round-off
  assert not verify_equation("8 / 3 * 3", (3, 3, 8), 9)


@pytest.mark.parametrize("answer", [
    "55 + 36 - 19",  # a number missing
    "55 + 36 - 19 - 7 + 7 - 7",  # a number reused
    "55 + 36 - 26",  # a number not given
    "55 + 36 - 19 - 7 = 66",  # right side is not the target
    "55 + 36 - 19 - 7 = 65 = 65",
    "55 + 36 - 19 - 7 = 60 + 5",
    "55 + 36 + 19 - 7",  # wrong value
    "36 / (55 - 55) + 19 + 7",  # division by zero (and 55 reused)
    "(19 + 7) / (55 - 36 - 19) + 65",
    "55 ** 36 - 19 - 7",  # power: rejected, not computed
    "55 ^ 36 - 19 - 7",
    "__import__('os').system('echo pwned')",
    "import os",
    "55 + 36 - 19 - 7; print(1)",
    "55.0 + 36 - 19 - 7",
    "((((((((((((((((((((55))))))))))))))))))) + 36 - 19 - 7",  # deeper than the limit
    "--------------------55 + 36 - 19 - 7",  # right value, but 20 unary minuses: too deep
    "",
    "65",
])
def test_countdown_rejects(answer):
  assert not verify_equation(answer, NUMS, TARGET)


def test_countdown_rejects_huge_inputs_quickly():
  start = time.monotonic()
  assert not verify_equation("9**9**9**9**9", (9, 9, 9, 9, 9), 1)
  assert not verify_equation("9^9^9^9", (9, 9, 9, 9), 1)
  assert not verify_equation("1+" * 1_000_000 + "1", (1,) * 1_000_001, 1_000_001)
  assert not verify_equation("(" * 100_000 + "1" + ")" * 100_000, (1,), 1)
  assert not verify_equation("99999999999999999999 - 99999999999999999998", (1, 2), 1)
  assert time.monotonic() - start < 1.0


def test_evaluate_matches_python_on_random_expressions():
  # Reference: Python evaluates test-generated expressions with Fraction operands.
  rng = random.Random(0)

  def expr(depth):
    if depth == 0 or rng.random() < 0.3:
      return str(rng.randint(0, 20))
    a, b = expr(depth - 1), expr(depth - 1)
    op = rng.choice("+-*/")
    return f"({a} {op} {b})" if rng.random() < 0.5 else f"-{a} {op} {b}"

  checked = 0
  for _ in range(300):
    text = expr(4)
    try:
      with_fractions = re.sub(r"(\d+)", r"Fraction(\1)", text)
      want = eval(with_fractions, {"Fraction": Fraction})  # pylint: disable=eval-used
    except ZeroDivisionError:
      with pytest.raises(ValueError, match="division by zero"):
        evaluate(text)
      continue
    value, numbers = evaluate(text)
    assert value == want, text
    assert numbers == [int(n) for n in re.findall(r"\d+", text)]
    checked += 1
  assert checked > 200


# ----------------------------------------------------------------------------------------------
# Numeric answers (arithmetic, GSM8K)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,value", [
    ("18", 18), ("$18.", 18), ("1,450,000", 1450000),
    ("The total is $1,234.50.", Fraction("1234.5")),
    ("3/4", Fraction(3, 4)), (r"\frac{3}{4}", Fraction(3, 4)), ("-5", -5), ("(-7)", -7),
    ("5-3", 3), ("18 or 19", 19), (".5", Fraction(1, 2)), ("no number", None), ("", None),
])
def test_parse_number(text, value):
  assert parse_number(text) == value


def test_numeric_reward_on_real_gsm8k_lines():
  records = _jsonl(os.path.join(SHARED_DATA, "gsm8k", "test.jsonl"))
  with_commas = [r for r in records if "," in r["answer"].split("####")[-1]][:20]
  assert with_commas  # e.g. '#### 1,450,000'
  for r in records[:30] + with_commas:
    reasoning, raw_gold = r["answer"].rsplit("####", 1)
    gold = raw_gold.strip().replace(",", "")
    problem = Problem(r["question"], gold)
    right = f"<think>{reasoning}</think> <answer>${raw_gold.strip()}.</answer>"
    wrong = f"<think>{reasoning}</think> <answer>{int(gold) + 1}</answer>"
    assert numeric_reward(right, problem) == 1.0, raw_gold
    assert numeric_reward(wrong, problem) == 0.0
    assert numeric_reward(r["answer"], problem) == 0.0  # no answer tag: no credit
  assert numeric_reward("<answer>0.75</answer>", Problem("q", "3/4")) == 1.0
  assert numeric_reward("<answer>0.3333</answer>", Problem("q", "1/3")) == 0.0
  assert numeric_reward("<answer>0.3333</answer>", Problem("q", "1/3"), rel_tol=1e-3) == 1.0


# ----------------------------------------------------------------------------------------------
# Math answers through math-verify
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gold,answer,expected", [
    (r"\frac{14}{3}", "14/3", 1.0),
    (r"\frac{14}{3}", r"\dfrac{14}{3}", 1.0),
    (r"\frac{14}{3}", "14/4", 0.0),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \frac{\pi}{2})", 1.0),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \pi/2)", 1.0),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \pi)", 0.0),
    (r"\text{(C)}", "C", 1.0),
    (r"\text{(C)}", "D", 0.0),
    (r"\$18.90", "18.90", 1.0),
    (r"\frac{\sqrt{3}}{2}", r"\sqrt{3}/2", 1.0),
    ("x^2+2x", "x(x+2)", 1.0),
])
def test_math_reward_equivalences(gold, answer, expected):
  assert math_reward(f"<think>t</think> <answer>{answer}</answer>", Problem("q", gold)) == expected


def test_math_reward_boxed_fallback_and_tag_priority():
  problem = Problem("q", r"\frac{14}{3}")
  assert math_reward(r"So the answer is $\boxed{\frac{14}{3}}$.", problem) == 1.0
  assert math_reward(r"<answer>\boxed{14/3}</answer>", problem) == 1.0
  assert math_reward(r"\boxed{14/3} <answer>5</answer>", problem) == 0.0  # the tag wins
  assert math_reward("no answer at all", problem) == 0.0


def test_math500_golds_and_solutions_verify():
  records = _jsonl(os.path.join(SHARED_DATA, "math500", "test.jsonl"))[::5]
  problems = [Problem(r["problem"], r["answer"]) for r in records]
  tagged = [f"<think>t</think> <answer>{r['answer']}</answer>" for r in records]
  solutions = [r["solution"] for r in records]  # graded by their last \boxed{}
  for completions in (tagged, solutions):
    _, components, stats = score_completions(completions, problems, "math", INLINE)
    assert components["accuracy"].tolist() == [1.0] * len(records)
    assert stats["reward_errors"] == stats["reward_timeouts"] == 0
  # Negative control: integer golds off by one.
  ints = [p for p in problems if re.fullmatch(r"-?\d+", p.answer)]
  off = [f"<answer>{int(p.answer) + 1}</answer>" for p in ints]
  assert len(ints) > 20
  assert score_completions(off, ints, "math", INLINE)[1]["accuracy"].sum() == 0


# ----------------------------------------------------------------------------------------------
# Batch scoring: weights, errors, timeouts, executors
# ----------------------------------------------------------------------------------------------
for _name, _fn in (("raising", raising_reward), ("sleeping", sleeping_reward),
                   ("crashing", crashing_reward)):
  if _name not in rewards.REWARD_FNS:
    rewards.register_reward_fn(_name, _fn)

COUNTDOWN = Problem("q", "1 + 2 + 3 = 6", {"numbers": (1, 2, 3), "target": 6})


def test_score_completions_weighted_sum():
  completions = ["<think>t</think><answer>1+2+3</answer>",  # format 1, accuracy 1
                 "<think>t</think><answer>1+2</answer>",  # format 1, accuracy 0
                 "<answer>3*2*1</answer>",  # format 0, accuracy 1
                 "6"]  # nothing
  config = RewardConfig(format_weight=0.25, accuracy_weight=2.0, extra={"raising": 4.0},
                        executor="inline")
  total, components, stats = score_completions(completions, [COUNTDOWN] * 4, "countdown", config)
  np.testing.assert_array_equal(components["format"], [1, 1, 0, 0])
  np.testing.assert_array_equal(components["accuracy"], [1, 0, 1, 0])
  np.testing.assert_array_equal(components["raising"], [0.5] * 4)
  np.testing.assert_allclose(total, [4.25, 2.25, 4.0, 2.0])
  assert total.dtype == np.float32 and total.shape == (4,)
  assert stats["reward_errors"] == stats["reward_timeouts"] == 0


def test_score_completions_prefix():
  config = RewardConfig(executor="inline")
  _, components, _ = score_completions([" t </think><answer>1+2+3</answer>"], [COUNTDOWN],
                                       "countdown", config, prefix="<think>")
  assert components["format"][0] == 1.0 and components["accuracy"][0] == 1.0


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_errors_and_timeouts_give_zero_and_are_counted(executor):
  config = RewardConfig(executor=executor, timeout_s=0.3, num_workers=2,
                        extra={"raising": 1.0, "sleeping": 1.0})
  completions = ["<think>t</think><answer>1+2+3</answer>", "boom", "sleep", "boom sleep"]
  start = time.monotonic()
  total, components, stats = score_completions(completions, [COUNTDOWN] * 4, "countdown",
                                               config)
  assert time.monotonic() - start < 10  # includes the pool start-up
  np.testing.assert_array_equal(components["raising"], [0.5, 0, 0.5, 0])
  np.testing.assert_array_equal(components["sleeping"], [1, 1, 0, 0])
  np.testing.assert_allclose(total, [3.5, 1.0, 0.5, 0.0])
  assert stats["reward_errors"] == 2 and stats["reward_timeouts"] == 2


def test_math_verify_hang_is_cut_by_the_timeout():
  # math-verify/sympy does not return on this within minutes; the per-item timer stops it.
  config = RewardConfig(executor="inline", timeout_s=0.5)
  completions = [r"<answer>10^{10^{10^{10}}}</answer>", r"<answer>14/3</answer>"]
  start = time.monotonic()
  _, components, stats = score_completions(completions, [Problem("q", r"\frac{14}{3}")] * 2,
                                           "math", config)
  assert time.monotonic() - start < 5
  assert components["accuracy"].tolist() == [0.0, 1.0] and stats["reward_timeouts"] == 1


def test_first_inline_math_reward_is_not_cut_by_its_import():
  """In a fresh interpreter math-verify's first import takes seconds; it is not charged to the
  first item's timer (it was: the right answer timed out, and under pytest alone it hung)."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  code = ("from r1jax.rewards import RewardConfig, score_completions; "
          "from r1jax.tasks.base import Problem; "
          "_, c, s = score_completions([r'<answer>14/3</answer>'] * 2, "
          "[Problem('q', r'\\frac{14}{3}')] * 2, 'math', "
          "RewardConfig(executor='inline', timeout_s=0.5)); "
          "print(c['accuracy'].tolist(), s['reward_timeouts'])")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split("\n")[-2] == "[1.0, 1.0] 0"


def test_process_pool_survives_a_dead_worker():
  config = RewardConfig(executor="process", timeout_s=0.2, num_workers=2,
                        extra={"crashing": 1.0})
  ok = "<think>t</think><answer>1+2+3</answer>"
  start = time.monotonic()
  total, _, stats = score_completions(["crash", ok, ok, ok], [COUNTDOWN] * 4, "countdown",
                                      config)
  assert time.monotonic() - start < 10
  # Only the lost item is zero (every component of it counted); the others are scored.
  assert total.tolist() == [0.0, 3.0, 3.0, 3.0] and stats["reward_timeouts"] == 3
  # The pool is rebuilt and scores again.
  total, _, stats = score_completions([ok, ok], [COUNTDOWN] * 2, "countdown", config)
  assert total.tolist() == [3.0, 3.0] and stats["reward_timeouts"] == 0


def test_inline_off_the_main_thread_still_catches_errors():
  out = {}

  def run():
    out["result"] = score_completions(["boom"], [COUNTDOWN], "countdown",
                                      RewardConfig(executor="inline", extra={"raising": 1.0}))

  thread = threading.Thread(target=run)
  thread.start()
  thread.join()
  assert out["result"][2]["reward_errors"] == 1


def test_registered_fn_serves_as_a_reward_kind():
  # How later work plugs in e.g. "code": register fn under the kind's name.
  config = RewardConfig(executor="inline", format_weight=0.0)
  total, components, _ = score_completions(["boom", "ok"], [COUNTDOWN] * 2, "raising", config)
  assert components["accuracy"].tolist() == [0.0, 0.5] and total.tolist() == [0.0, 0.5]


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="reward_kind"):
    score_completions(["x"], [COUNTDOWN], "chess", INLINE)
  with pytest.raises(ValueError, match="len"):
    score_completions(["x", "y"], [COUNTDOWN], "countdown", INLINE)
  with pytest.raises(ValueError, match="unknown reward fn"):
    score_completions(["x"], [COUNTDOWN], "countdown", RewardConfig(extra={"nope": 1.0}))
  with pytest.raises(ValueError, match="executor"):
    RewardConfig(executor="gpu")
  rewards.REWARD_FNS["local_lambda"] = lambda response, problem: 1.0
  try:
    with pytest.raises(ValueError, match="local_lambda"):
      score_completions(["x"], [COUNTDOWN], "countdown",
                        RewardConfig(executor="process", extra={"local_lambda": 1.0}))
  finally:
    del rewards.REWARD_FNS["local_lambda"]
  assert score_completions([], [], "math", INLINE)[0].shape == (0,)


def test_overlong_penalty_is_dapos_soft_punishment():
  # max 10, buffer 4: free up to 6 tokens, then -1/4 per token, -1 at 10 and beyond.
  got = rewards.overlong_penalty([0, 6, 7, 8, 10, 12], max_length=10, buffer=4)
  np.testing.assert_allclose(got, [0, 0, -0.25, -0.5, -1, -1])
  assert got.dtype == np.float32
  with pytest.raises(ValueError, match="--overlong_buffer"):
    rewards.overlong_penalty([1], max_length=10, buffer=11)
