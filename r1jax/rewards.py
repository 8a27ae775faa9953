"""Rule-based rewards of R1-Zero (DeepSeek-R1 paper, Section 2.2.2): accuracy + format.

The paper uses no neural reward model ("susceptible to reward hacking"): an accuracy reward
checks the final answer by rule, and a format reward checks that the reasoning sits between
<think> and </think> and the answer between <answer> and </answer>. Here:

  format_reward           1 if the response is exactly <think>..</think> <answer>..</answer>
  countdown_reward        the answer equation uses each number once and equals the target
  numeric_reward          the last number of the answer equals the gold number
  math_reward             math-verify equivalence of the answer (or last \\boxed{}) and the gold

`score_completions` runs them for a batch under per-item timeouts, in a reusable process pool
by default, and never raises for a bad completion: a reward function that raises or overruns
gives that completion 0 for that component and is counted in the stats.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import logging
import math
import multiprocessing
import os
import pickle
import re
import signal
import threading
import time
from fractions import Fraction
from typing import Callable, Optional

import numpy as np

from r1jax.tasks.base import Problem
from r1jax.tasks.countdown import verify_equation

RewardFn = Callable[[str, Problem], float]

_THINK = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def format_reward(completion: str, prefix: str = "") -> float:
  """1.0 iff `prefix + completion` is one <think>...</think> then one <answer>...</answer>.

  Whitespace is allowed before, between and after the blocks; any other text outside them,
  or a second or missing tag, gives 0. Text after </answer> is not allowed: the answer block
  ends the response (the template says so), and a trailing free-text answer would be a way to
  hedge. `prefix` is the response text the prompt already wrote ("<think>" for the `compact`
  template, see r1jax.tasks.template.completion_prefix).
  """
  text = prefix + completion
  if any(text.count(tag) != 1 for tag in ("<think>", "</think>", "<answer>", "</answer>")):
    return 0.0
  return 1.0 if _THINK.fullmatch(text) else 0.0


def last_boxed(text: str) -> Optional[str]:
  r"""Content of the last \boxed{...} (or \fbox{...}), braces balanced; None if there is none."""
  start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
  if start < 0:
    return None
  open_at = text.find("{", start)
  if open_at < 0:
    return None
  depth = 0
  for i in range(open_at, len(text)):
    depth += {"{": 1, "}": -1}.get(text[i], 0)
    if depth == 0:
      return text[open_at + 1:i]
  return None


def extract_answer(completion: str, boxed_fallback: bool = False) -> Optional[str]:
  r"""Stripped content of the last <answer>...</answer>; else, with `boxed_fallback` (math),
  the last \boxed{...}; else None."""
  answers = _ANSWER.findall(completion)
  if answers:
    return answers[-1].strip()
  return last_boxed(completion) if boxed_fallback else None


# ----------------------------------------------------------------------------------------------
# Accuracy rewards, one per reward_kind. Each takes (completion, problem) and returns 0.0 or 1.0.
# ----------------------------------------------------------------------------------------------
def countdown_reward(completion: str, problem: Problem) -> float:
  """1 iff the answer is an equation over exactly `meta["numbers"]` equal to `meta["target"]`."""
  answer = extract_answer(completion)
  if answer is None:
    return 0.0
  return float(verify_equation(answer, problem.meta["numbers"], problem.meta["target"]))


_NUMBER = re.compile(
    r"((?<![\w)])-)?\$?\s*((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:\s*/\s*(\d+(?:\.\d+)?))?")
_LATEX_FRAC = re.compile(r"(-?)\\[dt]?frac\{\s*(\d+)\s*\}\{\s*(\d+)\s*\}")


def parse_number(text: str) -> Optional[Fraction]:
  r"""The last number in `text` as an exact Fraction, or None.

  Handles thousands commas (1,000), a dollar sign ($18), a trailing period (18.), decimals,
  fractions (3/4, \frac{3}{4}) and a leading minus. "18 or 19" reads 19: the last number is the
  answer, which is also what an answer that hedges gets.
  """
  if not text:
    return None
  candidates = []  # (end position, value)
  for m in _LATEX_FRAC.finditer(text):
    den = int(m.group(3))
    if den:
      candidates.append((m.end(), Fraction(int(m.group(2)), den) * (-1 if m.group(1) else 1)))
  for m in _NUMBER.finditer(text):
    if len(m.group(0)) > 64:  # no 10**6-digit integers from a runaway completion
      continue
    value = Fraction(m.group(2).replace(",", ""))
    if m.group(3):
      den = Fraction(m.group(3))
      if not den:
        continue
      value /= den
    candidates.append((m.end(), -value if m.group(1) else value))
  return max(candidates, key=lambda c: c[0])[1] if candidates else None


def numeric_reward(completion: str, problem: Problem, rel_tol: float = 0.0) -> float:
  """1 iff the last number of the answer equals the gold `problem.answer` (exactly by default,
  else within relative tolerance `rel_tol`)."""
  pred, gold = parse_number(extract_answer(completion) or ""), parse_number(problem.answer)
  if pred is None or gold is None:
    return 0.0
  if rel_tol <= 0:
    return float(pred == gold)
  return float(abs(pred - gold) <= rel_tol * max(abs(gold), 1))


def _math_candidates(text: str) -> list[str]:
  # math-verify finds LaTeX only inside $...$, \[...\], \(...\) or \boxed{}: a bare
  # "\frac{14}{3}" or "(3, \pi/2)" in the answer tag parses only once wrapped.
  if re.search(r"(?<!\\)\$|\\\[|\\\(|\\boxed", text):  # an unescaped $ (not \$36)
    return [text]
  return [f"${text}$", text]


def math_reward(completion: str, problem: Problem) -> float:
  r"""1 iff math-verify finds the answer (tag, else last \boxed{}) equivalent to the gold LaTeX.

  math-verify's own timeouts use signal.alarm, which fails off the main thread and whose
  `alarm(0)` would cancel the caller's timer; they are turned off here and the caller
  (`score_completions`) bounds the time instead.
  """
  from math_verify import parse, verify  # pylint: disable=import-outside-toplevel
  answer = extract_answer(completion, boxed_fallback=True)
  if not answer:
    return 0.0
  gold = parse(f"${problem.answer}$", parsing_timeout=None)
  if not gold:
    gold = parse(problem.answer, parsing_timeout=None)
  for candidate in _math_candidates(answer):
    pred = parse(candidate, parsing_timeout=None)
    if pred and verify(gold, pred, timeout_seconds=None):
      return 1.0
  return 0.0


ACCURACY_FNS: dict[str, RewardFn] = {
    "countdown": countdown_reward,
    "numeric": numeric_reward,
    "math": math_reward,
}


def overlong_penalty(lengths, max_length: int, buffer: int) -> np.ndarray:
  """DAPO's soft overlong punishment (Yu et al. 2025, Eq. 13), in [-1, 0] per completion.

  0 up to `max_length - buffer` tokens, then falling linearly to -1 at `max_length` (a
  completion cut off there, and anything longer, gets -1). Scored on token lengths, so it lives
  beside the text rewards rather than among them; the trainer adds it times a weight.
  """
  if not 0 < buffer <= max_length:
    raise ValueError(f"--overlong_buffer={buffer} must be in [1, max_completion_length="
                     f"{max_length}]")
  lengths = np.asarray(lengths, np.float64)
  return (-np.clip((lengths - (max_length - buffer)) / buffer, 0.0, 1.0)).astype(np.float32)


def format_component(response: str, problem: Problem) -> float:
  """format_reward as a REWARD_FNS entry (the response already includes the prefix)."""
  del problem
  return format_reward(response)


# Extra reward components by name, fn(response, problem) -> float, where response is the prefix
# plus the completion. Later work adds e.g. "language_consistency" (R1, Section 2.3.2) here with
# `register_reward_fn`. With the process executor, a registered fn must be a module-level
# function (it is pickled by reference into the workers).
# A name that is also a task's reward_kind (e.g. "code") serves as that task's accuracy reward.
REWARD_FNS: dict[str, RewardFn] = {"format": format_component, **ACCURACY_FNS}


def register_reward_fn(name: str, fn: Optional[RewardFn] = None):
  """Adds `fn` to REWARD_FNS under `name`; usable as a decorator."""
  if fn is None:
    return functools.partial(register_reward_fn, name)
  if name in REWARD_FNS and REWARD_FNS[name] is not fn:
    raise ValueError(f"reward fn name={name!r} is already registered")
  REWARD_FNS[name] = fn
  return fn


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  """How completions are scored: reward = format_weight * format + accuracy_weight * accuracy
  + sum(weight * REWARD_FNS[name]) over `extra`.

  `timeout_s` bounds each reward function on each completion. `executor` is "process" (a
  reusable spawn-context pool of `num_workers` processes, 0 = min(4, cpus); a hung or crashed
  item is killed) or "inline" (in the caller, timed by SIGALRM on the main thread, untimed
  elsewhere). `numeric_rel_tol` 0 means exact numeric comparison.

  Why processes by default: math-verify (sympy) does hang on model-writable LaTeX such as
  `10^{10^{10^{10}}}`, and a thread cannot be stopped, so a thread pool would leak one busy
  thread per hang; a pool worker is timed by SIGALRM on its main thread and killed if even that
  fails. Measured on 2 CPU cores: the pool starts once in ~0.4 s; after that 64 Countdown
  completions score in ~2 ms (inline ~1 ms) and 64 math-verify ones in ~11 ms (inline 12-40 ms),
  negligible next to sampling. The entry point needs the `if __name__ == "__main__"` guard that
  spawn requires (absl's `app.run` scripts have it).
  """

  format_weight: float = 1.0
  accuracy_weight: float = 1.0
  extra: tuple[tuple[str, float], ...] = ()
  timeout_s: float = 5.0
  executor: str = "process"
  num_workers: int = 0
  numeric_rel_tol: float = 0.0

  def __post_init__(self):
    extra = self.extra.items() if isinstance(self.extra, dict) else self.extra
    object.__setattr__(self, "extra", tuple((str(n), float(w)) for n, w in extra))
    if self.executor not in ("process", "inline"):
      raise ValueError(f"executor={self.executor!r}; expected 'process' or 'inline'")
    if not self.timeout_s > 0:
      raise ValueError(f"timeout_s={self.timeout_s} must be > 0")
    if self.num_workers < 0:
      raise ValueError(f"num_workers={self.num_workers} must be >= 0")


# ----------------------------------------------------------------------------------------------
# Batch scoring with per-item timeouts.
# ----------------------------------------------------------------------------------------------
class _RewardTimeout(BaseException):
  """Raised by SIGALRM inside a reward fn. A BaseException so that the `except Exception` of a
  library (math-verify has several) cannot swallow it and run on."""


def _on_alarm(signum, frame):
  raise _RewardTimeout()


def _call(fn: RewardFn, response: str, problem: Problem, timeout_s: float, use_alarm: bool):
  """(value, status) with status "ok" | "error" | "timeout"; never raises an Exception."""
  try:
    try:
      if use_alarm:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
      value = float(fn(response, problem))
    finally:
      if use_alarm:
        signal.setitimer(signal.ITIMER_REAL, 0)
  except _RewardTimeout:
    return 0.0, "timeout"
  except Exception:  # pylint: disable=broad-except
    return 0.0, "error"
  return (value, "ok") if math.isfinite(value) else (0.0, "error")


def _score_items(items, fns, timeout_s: float) -> list[list[tuple[float, str]]]:
  """Scores [(response, problem)] with each fn in `fns`: a worker's task, or the inline path.

  Time limits use SIGALRM, which only the main thread can receive: pool workers run tasks on
  their main thread; the inline path off the main thread runs untimed.
  """
  use_alarm = (hasattr(signal, "setitimer")
               and threading.current_thread() is threading.main_thread())
  if math_reward in fns:
    _init_math_verify()  # untimed: an alarm inside its first import (seconds) can hang it
  old = signal.signal(signal.SIGALRM, _on_alarm) if use_alarm else None
  try:
    return [[_call(fn, response, problem, timeout_s, use_alarm) for fn in fns]
            for response, problem in items]
  finally:
    if use_alarm:
      signal.signal(signal.SIGALRM, old)


class _QuietTimeoutWarning(logging.Filter):
  # We turn math-verify's signal timeouts off on purpose (see math_reward): drop its warning.
  def filter(self, record):
    return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
  logging.getLogger(_name).addFilter(_QuietTimeoutWarning())


def _init_math_verify():
  """Imports math-verify (seconds, the first time) if it is installed; never raises."""
  try:
    import math_verify  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    pass


def _init_worker():
  # Warms math-verify's import (seconds) before the first math reward. Must never raise: a
  # multiprocessing.Pool whose initializer fails respawns workers forever (seen on a machine
  # without math-verify scoring Countdown, which does not need it). Ignores SIGINT: Ctrl-C or a
  # time guard reaches the whole process group, and the trainer finishes its step (rewards
  # included) before it stops (checkpoint.StopAtStepBoundary); the pool ends with the parent.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  _init_math_verify()


def _ping(_):
  return os.getpid()


_POOL_LOCK = threading.Lock()
_POOL: dict = {"pool": None, "workers": 0}


def _get_pool(workers: int):
  """The reusable pool of `workers` spawn-context processes (spawn, not fork: the parent runs
  JAX's threads, and forking a multithreaded process can deadlock the child)."""
  if _POOL["pool"] is None or _POOL["workers"] != workers:
    _shutdown_pool()
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker)
    pool.map(_ping, range(workers))  # wait for start-up here, not inside a scoring deadline
    _POOL.update(pool=pool, workers=workers)
  return _POOL["pool"]


def _shutdown_pool():
  if _POOL["pool"] is not None:
    _POOL["pool"].terminate()
    _POOL["pool"].join()
    _POOL.update(pool=None, workers=0)


atexit.register(_shutdown_pool)


def _score_in_pool(items, fns, timeout_s: float, workers: int):
  """Scores `items` in the pool, one task per item (~50 us of overhead each).

  Each item is timed in its worker; as a backstop for a hang SIGALRM cannot interrupt (C code
  that never checks for signals, or a crashed worker), when no item has finished for longer
  than one item may take, every unfinished item is marked timed out and the pool is killed
  (rebuilt on the next call). A hang thus costs one item's time limit, not the batch's.
  """
  with _POOL_LOCK:
    pool = _get_pool(workers)
    last_progress = [time.monotonic()]

    def progress(_):
      last_progress[0] = time.monotonic()

    jobs = [pool.apply_async(_score_items, ([item], fns, timeout_s), callback=progress,
                             error_callback=progress) for item in items]
    item_bound = len(fns) * timeout_s * 1.5 + 2.0
    results, hung = [], False
    for job in jobs:
      while not hung and not job.ready():
        remaining = last_progress[0] + item_bound - time.monotonic()
        if remaining <= 0:
          hung = True
        else:
          job.wait(remaining)
      if not job.ready():
        results.append([(0.0, "timeout")] * len(fns))
        continue
      try:
        results += job.get()
      except Exception:  # pylint: disable=broad-except
        # The item failed outside the reward fns (e.g. a problem that does not unpickle).
        results.append([(0.0, "error")] * len(fns))
    if hung:
      _shutdown_pool()
    return results


def _components(reward_kind: Optional[str], config: RewardConfig):
  """[(name, fn, weight)] of the configured reward components; reward_kind None leaves out
  accuracy (code tasks score it in the sandbox)."""
  if reward_kind is None:
    extra = [(name, REWARD_FNS[name], w) for name, w in config.extra if name in REWARD_FNS]
    return [("format", format_component, config.format_weight)] + extra
  # A kind without a built-in verifier (e.g. "code") is scored by the REWARD_FNS entry of the
  # same name, once registered.
  if reward_kind not in ACCURACY_FNS and reward_kind not in REWARD_FNS:
    raise ValueError(f"unknown reward_kind={reward_kind!r}; expected one of "
                     f"{sorted(ACCURACY_FNS)} or a name registered with register_reward_fn")
  accuracy = ACCURACY_FNS.get(reward_kind) or REWARD_FNS[reward_kind]
  if reward_kind == "numeric" and config.numeric_rel_tol > 0:
    accuracy = functools.partial(numeric_reward, rel_tol=config.numeric_rel_tol)
  out = [("format", format_component, config.format_weight),
         ("accuracy", accuracy, config.accuracy_weight)]
  for name, weight in config.extra:
    if name not in REWARD_FNS:
      raise ValueError(f"unknown reward fn {name!r} in RewardConfig.extra; registered: "
                       f"{sorted(REWARD_FNS)}")
    out.append((name, REWARD_FNS[name], weight))
  return out


def _score_code(completions, problems, config: RewardConfig, prefix: str):
  """Code tasks: accuracy is the share of tests the answer's program passes, run in the sandbox
  (r1jax.sandbox: isolated interpreters, a thread pool sized to the machine); the format and
  extra components go through the usual path."""
  from r1jax import sandbox  # pylint: disable=import-outside-toplevel
  start = time.monotonic()
  accuracy, code_stats = sandbox.score_code_batch(
      [prefix + c for c in completions], list(problems), timeout_s=config.timeout_s)
  rewards, components, stats = _score(completions, problems, None, config, prefix)
  components["accuracy"] = np.asarray(accuracy, np.float32)
  rewards = rewards + config.accuracy_weight * components["accuracy"]
  stats = dict(stats, reward_time_s=time.monotonic() - start,
               code_timeouts=code_stats["timeouts"], code_errors=code_stats["errors"],
               code_time_s=code_stats["time_s"])
  return rewards.astype(np.float32), components, stats


def score_completions(completions: list[str], problems: list[Problem], reward_kind: str,
                      config: RewardConfig = RewardConfig(), prefix: str = ""):
  """Scores N completions against their problems.

  Args:
    completions: N decoded completions (the text after the prompt).
    problems: the N problems they answer (a GRPO group repeats one problem G times).
    reward_kind: "countdown" | "numeric" | "math" (the task's `reward_kind`).
    config: weights, extra components, timeout and executor.
    prefix: response text the prompt already wrote, e.g. "<think>" (completion_prefix).

  Returns:
    rewards: [N] float32, the weighted sum of the components.
    components: {name: [N] float32} unweighted, "format", "accuracy" and each extra name.
    stats: {"reward_errors", "reward_timeouts": counts over (completion, component) pairs,
            "reward_time_s": wall time}.
  """
  if len(completions) != len(problems):
    raise ValueError(f"len(completions)={len(completions)} != len(problems)={len(problems)}")
  if reward_kind == "code":
    return _score_code(completions, problems, config, prefix)
  return _score(completions, problems, reward_kind, config, prefix)


def _score(completions, problems, reward_kind, config, prefix):
  components = _components(reward_kind, config)
  fns = [fn for _, fn, _ in components]
  start = time.monotonic()
  items = [(prefix + c, p) for c, p in zip(completions, problems)]
  if not items:
    scored = []
  elif config.executor == "inline":
    scored = _score_items(items, fns, config.timeout_s)
  else:
    for name, fn, _ in components:
      try:
        pickle.dumps(fn)
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(f"reward fn {name!r} cannot be sent to worker processes ({e}); "
                         "define it at module level or use executor='inline'") from e
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = config.num_workers or min(4, cpus or 1)
    scored = _score_in_pool(items, fns, config.timeout_s, workers)
  values = np.array([[v for v, _ in row] for row in scored], np.float32).reshape(
      len(items), len(fns))
  statuses = [s for row in scored for _, s in row]
  weights = np.array([w for _, _, w in components], np.float32)
  stats = {"reward_errors": statuses.count("error"),
           "reward_timeouts": statuses.count("timeout"),
           "reward_time_s": time.monotonic() - start}
  return (values @ weights).astype(np.float32), {
      name: values[:, k] for k, (name, _, _) in enumerate(components)}, stats
