"""Multi-digit arithmetic (mostly multiplication): a procedural task with integer answers.

A small model cannot multiply two 3-digit numbers in one step but can with a written-out
computation, which makes this a clean test of whether RL grows useful reasoning (the R1-Zero
"aha" in miniature). Answers are checked numerically (`reward_kind="numeric"`).
"""

from __future__ import annotations

import dataclasses

from r1jax.tasks.base import Problem, ProceduralTask

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclasses.dataclass
class ArithmeticTask(ProceduralTask):
  """`a op b` with a and b of `min_digits`..`max_digits` digits and op drawn from `ops`.

  `question_style` "words" asks "What is 123 * 45?"; "short" is "123*45=" for tiny models.
  """

  num_train: int = 20_000
  num_test: int = 512
  min_digits: int = 1
  max_digits: int = 3
  ops: tuple[str, ...] = ("*",)
  question_style: str = "words"
  test_fraction: float = 0.1
  name: str = "arithmetic"
  reward_kind: str = "numeric"

  def __post_init__(self):
    self.ops = tuple(self.ops)
    if not 1 <= self.min_digits <= self.max_digits <= 18:
      raise ValueError(f"need 1 <= min_digits <= max_digits <= 18, got {self.min_digits}, "
                       f"{self.max_digits}")
    bad = [op for op in self.ops if op not in _OPS]
    if bad or not self.ops:
      raise ValueError(f"ops={self.ops!r}; expected a non-empty subset of {sorted(_OPS)}")
    if self.question_style not in ("words", "short"):
      raise ValueError(f"question_style={self.question_style!r}; expected 'words' or 'short'")

  def _operand(self, rng) -> int:
    digits = rng.randint(self.min_digits, self.max_digits)
    return rng.randint(10**(digits - 1) if digits > 1 else 0, 10**digits - 1)

  def _sample(self, rng) -> tuple[str, Problem]:
    a, b, op = self._operand(rng), self._operand(rng), rng.choice(self.ops)
    answer = _OPS[op](a, b)
    question = f"What is {a} {op} {b}?" if self.question_style == "words" else f"{a}{op}{b}="
    # Commutative ops get one key for a op b and b op a, so "3*4" and "4*3" share a split.
    x, y = (min(a, b), max(a, b)) if op in "+*" else (a, b)
    return f"{x}{op}{y}", Problem(question, str(answer), {"a": a, "b": b, "op": op})
