"""Code tasks scored by execution (R1 Sec. 2.2.2, "compiler feedback"): MBPP- and HumanEval-style
JSONL readers and a procedural "find the expression" task small enough for a character model.

Every task becomes a `CodeProblem`; `r1jax.sandbox.code_reward(completion, problem)` runs the
program in the completion's <answer> against `problem.tests`.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
from typing import Optional, Sequence

from r1jax.tasks.base import ProceduralTask

EXPRESSION_TEMPLATE = "def f(x):\n  return ({program})\n"


@dataclasses.dataclass(frozen=True)
class CodeProblem:
  """One coding problem.

  tests: assert strings run after the program and `setup_code`, or (input, output) pairs:
    `entry_point(*input)` (a non-tuple input is one argument) must return a literal equal to
    output. An assert whose expected side is a literal (`assert f(2) == 4`) is judged outside the
    sandbox on the plain value f(2) returned (r1jax.assert_checks), so an answer that returns an
    object that equals anything scores 0. program_template: how the extracted answer becomes a program ("{program}" is replaced).
  reference: a known-correct answer (what goes inside <answer>), for tests and SFT data.
  """
  question: str
  entry_point: str
  tests: tuple
  setup_code: str = ""
  program_template: str = "{program}"
  reference: str = ""
  meta: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)

  @property
  def answer(self) -> str:  # the field name r1jax.tasks.base.Problem uses
    return self.reference


def _read_jsonl(path: str) -> list:
  if not os.path.exists(path):
    raise FileNotFoundError(f"no code task file at {path!r}")
  rows = []
  with open(path, encoding="utf-8") as fh:
    for lineno, line in enumerate(fh, 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{lineno}: not JSON ({e})") from None
  return rows


def _require(row: dict, keys: Sequence[str], where: str) -> None:
  missing = [k for k in keys if k not in row]
  if missing:
    raise ValueError(f"{where}: missing keys {missing} (has {sorted(row)})")


def _called_name(test: str) -> Optional[str]:
  """The first function called in an assert: `assert foo(1) == 2` -> "foo"."""
  try:
    tree = ast.parse(test)
  except SyntaxError:
    return None
  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
      return node.func.id
  return None


def mbpp_problem(row: dict, where: str = "row") -> CodeProblem:
  """An MBPP row (text, code, test_list, optional test_setup_code and task_id)."""
  _require(row, ("text", "code", "test_list"), where)
  tests = tuple(row["test_list"])
  if not tests or not all(isinstance(t, str) for t in tests):
    raise ValueError(f"{where}: test_list must be a non-empty list of assert strings")
  entry = _called_name(tests[0]) or ""
  question = f"{row['text']}\nYour code should pass these tests:\n" + "\n".join(tests)
  return CodeProblem(question, entry, tests, row.get("test_setup_code", "") or "",
                     reference=row["code"], meta={"task_id": row.get("task_id"),
                                                  "source": "mbpp"})


def _split_check(test: str, entry_point: str) -> tuple:
  """HumanEval's `check(candidate)` as one test per assert when its body is only asserts (partial
  credit), else the single test `check(entry_point)`."""
  single = (f"check({entry_point})",)
  try:
    tree = ast.parse(test)
  except SyntaxError:
    return single
  checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
  if len(checks) != 1:
    return single
  body = [s for s in checks[0].body
          if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
  if not body or not all(isinstance(s, ast.Assert) for s in body):
    return single
  arg = checks[0].args.args[0].arg if checks[0].args.args else "candidate"
  return tuple(f"{arg} = {entry_point}\n{ast.unparse(s)}" for s in body)


def humaneval_problem(row: dict, where: str = "row") -> CodeProblem:
  """A HumanEval row (prompt, entry_point, test, canonical_solution, optional task_id)."""
  _require(row, ("prompt", "entry_point", "test", "canonical_solution"), where)
  entry = row["entry_point"]
  return CodeProblem(row["prompt"], entry, _split_check(row["test"], entry), row["test"],
                     reference=row["prompt"] + row["canonical_solution"],
                     meta={"task_id": row.get("task_id"), "prompt": row["prompt"],
                           "source": "humaneval"})


def load_code_problems(path: str) -> list:
  """Read MBPP- or HumanEval-style JSONL (detected per row from its keys)."""
  problems = []
  for i, row in enumerate(_read_jsonl(path)):
    where = f"{path} row {i}"
    if not isinstance(row, dict):
      raise ValueError(f"{where}: expected a JSON object")
    if "test_list" in row:
      problems.append(mbpp_problem(row, where))
    elif "entry_point" in row:
      problems.append(humaneval_problem(row, where))
    else:
      raise ValueError(f"{where}: neither MBPP (text, code, test_list) nor HumanEval "
                       f"(prompt, entry_point, test, canonical_solution); keys {sorted(row)}")
  return problems


# ----------------------------------------------------------------------------------------------
# Procedural task: "Write a Python expression in x for f: f(2)=7, f(3)=10, f(5)=16" -> 3*x+1.


def expression_family() -> list:
  """Every target function, as canonical answer strings (370 functions of one int x)."""
  def plus(b):
    return f"+{b}" if b > 0 else (f"-{-b}" if b < 0 else "")
  out = [("x" if a == 1 else f"{a}*x") + plus(b) for a in range(1, 10) for b in range(-9, 10)]
  out += [("x*x" if a == 1 else f"{a}*x*x") + plus(b) for a in range(1, 4) for b in range(10)]
  out += [f"x*x+{b}*x" for b in range(1, 10)]
  out += [f"x{op}{m}" + plus(b) for op in ("%", "//") for m in range(2, 10) for b in range(10)]
  return out


def evaluate_expression(answer: str, x: int) -> int:
  """The value of a family expression at x, by walking its AST (no eval)."""
  def ev(node):
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
      return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
    if isinstance(node, ast.Name) and node.id == "x":
      return x
    if isinstance(node, ast.Constant) and type(node.value) is int:
      return node.value
    raise ValueError(f"unsupported expression {answer!r}")
  return ev(ast.parse(answer, mode="eval").body)


_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
           ast.Mult: lambda a, b: a * b, ast.FloorDiv: lambda a, b: a // b,
           ast.Mod: lambda a, b: a % b}


@dataclasses.dataclass
class CodeExpressionTask(ProceduralTask):
  """Find a Python expression in x from n_shown input/output pairs; scored by running it.

  The tests are the shown pairs plus n_held_out unseen ones, so an answer that memorises the shown
  points (`{2: 7, 3: 10, 5: 16}[x]`) does not score 1, and any expression that agrees with the
  target on every test does (the reward checks behaviour, not the string). The train/test
  partition is by target function: a test function never appears in training, with any seed.
  """

  num_train: int = 20_000
  num_test: int = 32
  n_shown: int = 3
  n_held_out: int = 3
  x_range: tuple = (0, 20)
  test_fraction: float = 0.1
  name: str = "code_expression"
  reward_kind: str = "code"

  def __post_init__(self):
    lo, hi = self.x_range
    if self.n_shown < 1 or self.n_held_out < 0 or self.n_shown + self.n_held_out > hi - lo + 1:
      raise ValueError(f"n_shown={self.n_shown}, n_held_out={self.n_held_out} do not fit "
                       f"x_range={self.x_range}")
    self._family = expression_family()

  def _sample(self, rng) -> tuple:
    answer = rng.choice(self._family)
    xs = rng.sample(range(self.x_range[0], self.x_range[1] + 1), self.n_shown + self.n_held_out)
    points = sorted(xs[:self.n_shown]) + sorted(xs[self.n_shown:])
    pairs = tuple((x, evaluate_expression(answer, x)) for x in points)
    question = "Write a Python expression in x for f: " + ", ".join(
        f"f({x})={y}" for x, y in pairs[:self.n_shown])
    return answer, CodeProblem(question, "f", pairs, program_template=EXPRESSION_TEMPLATE,
                               reference=answer, meta={"shown": self.n_shown})


def format_answer(problem: CodeProblem, think: str = "") -> str:
  """A completion in R1's template with the reference answer (for SFT data and tests)."""
  return f"<think>{think}</think> <answer>{problem.reference}</answer>"
