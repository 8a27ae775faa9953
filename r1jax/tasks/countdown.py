"""Countdown (the TinyZero reproduction of R1-Zero): reach a target from given numbers.

Problems have the shape of TinyZero's Countdown data (3-4 numbers in 1-99, its question wording)
and are generated here: draw the numbers, combine them at random with + - * / (division only
when exact, intermediates positive) into one expression, and take its value as the target (kept
if within [min_target, max_target]), so every problem has a solution, in `meta["solution"]`.

Answers are checked by `verify_equation`, a recursive-descent parser over integers, + - * /,
parentheses and unary minus with exact `Fraction` arithmetic. It never calls `eval`: model output
is untrusted text, and `eval("9**9**9")` or `eval("__import__('os')...")` would hang or worse.
"""

from __future__ import annotations

import dataclasses
import re
from fractions import Fraction

from r1jax.tasks.base import Problem, ProceduralTask

TINYZERO_QUESTION = (
    "Using the numbers {numbers}, create an equation that equals {target}. You can use basic "
    "arithmetic operations (+, -, *, /) and each number can only be used once.")
SHORT_QUESTION = "Make {target} with {numbers}."


class EquationError(ValueError):
  """The answer is not a well-formed, bounded arithmetic expression."""


# Limits that bound the parser's time and memory whatever the input: at most `max_tokens` numbers
# of at most `max_digits` digits multiply to at most ~10**(max_tokens*max_digits), which Fraction
# handles in microseconds.
MAX_CHARS = 256
MAX_TOKENS = 64
MAX_DEPTH = 16
MAX_DIGITS = 9

