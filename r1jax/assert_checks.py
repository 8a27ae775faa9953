"""Assert-string tests (MBPP, HumanEval) judged outside the sandbox, where the program cannot reach.

`assert f(2) == 4` run inside the sandbox trusts whatever `f` returns: an object whose `__eq__`
always says True, an int subclass that overrides it, or a `__bool__` that says True passes every
test. `rewrite` turns each assert whose expected side holds no call into the program (a literal,
or one built from literals by the functions in CALLS) into a check:

  assert abs(f(x) - 0.5) < 1e-6   ->   __r1jax_check__(k, lambda: f(x))

The sandbox evaluates only the holes (`f(x)`, lazily, in the test's own scope), accepts a value
only if its type and the types of everything in it are exactly builtin literal types (no
subclasses), and reports its `repr`. Here, the check's template `abs(_h(0) - 0.5) < 1e-6` is
evaluated on the values read back from that text (`parse_values`), with this module's copies of
the builtins: the program's code never runs during the comparison, and its dunder methods are not
called. The sandbox evaluates the same template too, only to stop a failing test at its assert as
Python would; the verdict that counts is this side's.

Covered shapes, any nesting: comparisons (`==`, `!=`, `<`, `in`, `is True`, chained), `not`,
`and`/`or`, arithmetic, tuple/list/set/dict displays, subscripts, the calls in CALLS and
`math.<MATH_CALLS>`, and a bare `assert f(x)`. A hole that is the only positional argument of an
iterating call (`sorted(f(x))`, `list(f(x))`) may be any iterable: the sandbox turns it into a list
first. Left as they were, and so still judged inside the sandbox by the program's own `__eq__`:
asserts comparing two sides that both call into the program or name test variables
(`assert f(x) == g(x)`, `assert f(x) == expected` in a loop); comparisons written inside a hole
(a comprehension, or an argument of another function: `all(f(x) == y for ...)`); asserts in class
bodies; asserts with `:=`, `yield` or `await` in a hole.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import math
from typing import Any

CHECK_FN = "__r1jax_check__"
# Evaluated outside the sandbox on the holes' values. bool, int, float and len must be here:
# inside the sandbox they would ask the program's object (__bool__, __int__, __len__).
CALLS = frozenset(("abs", "round", "len", "min", "max", "sum", "sorted", "set", "frozenset",
                   "list", "tuple", "dict", "all", "any", "isinstance", "type", "int", "float",
                   "bool"))
ITER_CALLS = frozenset(("len", "min", "max", "sum", "sorted", "set", "frozenset", "list", "tuple",
                        "all", "any"))
TYPE_NAMES = frozenset(("int", "float", "complex", "str", "bytes", "bool", "list", "tuple",
                        "dict", "set", "frozenset"))
MATH_CALLS = frozenset(("isclose", "fabs", "isnan", "isinf", "isfinite", "floor", "ceil", "sqrt",
                        "trunc"))
MATH_CONSTANTS = frozenset(("pi", "e", "tau", "inf", "nan"))
NAMES = CALLS | TYPE_NAMES  # the builtins a template may use, by name
MATH_NAMES = MATH_CALLS | MATH_CONSTANTS  # math's, as _m_<name>

_NAMESPACE = {"__builtins__": {}, **{n: getattr(builtins, n) for n in NAMES},
              **{"_m_" + n: getattr(math, n) for n in MATH_NAMES}}


@dataclasses.dataclass(frozen=True)
class Check:
  """One rewritten assert. template: a Python expression over `_h(j)` (the value of hole j), the
  names in NAMES and `_m_<name>` for math's; modes[j]: "value", or "iter" for a hole the sandbox
  may turn into a list first."""
  template: str
  modes: tuple

  def code(self):
    return compile(self.template, "<check>", "eval")


class _Keep(Exception):
  """This assert is not rewritten."""


def _is_literal(node) -> bool:
  try:
    ast.literal_eval(node)
    return True
  except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
    return False


def _math_name(node) -> str:
  """`math.isclose` -> "isclose" when it is one of MATH_NAMES, else ""."""
  if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
      and node.value.id == "math" and node.attr in MATH_NAMES):
    return node.attr
  return ""


class _Splitter:
  """Splits an assert's expression into a template (evaluated outside) and holes (evaluated in
  the sandbox). `split` returns (template node, whether it contains a hole)."""

  def __init__(self):
    self.holes = []  # (node, mode)

  def split(self, node, mode="value"):
    if _is_literal(node):
      return node, False
    if isinstance(node, ast.Name) and node.id in TYPE_NAMES:
      return node, False
    name = _math_name(node)
    if name in MATH_CONSTANTS:
      return ast.Name("_m_" + name, ast.Load()), False
    if isinstance(node, ast.Compare):
      parts = [self.split(n) for n in [node.left, *node.comparators]]
      for (_, a), (_, b) in zip(parts, parts[1:]):
        if a and b:
          raise _Keep("both sides call into the program")
      return ast.Compare(parts[0][0], node.ops, [p for p, _ in parts[1:]]), any(
          h for _, h in parts)
    if isinstance(node, ast.BoolOp):
      parts = [self.split(v) for v in node.values]
      return ast.BoolOp(node.op, [p for p, _ in parts]), any(h for _, h in parts)
    if isinstance(node, ast.UnaryOp):
      operand, hole = self.split(node.operand)
      return ast.UnaryOp(node.op, operand), hole
    if isinstance(node, ast.BinOp):
      (left, a), (right, b) = self.split(node.left), self.split(node.right)
      return ast.BinOp(left, node.op, right), a or b
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and not any(
        isinstance(e, ast.Starred) for e in node.elts):
      parts = [self.split(e) for e in node.elts]
      elts = [p for p, _ in parts]
      out = ast.Set(elts) if isinstance(node, ast.Set) else type(node)(elts, ast.Load())
      return out, any(h for _, h in parts)
    if isinstance(node, ast.Dict) and None not in node.keys:
      keys, values = [self.split(k) for k in node.keys], [self.split(v) for v in node.values]
      return ast.Dict([k for k, _ in keys], [v for v, _ in values]), any(
          h for _, h in keys + values)
    if isinstance(node, ast.Subscript):
      (value, a), (index, b) = self.split(node.value), self.split(node.slice)
      return ast.Subscript(value, index, ast.Load()), a or b
    if isinstance(node, ast.Slice):
      parts = [self.split(p) if p is not None else (None, False)
               for p in (node.lower, node.upper, node.step)]
      return ast.Slice(*[p for p, _ in parts]), any(h for _, h in parts)
    if isinstance(node, ast.Call):
      call = self._call(node)
      if call is not None:
        return call
    return self._hole(node, mode)

  def _call(self, node):
    """A call to one of CALLS or math's, evaluated outside; None when it must be a hole."""
    name = node.func.id if isinstance(node.func, ast.Name) and node.func.id in CALLS else ""
    math_name = _math_name(node.func)
    if not (name or math_name in MATH_CALLS):
      return None
    if any(isinstance(a, ast.Starred) for a in node.args) or any(
        k.arg is None or not _is_literal(k.value) for k in node.keywords):
      return None  # `sorted(f(x), key=...)` runs in the sandbox as a whole
    iterating = name in ITER_CALLS and len(node.args) == 1
    parts = [self.split(a, "iter" if iterating else "value") for a in node.args]
    if math_name == "isclose" and len(parts) >= 2 and parts[0][1] and parts[1][1]:
      raise _Keep("both sides call into the program")
    func = ast.Name(name or "_m_" + math_name, ast.Load())
    return ast.Call(func, [p for p, _ in parts], node.keywords), any(h for _, h in parts)

  def _hole(self, node, mode):
    if any(isinstance(n, (ast.NamedExpr, ast.Yield, ast.YieldFrom, ast.Await, ast.Starred))
           for n in ast.walk(node)):
      raise _Keep("a hole that cannot become a lambda")
    self.holes.append((node, mode))
    return ast.Call(ast.Name("_h", ast.Load()), [ast.Constant(len(self.holes) - 1)], []), True


