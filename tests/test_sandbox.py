"""Execution rewards: hostile programs score 0 and leave the host untouched; correct programs score
1, partial ones their share (checked against running the same trusted program in-process)."""

import json
import os
import socket
import subprocess
import time

import numpy as np
import pytest

from r1jax import sandbox
from r1jax.tasks import code as code_tasks

CFG = sandbox.SandboxConfig(timeout_s=2.0)
NO_HOOK = sandbox.SandboxConfig(timeout_s=2.0, audit_hook=False)
SLACK_S = 3.0  # beyond the program's timeout: interpreter start + setup on a loaded 2-core box


@pytest.fixture(scope="module")
def caps():
  return sandbox.sandbox_capabilities()


def _configs(caps, boundary):
  """Default layers, plus the same run without the audit hook when `boundary` (the layer that
  must hold by itself) is active here."""
  out = [CFG]
  if caps[boundary]:
    out.append(NO_HOOK)
  return out


def _run(program, tests=("assert g() == 1",), config=CFG, **kw):
  t0 = time.monotonic()
  result = sandbox.run_tests(program + "\ndef g():\n  return 1\n", list(tests), config=config,
                             **kw)
  assert time.monotonic() - t0 < config.timeout_s + SLACK_S, result
  return result


def _share_in_process(program, tests):
  """Independent reference for trusted programs: exec each test here, count passes."""
  passed = []
  for test in tests:
    ns = {}
    exec(program, ns)  # pylint: disable=exec-used
    try:
      exec(test, ns)  # pylint: disable=exec-used
      passed.append(True)
    except AssertionError:
      passed.append(False)
  return sum(passed) / len(passed)


def test_capabilities_report(caps):
  assert set(caps) >= {"namespaces", "readonly_fs", "seccomp", "fork_blocked", "audit_hook",
                       "rlimits", "detail"}
  if caps["namespaces"]:
    assert caps["detail"]["pid"] == 1  # init of its own PID namespace
  if caps["seccomp"]:
    assert caps["fork_blocked"]


def test_extract_program():
  assert sandbox.extract_program("<think>a</think> <answer> 3*x+1 </answer>") == "3*x+1"
  fenced = "<answer>\nHere:\n```python\ndef f(x):\n  return x\n```\n</answer>"
  assert sandbox.extract_program(fenced) == "def f(x):\n  return x"
  assert sandbox.extract_program("text ```py\nx = 1\n``` more") == "x = 1"
  assert sandbox.extract_program("<answer>1</answer> then <answer>2</answer>") == "2"
  assert sandbox.extract_program("no program") is None
  assert sandbox.extract_program("<answer>  </answer>") is None


def test_correct_partial_and_all_or_nothing():
  program = "def f(x):\n  return x * x if x < 3 else 0\n"
  tests = ["assert f(1) == 1", "assert f(2) == 4", "assert f(3) == 9"]
  result = sandbox.run_tests(program, tests, config=CFG)
  assert result.status == "ok"
  assert result.reward() == pytest.approx(_share_in_process(program, tests)) == pytest.approx(2 / 3)
  assert result.reward(all_or_nothing=True) == 0.0
  io = sandbox.run_tests(program, [(1, 1), ((2,), 4), (3, 9), (2, 4.0)], entry_point="f",
                         config=CFG)
  assert io.passed == (True, True, False, True)
  # Literal types must match (list is not tuple, True is not 1); int and float compare by value.
  typed = sandbox.run_tests("def h(x):\n  return [x] if x else True\n",
                            [(1, (1,)), (1, [1]), (0, 1), (0, True)], entry_point="h", config=CFG)
  assert typed.passed == (False, True, False, True)


def test_forged_results_do_not_pass():
  # Prints a fake report, hunts for the nonce through frames/gc, and writes forged result lines
  # to every fd; an io test gets an object whose __eq__ always says True.
  program = r"""
import os, sys, re
print('{"passed": [true, true, true]}')
print("pass 0\npass 1\ndone")
found = set()
for probe in (lambda: sys._getframe(1).f_locals, lambda: __import__("gc").get_objects()):
  try:
    found.update(re.findall(r"[0-9a-f]{32}", repr(probe())))
  except Exception:
    pass
try:
  raise ValueError
except ValueError as e:
  try:
    found.update(re.findall(r"[0-9a-f]{32}", repr(e.__traceback__.tb_frame.f_back.f_locals)))
  except Exception:
    pass
for fd in range(3, 256):
  for nonce in found | {"0" * 32}:
    for line in (f"{nonce} pass 0\n", f"{nonce} pass 1\n", f"{nonce} io 2 5\n", f"{nonce} done\n"):
      try:
        os.write(fd, line.encode())
      except OSError:
        pass
class AlwaysEqual:
  def __eq__(self, other):
    return True
def f(x):
  return AlwaysEqual()
"""
  result = sandbox.run_tests(program, ["assert f(1) == 2", "assert False", (1, 5)],
                             entry_point="f", config=CFG)
  # Both the assert (its literal side is judged outside, r1jax.assert_checks) and the io test
  # compare outside the sandbox, on plain values only.
  assert result.passed == (False, False, False)


