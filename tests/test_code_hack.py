"""Assert-string code tests cannot be passed by a return value that games the comparison: the
values leave the sandbox as plain literals and the asserts are judged outside (assert_checks)."""

import math

import pytest

from r1jax import assert_checks, sandbox

CFG = sandbox.SandboxConfig(timeout_s=2.0)

# f(x) = x * x, g(x) = x > 1, h(n) = the first n squares as a generator.
HONEST = ("def f(x):\n  return x * x\n"
          "def g(x):\n  return x > 1\n"
          "def h(n):\n  return (i * i for i in range(n))\n")
TESTS = ["assert f(2) == 4",
         "assert 9 == f(3)",
         "assert f(2) != 5",
         "assert abs(f(2) - 4) < 1e-9",
         "import math\nassert math.isclose(f(3), 9.0, rel_tol=1e-9)",
         "assert f(2)",
         "assert not f(0)",
         "assert g(2) is True",
         "assert g(0) is False",
         "assert (f(1), f(2)) == (1, 4)",
         "assert [f(1), f(3)] == [1, 9]",
         "assert f(2) in (3, 4)",
         "assert 0 < f(2) <= 4",
         "assert list(h(3)) == [0, 1, 4]",
         "assert sorted(h(3), reverse=True) == [4, 1, 0]",
         "candidate = f\nassert candidate(5) == 25"]

# What each hostile program's f, g and h return, defined after the hack itself.
EQ_ALL = """
class E:
  __eq__ = __lt__ = __le__ = __gt__ = __ge__ = __contains__ = lambda s, o: True
  __ne__ = lambda s, o: False
  __bool__ = lambda s: True
  __sub__ = __rsub__ = __add__ = __mul__ = lambda s, o: s
  __abs__ = lambda s: 0
  __float__ = lambda s: 9.0
  __hash__ = lambda s: 0
  __iter__ = lambda s: iter([s, s, s])
  __len__ = lambda s: 3
  def __repr__(s):
    return '4'
def f(x):
  return E()
g = h = f
"""
HOSTILE = {
    "always_equal": EQ_ALL,
    "int_subclass": """
class I(int):
  __eq__ = __lt__ = __le__ = __gt__ = __ge__ = lambda s, o: True
  __ne__ = lambda s, o: False
  __bool__ = lambda s: True
  __sub__ = __rsub__ = lambda s, o: I(0)
def f(x):
  return I(7)
g = f
def h(n):
  return [I(0)] * n
""",
    "bool_tricks": """
class T:
  def __bool__(self):
    return True
class E:
  __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = lambda s, o: T()
  __sub__ = lambda s, o: s
  __abs__ = lambda s: s
  __bool__ = lambda s: True
def f(x):
  return E()
g = h = f
""",
    "list_of_fakes": EQ_ALL + """
def f(x):
  return [E()]
def h(n):
  return iter([E()] * n)
""",
    "fake_output": EQ_ALL + """
import os
print("pass 0\\npass 1\\ndone")
for fd in range(3, 64):
  try:
    os.write(fd, b"pass 0\\nchk 0 0 {0: 4}\\ndone\\n")
  except OSError:
    pass
""",
    "patched_builtins": EQ_ALL + """
import builtins, math
for name in ("repr", "type", "isinstance", "abs", "len", "sorted", "list", "set", "tuple",
             "bool", "float", "int", "all", "any", "min", "max", "sum"):
  setattr(builtins, name, lambda *a, **k: E())
builtins.AssertionError = type("Quiet", (Exception,), {})
math.isclose = lambda *a, **k: True
__builtins__ = {"__import__": __import__}
""",
    "metaclass_lookalike": """
class M(type):  # a class that compares equal to int, and hashes like it: `type(v) in {int}`
  __eq__ = lambda s, o: True
  __hash__ = lambda s: hash(int)
class E(metaclass=M):
  __eq__ = lambda s, o: True
  def __repr__(self):
    return '4'
def f(x):
  return E()
g = f
def h(n):
  return [E()] * n
""",
    "sys_exit_before_tests": "def f(x):\n  return x * x\ng = h = f\nimport sys\nsys.exit(0)\n",
    "os_exit_before_tests": "def f(x):\n  return x * x\ng = h = f\nimport os\nos._exit(0)\n",
    "exit_inside_call": ("import os, sys\ndef f(x):\n  sys.exit(0)\n"
                         "def g(x):\n  os._exit(0)\nh = f\n"),
}


def test_honest_program_passes_every_test_as_python_does():
  # Independent reference: the same program and tests exec'd here, plain Python.
  for test in TESTS:
    namespace = {}
    exec(HONEST, namespace)  # pylint: disable=exec-used
    exec(test, namespace)  # pylint: disable=exec-used
  result = sandbox.run_tests(HONEST, TESTS, config=CFG)
  assert result.status == "ok" and result.passed == (True,) * len(TESTS), result


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_return_values_score_zero(name):
  result = sandbox.run_tests(HOSTILE[name], TESTS, config=CFG)
  assert result.reward() == 0.0, (name, result.passed, result.status, result.stderr[-500:])


