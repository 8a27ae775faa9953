"""Chat templates of instruct checkpoints: the prompt an instruct model was tuned on.

A Hugging Face checkpoint directory carries its chat template as `chat_template.jinja` or as the
"chat_template" entry of `tokenizer_config.json`. `load_chat_template` reads it and
`ChatTemplate.render` renders a conversation the way `transformers`'
`tokenizer.apply_chat_template(messages, add_generation_prompt=True)` does: Jinja2 in an
immutable sandbox (templates are untrusted code), `trim_blocks` / `lstrip_blocks`, the helpers
`raise_exception`, `strftime_now`, `tojson`, and the tokenizer's special tokens (`bos_token`,
`eos_token`, ...) as variables. Encoding the rendered text adds no BOS of its own: the template
writes whatever BOS the model expects (transformers tokenizes it with add_special_tokens=False).

  template = load_chat_template("runs/smollm2_135m_instruct")
  text = template.render(chat_messages("What is 12 * 7?", instruction=r1_instruction("numeric")))
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
from typing import Any, Mapping, Optional, Sequence

CHAT_TEMPLATE_FILE = "chat_template.jinja"
# Special tokens transformers passes to the template (its special_tokens_map), by attribute name.
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token")

# The R1-Zero template's instruction (DeepSeek-R1, Table 1) as a sentence for the user message,
# with an example answer of the kind each reward reads (r1jax.rewards: the countdown and numeric
# rewards read only the <answer> block; the math reward reads it, else the last \boxed{}).
_INSTRUCTION = ("First think about the reasoning process, then give the answer. Enclose the "
                "reasoning process and the answer within <think> </think> and <answer> </answer> "
                "tags, respectively, i.e., <think> reasoning process here </think> "
                "<answer> {example} </answer>.")
_EXAMPLES = {"countdown": "(1 + 2) / 3", "numeric": "42", "math": "\\frac{1}{2}",
             "code": "the code"}


def r1_instruction(reward_kind: str = "") -> str:
  """The R1-style think/answer instruction, with an answer example for `reward_kind`."""
  return _INSTRUCTION.format(example=_EXAMPLES.get(reward_kind, "answer here"))


def chat_messages(question: str, system_prompt: str = "",
                  instruction: str = "") -> list[dict[str, str]]:
  """[system (if `system_prompt`), user: question + " " + instruction (if any)]."""
  user = f"{question} {instruction}" if instruction else question
  system = [{"role": "system", "content": system_prompt}] if system_prompt else []
  return system + [{"role": "user", "content": user}]


@functools.lru_cache(maxsize=8)
def _compile(source: str):
  """The template compiled in the sandboxed environment transformers uses."""
  import jinja2  # pylint: disable=import-outside-toplevel
  import jinja2.ext  # pylint: disable=import-outside-toplevel
  from jinja2 import sandbox  # pylint: disable=import-outside-toplevel

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes HTML characters; transformers' does not.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  def strftime_now(fmt):
    return datetime.datetime.now().strftime(fmt)

  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=[jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = strftime_now
  return env.from_string(source)


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """A Jinja chat template and the special tokens it may read.

  source: the template text. special_tokens: ((name, token text), ...), e.g.
  (("bos_token", "<s>"), ("eos_token", "</s>")). origin: the file it came from (for errors).
  """

  source: str
  special_tokens: tuple[tuple[str, str], ...] = ()
  origin: str = ""

  def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
             **kwargs) -> str:
    """The conversation as text, ending with the assistant's header when
    `add_generation_prompt`. `kwargs` are further template variables."""
    import jinja2  # pylint: disable=import-outside-toplevel
    variables = {**dict(self.special_tokens), **kwargs}
    try:
      return _compile(self.source).render(messages=[dict(m) for m in messages],
                                          add_generation_prompt=add_generation_prompt,
                                          **variables)
    except jinja2.exceptions.TemplateError as e:
      raise ValueError(f"chat template of {self.origin or '<string>'}: {e}") from e

  def token(self, name: str) -> Optional[str]:
    """The text of special token `name` ("bos_token", ...), or None."""
    return dict(self.special_tokens).get(name)


def _token_text(value) -> Optional[str]:
  if isinstance(value, dict):  # AddedToken serialized as {"content": ..., ...}
    value = value.get("content")
  return value if isinstance(value, str) else None


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e


def load_chat_template(directory: str, flag: str = "--template=chat") -> ChatTemplate:
  """The chat template of checkpoint `directory`: `chat_template.jinja`, else the "chat_template"
  entry of `tokenizer_config.json` (a string, or a list of {"name", "template"} whose "default"
  is used, as transformers does). Raises naming `flag` and the files when there is none."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{flag}: {directory!r} is not a checkpoint directory")
  config_file = os.path.join(directory, "tokenizer_config.json")
  config = _read_json(config_file) if os.path.exists(config_file) else {}
  special = {}
  map_file = os.path.join(directory, "special_tokens_map.json")
  sources = [_read_json(map_file)] if os.path.exists(map_file) else []
  for src in sources + [config]:  # tokenizer_config.json wins, as in transformers
    for name in SPECIAL_TOKEN_NAMES:
      text = _token_text(src.get(name))
      if text is not None:
        special[name] = text
  jinja_file = os.path.join(directory, CHAT_TEMPLATE_FILE)
  if os.path.exists(jinja_file):
    with open(jinja_file) as f:
      source, origin = f.read(), jinja_file
  else:
    source, origin = config.get("chat_template"), config_file
    if isinstance(source, list):
      named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
      source = named.get("default")
  if not isinstance(source, str) or not source.strip():
    raise ValueError(f"{flag}: the checkpoint {directory!r} has no chat template (neither "
                     f"{CHAT_TEMPLATE_FILE} nor a 'chat_template' entry in tokenizer_config.json);"
                     " use --template=r1_zero for a base model")
  return ChatTemplate(source, tuple(sorted(special.items())), origin)
