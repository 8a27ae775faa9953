"""Templates, procedural tasks (Countdown, arithmetic) and the benchmark readers (TFDS, JSONL)."""

import json
import operator
import os
import re
import shutil
import sys
from fractions import Fraction

import pytest
from conftest import SHARED_DATA

from r1jax.tasks import (CountdownTask, Problem, completion_prefix, format_problem,
                         format_prompt, get_task, verify_equation)


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------------------------
# Templates
# ----------------------------------------------------------------------------------------------
def test_r1_zero_template_is_table_1_of_the_paper():
  prompt = format_prompt("What is 2+2", "r1_zero")
  assert prompt.startswith("A conversation between User and Assistant. The user asks a question")
  assert ("The reasoning process and answer are enclosed within <think> </think> and <answer> "
          "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> "
          "answer here </answer>.") in prompt
  assert prompt.endswith("User: What is 2+2. Assistant:")
  assert completion_prefix("r1_zero") == ""


def test_plain_and_compact_templates():
  q = r"Find $\frac{1}{2}$ of {x}"  # LaTeX braces must survive formatting
  assert format_prompt(q, "plain") == f"Question: {q}\nAnswer:"
  assert format_prompt(q, "compact") == f"{q}\n<think>"
  assert completion_prefix("compact") == "<think>"
  assert format_problem(Problem(q, "1"), "compact") == format_prompt(q, "compact")


def test_unknown_template_names_the_argument():
  with pytest.raises(ValueError, match="template"):
    format_prompt("q", "chatml")


# ----------------------------------------------------------------------------------------------
# Procedural tasks
# ----------------------------------------------------------------------------------------------
def _eval_reference(expression):
  """Test-only reference: Python evaluates the generator's own (trusted) expression with each
  integer wrapped in Fraction, independently of r1jax's parser."""
  with_fractions = re.sub(r"(\d+)", r"Fraction(\1)", expression)
  return eval(with_fractions, {"Fraction": Fraction})  # pylint: disable=eval-used


def test_countdown_problems_are_solvable_and_in_range():
  task = CountdownTask(num_train=300, num_test=100)
  for p in task.split("train", 0) + task.split("test", 0):
    numbers, target, solution = p.meta["numbers"], p.meta["target"], p.meta["solution"]
    assert 3 <= len(numbers) <= 4 and all(1 <= n <= 99 for n in numbers)
    assert 1 <= target <= 100
    assert _eval_reference(solution) == target
    assert sorted(int(t) for t in re.findall(r"\d+", solution)) == sorted(numbers)
    assert verify_equation(solution, numbers, target)
    assert verify_equation(p.answer, numbers, target)  # "solution = target"
    assert p.question == (f"Using the numbers {list(numbers)}, create an equation that equals "
                          f"{target}. You can use basic arithmetic operations (+, -, *, /) and "
                          "each number can only be used once.")


def test_countdown_short_question_and_settings():
  task = CountdownTask(num_train=50, num_test=5, min_count=4, max_count=4, max_number=9,
                       max_target=30, question_style="short")
  for p in task.split("train", 3):
    numbers = p.meta["numbers"]
    assert len(numbers) == 4 and max(numbers) <= 9 and p.meta["target"] <= 30
    assert p.question == f"Make {p.meta['target']} with {', '.join(map(str, numbers))}."
  with pytest.raises(ValueError, match="question_style"):
    CountdownTask(question_style="long")
  with pytest.raises(ValueError, match="min_count"):
    CountdownTask(min_count=1)


@pytest.mark.parametrize("name,kwargs", [
    ("countdown", dict(num_train=400, num_test=60)),
    ("arithmetic", dict(num_train=400, num_test=60, max_digits=2, ops=("*", "+"))),
])
def test_procedural_splits_deterministic_and_disjoint(name, kwargs):
  task = get_task(name, **kwargs)

  def keys(problems):
    return {p.question for p in problems}

  train0, test0 = task.split("train", 0), task.split("test", 0)
  assert len(train0) == 400 and len(test0) == 60
  assert train0 == get_task(name, **kwargs).split("train", 0)  # same seed, same problems
  assert task.split("train", 1) != train0  # another seed, another sample
  assert len(keys(test0)) == 60  # test problems are distinct
  for seed_a in (0, 1):
    for seed_b in (0, 1, 2):
      assert not keys(task.split("train", seed_a)) & keys(task.split("test", seed_b))
  with pytest.raises(ValueError, match="split"):
    task.split("validation", 0)


def test_arithmetic_answers_match_reference():
  task = get_task("arithmetic", num_train=200, num_test=10, min_digits=2, max_digits=4,
                  ops=("*", "-", "+"))
  ops = {"*": operator.mul, "-": operator.sub, "+": operator.add}
  for p in task.split("train", 0):
    a, b, op = p.meta["a"], p.meta["b"], p.meta["op"]
    assert p.question == f"What is {a} {op} {b}?"
    assert 10 <= a < 10**4 and 10 <= b < 10**4
    assert int(p.answer) == ops[op](a, b)
  short = get_task("arithmetic", question_style="short", num_test=3).split("test", 0)
  assert all(p.question == f"{p.meta['a']}*{p.meta['b']}=" for p in short)