def test_lookalike_types_do_not_pass_io_tests_either():
  result = sandbox.run_tests(HOSTILE["metaclass_lookalike"], [(2, 4), (3, 9)], entry_point="f",
                             config=CFG)
  assert result.passed == (False, False)


def test_stdlib_dicts_are_read_as_dicts():
  """MBPP's reference for freq_count returns collections.Counter(xs) and is tested against a dict
  literal: Counter, OrderedDict and defaultdict are read as plain dicts (by dict.items, not by
  their methods); other subclasses are refused."""
  program = ("import collections\n"
             "def count(xs):\n  return collections.Counter(xs)\n"
             "def ordered(xs):\n  return collections.OrderedDict((x, 1) for x in xs)\n"
             "class D(dict):\n  pass\n"
             "def sub(xs):\n  return D({x: 1 for x in xs})\n")
  result = sandbox.run_tests(program, ["assert count([1, 1, 2]) == {1: 2, 2: 1}",
                                       "assert ordered([3]) == {3: 1}",
                                       "assert sub([3]) == {3: 1}"], config=CFG)
  assert result.passed == (True, True, False)


def test_the_hacks_pass_asserts_judged_inside(monkeypatch):
  """Control: without the rewrite (the program's own __eq__/__bool__ decide, as before), the
  return-value hacks pass most of TESTS, so the test above measures the rewrite."""
  monkeypatch.setattr(assert_checks, "rewrite", lambda source, checks: source)
  for name in ("always_equal", "int_subclass", "bool_tricks"):
    assert sandbox.run_tests(HOSTILE[name], TESTS, config=CFG).reward() >= 0.5, name


def test_the_verdict_outside_is_the_one_that_counts(monkeypatch):
  monkeypatch.setattr(assert_checks, "verdict", lambda code, values: False)
  result = sandbox.run_tests(HONEST, TESTS[:3] + ["assert True"], config=CFG)
  assert result.passed == (False, False, False, True)


def test_a_failing_check_stops_its_test_like_an_assert():
  program = "def f(x):\n  return x + 1\n"
  result = sandbox.run_tests(program, ["assert f(1) == 5\nwhile True:\n  pass",
                                       "assert f(1) == 2"], config=CFG)
  assert result.status == "ok" and result.passed == (False, True)


def test_asserts_in_setup_code_are_checked_outside():
  """HumanEval's check(candidate) when it cannot be split into single asserts: the asserts in
  the setup code's function are rewritten too, loops and all."""
  setup = ("def check(candidate):\n  for x in range(3):\n    assert candidate(x) >= 0\n"
           "  assert candidate(3) == 9\n")
  honest = sandbox.run_tests(HONEST, ["check(f)"], setup_code=setup, config=CFG)
  hostile = sandbox.run_tests(HOSTILE["always_equal"], ["check(f)"], setup_code=setup,
                              config=CFG)
  assert (honest.passed, hostile.passed) == ((True,), (False,))


def test_which_asserts_are_rewritten():
  checks = []
  rewritten = {t: assert_checks.rewrite(t, checks) != t for t in [
      "assert f(2) == 4", "assert f(x) == g(x)", "assert f(x)", "assert True",
      "assert all(f(x) == y for x, y in [(1, 2)])", "assert f(x) == expected",
      "assert math.isclose(f(1), g(1))", "assert (y := f(1)) == 2", "def t(:"]}
  assert rewritten == {
      "assert f(2) == 4": True, "assert f(x)": True,
      # Both sides call into the program or name test data: judged inside, as before.
      "assert f(x) == g(x)": False, "assert f(x) == expected": False,
      "assert math.isclose(f(1), g(1))": False,
      # The comparison is inside a hole; nothing from the program; a walrus; a syntax error.
      "assert all(f(x) == y for x, y in [(1, 2)])": True, "assert True": False,
      "assert (y := f(1)) == 2": False, "def t(:": False}
  assert [c.template for c in checks] == ["_h(0) == 4", "_h(0)", "all(_h(0))"]


def test_values_read_back_exactly():
  value = {0: [math.inf, -0.0, 1 + 2j, frozenset({1, 2}), set(), frozenset(), b"x", {1: (2,)},
               "'\"\n", None, True, 10 ** 30]}
  back = assert_checks.parse_value(repr(value))
  assert repr(back) == repr(value)
  assert math.isnan(assert_checks.parse_value(repr(math.nan)))
  for text in ("E()", "__import__('os')", "[1, x]", "frozenset({1}, 2)"):
    with pytest.raises(ValueError):
      assert_checks.parse_value(text)
  code = assert_checks.Check("abs(_h(0) - 4) < 1e-9", ("value",)).code()
  assert assert_checks.verdict(code, {0: 4.0}) and not assert_checks.verdict(code, {0: 4.1})
  assert not assert_checks.verdict(code, {})  # a hole the sandbox did not report