class _Rewriter(ast.NodeTransformer):
  """Replaces each assert that `_Splitter` takes by a call of CHECK_FN; appends to `checks`."""

  def __init__(self, checks: list):
    self.checks = checks

  def visit_ClassDef(self, node):
    return node  # a lambda in a class body does not see the class's names

  def visit_Assert(self, node):
    splitter = _Splitter()
    try:
      template, _ = splitter.split(node.test)
    except _Keep:
      return node
    if not splitter.holes:
      return node  # nothing from the program in it
    slot = len(self.checks)
    self.checks.append(Check(ast.unparse(ast.fix_missing_locations(template)),
                             tuple(m for _, m in splitter.holes)))
    no_args = ast.arguments(posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[],
                            kwarg=None, defaults=[])
    thunks = [ast.Lambda(no_args, hole) for hole, _ in splitter.holes]
    call = ast.Call(ast.Name(CHECK_FN, ast.Load()), [ast.Constant(slot), *thunks], [])
    return ast.copy_location(ast.Expr(call), node)


def rewrite(source: str, checks: list) -> str:
  """`source` with its asserts rewritten into checks (appended to `checks`, numbered from
  len(checks)); unchanged if it does not parse (the sandbox then reports the error)."""
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError, MemoryError, RecursionError):
    return source
  before = len(checks)
  tree = _Rewriter(checks).visit(tree)
  if len(checks) == before:
    return source
  return ast.unparse(ast.fix_missing_locations(tree))


class _ReprLiterals(ast.NodeTransformer):
  """What `repr` writes for plain values but `ast.literal_eval` does not read: inf, nan (also as
  imaginary parts) and frozenset(...)."""

  _NAMES = {"inf": math.inf, "nan": math.nan, "infj": complex(0, math.inf),
            "nanj": complex(0, math.nan)}

  def visit_Name(self, node):
    if node.id in self._NAMES:
      return ast.Constant(self._NAMES[node.id])
    raise ValueError(f"not a literal: {node.id}")

  def visit_Call(self, node):
    name = node.func.id if isinstance(node.func, ast.Name) else ""
    if name not in ("set", "frozenset") or node.keywords or len(node.args) > (name == "frozenset"):
      raise ValueError("not a literal: a call")
    items = ast.literal_eval(self.visit(node.args[0])) if node.args else ()
    return ast.Constant(frozenset(items) if name == "frozenset" else set())


def parse_value(text: str) -> Any:
  """The plain value whose `repr` is `text` (of the types the sandbox lets out)."""
  tree = _ReprLiterals().visit(ast.parse(text, mode="eval"))
  return ast.literal_eval(tree)


def verdict(code, values: dict) -> bool:
  """A check's template (compiled) on the holes' values {j: value}: True when the assert holds.
  A hole the template asks for and the sandbox did not report, or an error, is False."""
  try:
    return bool(eval(code, dict(_NAMESPACE, _h=values.__getitem__)))  # pylint: disable=eval-used
  except Exception:  # pylint: disable=broad-except
    return False