# Spellings of the operators that models write; everything else (`**`, `^`, names, `=`, `.`)
# fails to tokenize or parse.
_ALIASES = (("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("×", "*"), ("x", "*"),
            ("X", "*"), ("·", "*"), ("÷", "/"), ("−", "-"), ("–", "-"))
_TOKEN = re.compile(r"\s*(?:([0-9]+)|([-+*/()]))")


def tokenize(text: str) -> list[str]:
  if len(text) > MAX_CHARS:
    raise EquationError(f"equation longer than {MAX_CHARS} characters")
  for alias, op in _ALIASES:
    text = text.replace(alias, op)
  tokens, pos, text = [], 0, text.rstrip()
  while pos < len(text):
    m = _TOKEN.match(text, pos)
    if not m:
      raise EquationError(f"unexpected character {text[pos:pos + 1]!r} at {pos}")
    tok = m.group(1) or m.group(2)
    if m.group(1) and len(tok) > MAX_DIGITS:
      raise EquationError(f"number with more than {MAX_DIGITS} digits")
    tokens.append(tok)
    pos = m.end()
  if len(tokens) > MAX_TOKENS:
    raise EquationError(f"more than {MAX_TOKENS} tokens")
  return tokens


class _Parser:
  """expr := term (('+'|'-') term)*; term := unary (('*'|'/') unary)*;
  unary := '-' unary | atom; atom := INT | '(' expr ')'."""

  def __init__(self, tokens: list[str]):
    self.tokens, self.pos, self.depth, self.numbers = tokens, 0, 0, []

  def peek(self):
    return self.tokens[self.pos] if self.pos < len(self.tokens) else None

  def take(self):
    tok = self.peek()
    if tok is None:
      raise EquationError("unexpected end of equation")
    self.pos += 1
    return tok

  def expr(self) -> Fraction:
    value = self.term()
    while self.peek() in ("+", "-"):
      op, rhs = self.take(), self.term()
      value = value + rhs if op == "+" else value - rhs
    return value

  def term(self) -> Fraction:
    value = self.unary()
    while self.peek() in ("*", "/"):
      op, rhs = self.take(), self.unary()
      if op == "*":
        value = value * rhs
      elif rhs == 0:
        raise EquationError("division by zero")
      else:
        value = value / rhs
    return value

  def unary(self) -> Fraction:
    if self.peek() == "-":
      self.take()
      self.enter()
      value = -self.unary()
      self.depth -= 1
      return value
    return self.atom()

  def atom(self) -> Fraction:
    tok = self.take()
    if tok == "(":
      self.enter()
      value = self.expr()
      if self.take() != ")":
        raise EquationError("expected ')'")
      self.depth -= 1
      return value
    if not tok.isdigit():
      raise EquationError(f"unexpected {tok!r}")
    self.numbers.append(int(tok))
    return Fraction(int(tok))

  def enter(self):
    self.depth += 1
    if self.depth > MAX_DEPTH:
      raise EquationError(f"nesting deeper than {MAX_DEPTH}")


def evaluate(expression: str) -> tuple[Fraction, list[int]]:
  """Exact value of `expression` and the numbers it uses, in order; raises EquationError."""
  parser = _Parser(tokenize(expression))
  value = parser.expr()
  if parser.peek() is not None:
    raise EquationError(f"unexpected {parser.peek()!r} after the expression")
  return value, parser.numbers


def verify_equation(answer: str, numbers, target) -> bool:
  """True iff `answer` ("expr" or "expr = target") uses each of `numbers` exactly once (as a
  multiset, all of them, as TinyZero requires) and evaluates exactly to `target`.

  Intermediate results may be fractions ((8 / 3) * 3 = 8). Malformed input, division by zero
  and input over the parser's limits give False; this function does not raise.
  """
  if not isinstance(answer, str) or answer.count("=") > 1:
    return False
  lhs, _, rhs = answer.partition("=")
  try:
    if rhs.strip():
      rhs_value, rhs_numbers = evaluate(rhs)
      if len(rhs_numbers) != 1 or rhs_value != target:
        return False
    value, used = evaluate(lhs)
  except EquationError:
    return False
  return sorted(used) == sorted(int(n) for n in numbers) and value == target


@dataclasses.dataclass
class CountdownTask(ProceduralTask):
  """Countdown with `min_count`..`max_count` numbers drawn from [min_number, max_number] and a
  target in [min_target, max_target]. `question_style` is "tinyzero" (TinyZero's wording) or
  "short" (for character-level models)."""

  num_train: int = 20_000
  num_test: int = 512
  min_count: int = 3
  max_count: int = 4
  min_number: int = 1
  max_number: int = 99
  min_target: int = 1
  max_target: int = 100
  question_style: str = "tinyzero"
  test_fraction: float = 0.1
  name: str = "countdown"
  reward_kind: str = "countdown"

  def __post_init__(self):
    if not 2 <= self.min_count <= self.max_count <= 6:
      raise ValueError(f"need 2 <= min_count <= max_count <= 6, got {self.min_count}, "
                       f"{self.max_count}")
    if not 1 <= self.min_number <= self.max_number < 10**MAX_DIGITS:
      raise ValueError(f"need 1 <= min_number <= max_number, got {self.min_number}, "
                       f"{self.max_number}")
    if self.min_target > self.max_target:
      raise ValueError(f"min_target={self.min_target} > max_target={self.max_target}")
    if self.question_style not in ("tinyzero", "short"):
      raise ValueError(f"question_style={self.question_style!r}; expected 'tinyzero' or 'short'")

  def _sample(self, rng) -> tuple[str, Problem]:
    for _ in range(100_000):
      numbers = [rng.randint(self.min_number, self.max_number)
                 for _ in range(rng.randint(self.min_count, self.max_count))]
      built = random_expression(numbers, rng)
      if built and self.min_target <= built[0] <= self.max_target:
        break
    else:
      raise ValueError(f"no expression over numbers in [{self.min_number}, {self.max_number}] "
                       f"reaches a target in [{self.min_target}, {self.max_target}]; widen them")
    target, solution = built
    rng.shuffle(numbers)
    template = TINYZERO_QUESTION if self.question_style == "tinyzero" else SHORT_QUESTION
    shown = str(numbers) if self.question_style == "tinyzero" else ", ".join(map(str, numbers))
    question = template.format(numbers=shown, target=target)
    meta = {"numbers": tuple(numbers), "target": target, "solution": solution}
    return f"{sorted(numbers)}->{target}", Problem(question, f"{solution} = {target}", meta)


def random_expression(numbers, rng):
  """Combines `numbers` pairwise at random into one expression with positive integer
  intermediates; returns (value, expression) or None when the draw dead-ends."""
  pool = [(n, str(n), True) for n in numbers]  # (value, text, is_atom)
  while len(pool) > 1:
    i, j = rng.sample(range(len(pool)), 2)
    (a, ta, atom_a), (b, tb, atom_b) = pool[i], pool[j]
    if a < b:
      (a, ta, atom_a), (b, tb, atom_b) = (b, tb, atom_b), (a, ta, atom_a)
    ops = ["+", "*"] + (["-"] if a > b else []) + (["/"] if b and a % b == 0 else [])
    op = rng.choice(ops)
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]
    text = f"{ta if atom_a else '(' + ta + ')'} {op} {tb if atom_b else '(' + tb + ')'}"
    pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [(value, text, False)]
  return (pool[0][0], pool[0][1]) if pool[0][0] > 0 else None
