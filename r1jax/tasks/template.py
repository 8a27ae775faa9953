"""Prompt templates: the R1-Zero template (DeepSeek-R1 paper, Table 1) and two variants.

R1-Zero is trained from a base model with no SFT, so the only thing telling it to reason before
answering is this template; the format reward (r1jax.rewards.format_reward) then reinforces the
<think> ... </think> <answer> ... </answer> structure the template asks for.
"""

from __future__ import annotations

# Table 1 of the DeepSeek-R1 paper, verbatim; `{prompt}` is replaced by the question.
R1_ZERO = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process "
    "here </think> <answer> answer here </answer>. User: {prompt}. Assistant:")

# For evaluating base (or SFT) models without the think/answer instruction: accuracy is then read
# from the last \boxed{} (math) and format reward is expected to be ~0.
PLAIN = "Question: {prompt}\nAnswer:"

# For the tiny character-level models of this project: no instruction text a 3M-parameter model
# could not read anyway, and the prompt ends by opening the think block, so the model only has to
# learn to close it and write the answer block. The trainer passes `completion_prefix("compact")`
# as the `prefix` of the format reward, since the completion starts inside <think>.
COMPACT = "{prompt}\n<think>"

TEMPLATES = {"r1_zero": R1_ZERO, "plain": PLAIN, "compact": COMPACT}


def _check(template: str) -> str:
  if template not in TEMPLATES:
    raise ValueError(f"unknown template={template!r}; expected one of {sorted(TEMPLATES)}")
  return TEMPLATES[template]


def format_prompt(question: str, template: str = "r1_zero") -> str:
  """Returns the prompt text for `question` under the named template."""
  # str.replace, not str.format: questions contain LaTeX braces.
  return _check(template).replace("{prompt}", question)


def completion_prefix(template: str) -> str:
  """The part of the response the template already wrote ("<think>" for `compact`, else "").

  Pass it as `prefix` to the format reward so the think block opened by the prompt counts.
  """
  return "<think>" if _check(template).endswith("<think>") else ""


def format_problem(problem, template: str = "r1_zero") -> str:
  """format_prompt of a Problem's question (the trainer's and evaluator's `format_prompt`)."""
  return format_prompt(problem.question, template)
