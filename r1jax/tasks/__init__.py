"""Tasks for R1-Zero training and evaluation, by name.

  task = get_task("countdown", num_test=256)
  problems = task.split("train", seed=0)          # list[Problem]
  prompt = format_problem(problems[0], "r1_zero")  # = format_prompt(question, template)
  # rewards: r1jax.rewards.score_completions(..., reward_kind=task.reward_kind)

Procedural tasks (countdown, arithmetic) take their generator settings as keyword arguments;
benchmark tasks (gsm8k, math500, aime24, amc23) take `data_dir` (the --data_dir flag: a directory
holding gsm8k/train.jsonl ... or the dataset's files directly) and, for the TFDS-backed ones,
`cache_dir` (where the prepared array_record files go).
"""

from __future__ import annotations

from r1jax.tasks.arithmetic import ArithmeticTask
from r1jax.tasks.base import REWARD_KINDS, Problem, Task
from r1jax.tasks.countdown import CountdownTask, verify_equation
from r1jax.tasks.template import (TEMPLATE_NAMES, TEMPLATES, ChatPromptFormat, completion_prefix,
                                   format_problem, format_prompt, prompt_formatter,
                                   template_adds_bos)


def _gsm8k(**kw):
  from r1jax.tasks.datasets import Gsm8kTask  # pylint: disable=import-outside-toplevel
  return Gsm8kTask(**kw)


def _math500(**kw):
  from r1jax.tasks.datasets import Math500Task  # pylint: disable=import-outside-toplevel
  return Math500Task(**kw)


def _competition(name, subdir):
  def make(**kw):
    from r1jax.tasks.datasets import CompetitionTask  # pylint: disable=import-outside-toplevel
    return CompetitionTask(name=name, subdir=subdir, reward_kind="math", **kw)
  return make


def _code_expression(**kw):
  from r1jax.tasks.code import CodeExpressionTask  # pylint: disable=import-outside-toplevel
  return CodeExpressionTask(**kw)


# tensorflow_datasets is imported only when a benchmark task is asked for.
TASKS = {
    "countdown": CountdownTask,
    "arithmetic": ArithmeticTask,
    "gsm8k": _gsm8k,
    "math500": _math500,
    "aime24": _competition("aime24", "aime24"),
    "amc23": _competition("amc23", "amc23"),
    "code_expression": _code_expression,
}


_PROCEDURAL = ("countdown", "arithmetic", "code_expression")


def get_task(name: str, **kwargs) -> Task:
  """Builds the task `name` with `kwargs`; raises naming a bad name or keyword.

  Procedural tasks ignore `data_dir` and `cache_dir`, so one call fits every task.
  """
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
  if name in _PROCEDURAL:  # the entry point passes --data_dir whatever the task
    kwargs = {k: v for k, v in kwargs.items() if k not in ("data_dir", "cache_dir")}
  try:
    return TASKS[name](**kwargs)
  except TypeError as e:
    raise TypeError(f"task {name!r}: {e}") from e


__all__ = ["ArithmeticTask", "ChatPromptFormat", "CountdownTask", "Problem", "REWARD_KINDS", "TASKS",
           "TEMPLATES", "TEMPLATE_NAMES", "Task", "completion_prefix", "format_problem",
           "format_prompt", "get_task", "prompt_formatter", "template_adds_bos",
           "verify_equation"]