def test_rebinding_builtins_does_not_pass_tests():
  program = ("import builtins\n_compile = compile\n"
             "builtins.compile = lambda *a, **k: _compile('def check(c):\\n  pass', 'x', 'exec')\n"
             "builtins.sorted = lambda *a, **k: [1, 2]\nsorted = builtins.sorted\n"
             "def f(x):\n  return x\n")
  result = sandbox.run_tests(program, ["assert sorted(f([2, 1, 3])) == [1, 2]", "check(f)"],
                             setup_code="def check(c):\n  assert c(1) == 5\n", config=CFG)
  assert result.status == "ok" and result.passed == (False, False)


def test_timeout_keeps_finished_tests():
  program = "def f(x):\n  while x == 3:\n    pass\n  return x\n"
  t0 = time.monotonic()
  result = sandbox.run_tests(program, ["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"],
                             config=CFG)
  assert result.status == "timeout"
  assert result.passed == (True, True, False)
  assert CFG.timeout_s <= time.monotonic() - t0 < CFG.timeout_s + SLACK_S


def test_infinite_loop_and_memory():
  assert _run("while True:\n  pass").status == "timeout"
  big = _run("x = bytearray(10 * 1024**3)")
  assert (big.reward(), big.detail) == (0.0, "MemoryError")
  assert _run("x = bytearray(100 * 1024**2)").reward() == 1.0  # under the 512 MB limit


def test_fork_bomb_is_contained(caps):
  if not caps["fork_blocked"] and os.getuid() == 0:
    pytest.skip("no seccomp here and RLIMIT_NPROC does not bind root: not safe to run")
  before = len([p for p in os.listdir("/proc") if p.isdigit()])
  for config in _configs(caps, "fork_blocked"):
    result = _run("import os\nwhile True:\n  try:\n    os.fork()\n  except Exception:\n    pass",
                  config=config)
    assert result.reward() == 0.0 and result.status == "timeout"
  after = len([p for p in os.listdir("/proc") if p.isdigit()])
  assert after < before + 50


def test_filesystem_outside_workdir_untouched(caps, tmp_path):
  sentinel = tmp_path / "sentinel.txt"
  sentinel.write_text("original")
  hostile = [f"open({str(sentinel)!r}, 'w').write('pwned')",
             f"open({str(tmp_path / 'new.txt')!r}, 'x').write('pwned')",
             f"import os\nos.remove({str(sentinel)!r})",
             f"import os\nos.rename({str(sentinel)!r}, {str(tmp_path / 'moved')!r})",
             f"import shutil\nshutil.rmtree({str(tmp_path)!r})"]
  for config in _configs(caps, "readonly_fs"):
    for program in hostile:
      assert _run(program, config=config).reward() == 0.0, program
      assert sentinel.read_text() == "original"
      assert sorted(os.listdir(tmp_path)) == ["sentinel.txt"]
  # The work dir itself is writable, and removed afterwards.
  ok = _run("open('scratch.txt', 'w').write('x')",
            ["assert open('scratch.txt').read() == 'x'"])
  assert ok.reward() == 1.0


def test_environment_secrets_not_visible(caps, monkeypatch):
  monkeypatch.setenv("R1JAX_TEST_SECRET", "hunter2")
  leaks = ["import os\nassert os.environ.get('R1JAX_TEST_SECRET') == 'hunter2'",
           f"assert b'hunter2' in open('/proc/{os.getpid()}/environ', 'rb').read()"]
  for config in _configs(caps, "namespaces"):
    for program in leaks:
      assert _run(program, config=config).reward() == 0.0, program


def test_network_is_unreachable(caps):
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen()
  server.setblocking(False)
  port = server.getsockname()[1]
  try:
    for config in _configs(caps, "namespaces"):
      program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)"
      assert _run(program, config=config).reward() == 0.0
      with pytest.raises(BlockingIOError):
        server.accept()
  finally:
    server.close()


def test_parent_and_other_processes_survive(caps):
  victim = subprocess.Popen(["sleep", "60"])
  try:
    for config in _configs(caps, "namespaces"):
      for target in ("os.getppid()", str(os.getpid()), str(victim.pid)):
        result = _run(f"import os, signal\nos.kill({target}, signal.SIGKILL)", config=config)
        assert result.reward() == 0.0
    assert victim.poll() is None
  finally:
    victim.kill()
    victim.wait()


def test_huge_output_is_capped():
  program = ("import os, sys\nfor _ in range(200):\n  try:\n    sys.stdout.write('x' * (1 << 20))\n"
             "  except OSError:\n    pass\nSIZE = os.fstat(1).st_size")
  result = _run(program, [f"assert 0 < SIZE <= {CFG.max_output_bytes}", "assert g() == 1"])
  assert result.reward() == 1.0
  assert len(result.stdout) <= 2048


