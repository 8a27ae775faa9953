"""Prompt templates: the R1-Zero template (DeepSeek-R1 paper, Table 1), two variants, and an
instruct checkpoint's own chat template.

R1-Zero is trained from a base model with no SFT, so the only thing telling it to reason before
answering is this template; the format reward (r1jax.rewards.format_reward) then reinforces the
<think> ... </think> <answer> ... </answer> structure the template asks for. An instruct model
(e.g. SmolLM2-Instruct) was tuned on its chat template instead: `template="chat"` renders the
question, with the same think/answer instruction, as the user message of that template
(r1jax.chat; `prompt_formatter` builds the formatter from the checkpoint directory).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

from r1jax import chat

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
# Rendered by the checkpoint's own chat template (r1jax.chat), so not a fixed string.
CHAT = "chat"
TEMPLATE_NAMES = (*TEMPLATES, CHAT)


def _check(template: str) -> str:
  if template == CHAT:
    raise ValueError("--template=chat renders the checkpoint's chat template, which this entry "
                     "point does not read (experiments/r1_zero.py and evaluate.py do, through "
                     "r1jax.tasks.prompt_formatter('chat', checkpoint_dir=...))")
  if template not in TEMPLATES:
    raise ValueError(f"unknown template={template!r}; expected one of {sorted(TEMPLATE_NAMES)}")
  return TEMPLATES[template]


def format_prompt(question: str, template: str = "r1_zero") -> str:
  """Returns the prompt text for `question` under the named template."""
  # str.replace, not str.format: questions contain LaTeX braces.
  return _check(template).replace("{prompt}", question)


def completion_prefix(template: str, response_prefix: str = "") -> str:
  """The part of the response the template already wrote ("<think>" for `compact`; for `chat`
  the `response_prefix` written after the assistant's header; else "").

  Pass it as `prefix` to the format reward so the think block opened by the prompt counts.
  """
  if template == CHAT:
    return response_prefix
  return "<think>" if _check(template).endswith("<think>") else ""


def format_problem(problem, template: str = "r1_zero") -> str:
  """format_prompt of a Problem's question (the trainer's and evaluator's `format_prompt`)."""
  return format_prompt(problem.question, template)


def template_adds_bos(template: str) -> bool:
  """Whether the prompt text of `template` is encoded with a BOS token in front (when the
  tokenizer has one). Not for `chat`: a chat template writes the BOS itself where the model
  wants one (SmolLM2's starts with <|im_start|>, its BOS), and transformers' apply_chat_template
  encodes the rendered text without adding another."""
  return template != CHAT


@dataclasses.dataclass(frozen=True)
class ChatPromptFormat:
  """A problem -> prompt text formatter that renders a chat template (see r1jax.chat).

  The user message is the question followed by `instruction` (r1jax.chat.r1_instruction of the
  task's reward kind by default); a non-empty `system_prompt` is sent as a system message first
  (else the template's own default, if it has one, applies). `response_prefix` (e.g. "<think>")
  is written after the assistant's header, as the start of the response: pass it as the format
  reward's `prefix` (completion_prefix(CHAT, response_prefix)).
  """

  template: chat.ChatTemplate
  system_prompt: str = ""
  instruction: str = ""
  response_prefix: str = ""

  def __call__(self, problem) -> str:
    return self.template.render(
        chat.chat_messages(problem.question, self.system_prompt, self.instruction),
        add_generation_prompt=True) + self.response_prefix


def prompt_formatter(template: str, *, checkpoint_dir: Optional[str] = None,
                     system_prompt: str = "", reward_kind: str = "",
                     instruction: Optional[str] = None, response_prefix: str = ""):
  """The trainer's and evaluator's `format_prompt` (problem -> text) for template `template`.

  For "chat", the chat template is read from `checkpoint_dir` (the checkpoint's or tokenizer's
  directory); the user message is the question, then `instruction` (None: the think/answer
  instruction worded for `reward_kind`, r1jax.chat.r1_instruction; "": nothing), and the
  response starts with `response_prefix`. Raises naming the flags (--template, --system_prompt,
  --chat_instruction, --chat_response_prefix, --init_checkpoint) on bad combinations.
  """
  if template != CHAT:
    _check(template)
    for flag, value in (("system_prompt", system_prompt), ("chat_instruction", instruction),
                        ("chat_response_prefix", response_prefix)):
      if value:
        raise ValueError(f"--{flag} is only used with --template=chat, not "
                         f"--template={template}")
    return functools.partial(format_problem, template=template)
  if not checkpoint_dir:
    raise ValueError("--template=chat renders the checkpoint's chat template, but no checkpoint "
                     "directory was given (--init_checkpoint or a --tokenizer directory)")
  if instruction is None:
    instruction = chat.r1_instruction(reward_kind)
  return ChatPromptFormat(chat.load_chat_template(checkpoint_dir), system_prompt, instruction,
                          response_prefix)