def test_too_small_problem_space_raises():
  # 1-digit products: 100 problems in all, ~10 on the test side; 50 distinct ones cannot exist.
  with pytest.raises(ValueError, match="num_test"):
    get_task("arithmetic", min_digits=1, max_digits=1, num_test=50).split("test", 0)


def test_get_task_errors():
  with pytest.raises(ValueError, match="unknown task"):
    get_task("sudoku")
  with pytest.raises(TypeError, match="countdown"):
    get_task("countdown", num_problems=3)
  # One call shape for every task: procedural tasks ignore the benchmark directories.
  task = get_task("countdown", data_dir=None, cache_dir="/nonexistent", num_test=2)
  assert len(task.split("test", 0)) == 2


# ----------------------------------------------------------------------------------------------
# Benchmarks through TFDS (array_record, no TensorFlow) and JSONL
# ----------------------------------------------------------------------------------------------
def test_gsm8k_through_tfds(tmp_path):
  task = get_task("gsm8k", data_dir=SHARED_DATA, cache_dir=str(tmp_path / "tfds"))
  assert task.reward_kind == "numeric"
  for split, count in (("train", 7473), ("test", 1319)):
    problems = task.split(split)
    raw = _jsonl(os.path.join(SHARED_DATA, "gsm8k", f"{split}.jsonl"))
    assert len(problems) == len(raw) == count
    # Same order as the file, and the gold is the number after '####', commas dropped.
    for p, r in zip(problems, raw):
      assert p.question == r["question"]
      assert p.answer == r["answer"].split("####")[-1].strip().replace(",", "")
      int(p.answer)  # every GSM8K gold is an integer
  assert task.split("test")[0].answer == "18"
  assert "tensorflow" not in sys.modules
  # Prepared once: the array_record files are in the cache dir given.
  prepared = [f for _, _, fs in os.walk(tmp_path / "tfds") for f in fs if "array_record" in f]
  assert any("train" in f for f in prepared) and any("test" in f for f in prepared)


def test_math500_through_tfds(tmp_path):
  problems = get_task("math500", data_dir=os.path.join(SHARED_DATA, "math500"),
                      cache_dir=str(tmp_path)).split("test")
  raw = _jsonl(os.path.join(SHARED_DATA, "math500", "test.jsonl"))
  assert len(problems) == 500
  assert [p.answer for p in problems] == [r["answer"] for r in raw]
  assert problems[0].answer == r"\left( 3, \frac{\pi}{2} \right)"
  assert [p.meta["level"] for p in problems] == [r["level"] for r in raw]
  assert problems[7].meta["unique_id"] == raw[7]["unique_id"]


def test_tfds_cache_follows_the_source_files(tmp_path):
  # A small copy with the same cache dir must not read the full preparation (or vice versa).
  small = tmp_path / "gsm8k"
  small.mkdir()
  for split, n in (("train", 5), ("test", 3)):
    with open(os.path.join(SHARED_DATA, "gsm8k", f"{split}.jsonl")) as f:
      (small / f"{split}.jsonl").write_text("".join(next(f) for _ in range(n)))
  cache = str(tmp_path / "cache")
  assert len(get_task("gsm8k", data_dir=str(tmp_path), cache_dir=cache).split("train")) == 5
  with open(small / "train.jsonl", "a") as f:
    f.write(json.dumps({"question": "Q?", "answer": "A\n#### 1,234"}) + "\n")
  train = get_task("gsm8k", data_dir=str(small), cache_dir=cache).split("train")
  assert len(train) == 6 and train[-1] == Problem("Q?", "1234")


def test_competition_sets():
  aime = get_task("aime24", data_dir=SHARED_DATA)
  amc = get_task("amc23", data_dir=SHARED_DATA)
  assert aime.reward_kind == amc.reward_kind == "math"
  aime_raw = _jsonl(os.path.join(SHARED_DATA, "aime24", "test.jsonl"))
  amc_raw = _jsonl(os.path.join(SHARED_DATA, "amc23", "test.jsonl"))
  assert [int(p.answer) for p in aime.split("test")] == [int(r["answer"]) for r in aime_raw]
  assert [float(p.answer) for p in amc.split("test")] == [r["answer"] for r in amc_raw]
  assert len(aime_raw) == 30 and len(amc_raw) == 40
  assert aime.split("test")[0].question == aime_raw[0]["problem"]


def test_missing_files_name_path_and_flag(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"train\.jsonl.*--data_dir"):
    get_task("gsm8k", data_dir=str(tmp_path), cache_dir=str(tmp_path)).split("train")
  (tmp_path / "math500").mkdir()
  with pytest.raises(FileNotFoundError, match=r"math500.test\.jsonl.*--data_dir"):
    get_task("math500", data_dir=str(tmp_path)).split("test")
  with pytest.raises(FileNotFoundError, match="--data_dir"):
    get_task("aime24").split("test")
  with pytest.raises(ValueError, match="split"):
    get_task("math500", data_dir=SHARED_DATA).split("train")
  shutil.rmtree(tmp_path / "math500")


def test_impossible_countdown_settings_raise():
  task = CountdownTask(min_number=50, max_number=60, min_count=3, max_count=3, min_target=1,
                       max_target=1, num_test=1)
  with pytest.raises(ValueError, match="widen"):
    task.split("test", 0)