def test_batch_mixes_hostile_and_good():
  good = "<answer>\ndef g():\n  return 1\n</answer>"
  hostile = ["<answer>while True:\n  pass</answer>",
             "<answer>import os\nwhile True:\n  try:\n    os.fork()\n  except Exception:\n    pass"
             "</answer>",
             "<answer>x = bytearray(10 * 1024**3)</answer>",
             "<answer>import os\nos.kill(os.getppid(), 9)</answer>",
             "no answer at all"]
  completions = [good, hostile[0], good, hostile[1], hostile[2], good, hostile[3], hostile[4]]
  problem = code_tasks.CodeProblem("q", "g", ("assert g() == 1",))
  rewards, stats = sandbox.score_code_batch(completions, [problem] * len(completions),
                                            timeout_s=2.0, max_workers=4)
  np.testing.assert_array_equal(rewards, [1, 0, 1, 0, 0, 1, 0, 0])
  assert stats["timeouts"] == 2 and stats["no_program"] == 1
  assert stats["time_s"] < 2 * (CFG.timeout_s + SLACK_S)
  with pytest.raises(ValueError, match="completions"):
    sandbox.score_code_batch([good], [problem, problem])


# ---- tasks ---------------------------------------------------------------------------------


def _write_jsonl(path, rows):
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  return str(path)


def test_mbpp_and_humaneval_files(tmp_path):
  mbpp = {"task_id": 2, "text": "Write a function to add two numbers.",
          "code": "def add(a, b):\n  return a + b", "test_setup_code": "import math",
          "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0",
                        "assert math.isclose(add(0.1, 0.2), 0.3)"]}
  humaneval = {"task_id": "HumanEval/0", "prompt": "def inc(x):\n  \"\"\"x + 1\"\"\"\n",
               "entry_point": "inc", "canonical_solution": "  return x + 1\n",
               "test": "METADATA = {}\n\ndef check(candidate):\n  assert candidate(1) == 2\n"
                       "  assert candidate(-1) == 0\n  assert candidate(10) == 11\n"}
  humaneval_loop = dict(humaneval, test="def check(c):\n  for i in range(3):\n"
                                        "    assert c(i) == i + 1\n")
  problems = code_tasks.load_code_problems(
      _write_jsonl(tmp_path / "mix.jsonl", [mbpp, humaneval, humaneval_loop]))
  assert [p.entry_point for p in problems] == ["add", "inc", "inc"]
  assert "assert add(1, 2) == 3" in problems[0].question
  assert len(problems[1].tests) == 3 and problems[2].tests == ("check(inc)",)
  references = [f"<answer>\n```python\n{p.reference}\n```\n</answer>" for p in problems]
  body_only = "<answer>\n```python\n  return x + 1\n```\n</answer>"  # HumanEval-style body
  wrong = "<answer>\ndef inc(x):\n  return x + 1 if x > 0 else 7\n</answer>"
  rewards, _ = sandbox.score_code_batch(references + [body_only, wrong],
                                        problems + [problems[1], problems[1]], timeout_s=2.0)
  wrong_share = _share_in_process("def inc(x):\n  return x + 1 if x > 0 else 7\n",
                                  [f"candidate = inc\n{t.splitlines()[1]}"
                                   for t in problems[1].tests])
  np.testing.assert_allclose(rewards, [1, 1, 1, 1, wrong_share])
  assert wrong_share == pytest.approx(2 / 3)


def test_code_file_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.jsonl"):
    code_tasks.load_code_problems(str(tmp_path / "missing.jsonl"))
  bad = _write_jsonl(tmp_path / "bad.jsonl", [{"text": "t", "code": "c"}])
  with pytest.raises(ValueError, match=r"bad.jsonl row 0"):
    code_tasks.load_code_problems(bad)
  with pytest.raises(ValueError, match="test 0"):
    sandbox.run_tests("x = 1", [object()])


def test_expression_family_values():
  for answer in code_tasks.expression_family():
    for x in (0, 1, 7, 20):
      reference = eval(answer, {"x": x})  # pylint: disable=eval-used
      assert code_tasks.evaluate_expression(answer, x) == reference


def test_expression_task_splits_and_rewards():
  task = code_tasks.CodeExpressionTask(num_train=6, num_test=4)
  train, test = task.split("train", 0), task.split("test", 0)
  assert [p.question for p in train] == [p.question for p in task.split("train", 0)]
  assert [p.question for p in train] != [p.question for p in task.split("train", 1)]
  train_functions = {p.answer for s in range(5) for p in task.split("train", s)}
  assert not train_functions & {p.answer for p in test}
  problem = train[0]
  lookup = "{" + ", ".join(f"{x}: {y}" for x, y in problem.tests[:task.n_shown]) + "}[x]"
  completions = [code_tasks.format_answer(p) for p in train + test] + [
      f"<answer>{lookup}</answer>", "<answer>x +</answer>"]
  rewards, stats = sandbox.score_code_batch(completions, train + test + [problem] * 2,
                                            timeout_s=2.0)
  np.testing.assert_allclose(rewards, [1.0] * 10 + [task.n_shown / len(problem.tests), 0.0])
  assert stats["errors"] == 1  # the syntax error
