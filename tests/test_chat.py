"""--template=chat: prompt token ids against transformers' apply_chat_template on a tokenizer and
chat template written here (the SmolLM2 checkpoint's are checked in tests/test_gguf.py)."""

import json
import os

import jinja2
import pytest
import transformers

from r1jax import chat, tasks
from r1jax.tasks import Problem
from r1jax.tokenizer import HFTokenizer

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
# Writes the BOS itself, checks roles with raise_exception, and relies on trim_blocks /
# lstrip_blocks (each {% ... %} line would otherwise leave a newline or indentation behind).
TEMPLATE = """{{ bos_token }}
{% for message in messages %}
  {% if message['role'] not in ['system', 'user', 'assistant'] %}
    {{ raise_exception('unknown role ' + message['role']) }}
  {% endif %}
  {% if loop.first and message['role'] != 'system' %}
<|system|>
Default system prompt.{{ eos_token }}
  {% endif %}
<|{{ message['role'] }}|>
{{ message['content'] | trim }}{{ eos_token }}
{% endfor %}
{% if add_generation_prompt %}
<|assistant|>
{% endif %}
"""
PROBLEMS = [Problem("What is 12 * 7?", "84"),
            Problem(r"Simplify $\frac{3}{6}$ and {x}, then   2 + 2.", "1/2")]


def _tokenizer_dir(path, template=TEMPLATE, where="jinja"):
  """A small byte-level BPE tokenizer (chat markers as special tokens) and its chat template in
  chat_template.jinja (`where="jinja"`), in tokenizer_config.json ("config") or nowhere."""
  from tokenizers import (  # pylint: disable=import-outside-toplevel
      Tokenizer, decoders, models, pre_tokenizers, trainers)
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = trainers.BpeTrainer(vocab_size=160, special_tokens=SPECIAL,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  corpus = ["What is 12 * 7? First think about the reasoning process, then give the answer.",
            "Enclose the reasoning process <think> </think> and the answer <answer> </answer>."]
  tok.train_from_iterator(corpus * 10, trainer)
  tok.decoder = decoders.ByteLevel()
  os.makedirs(path, exist_ok=True)
  tok.save(os.path.join(path, "tokenizer.json"))
  config = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
            "tokenizer_class": "PreTrainedTokenizerFast"}
  if where == "config":
    config["chat_template"] = template
  elif where == "jinja":
    with open(os.path.join(path, "chat_template.jinja"), "w") as f:
      f.write(template)
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump(config, f)
  return str(path)


def _reference_ids(tokenizer, question, system_prompt, response_prefix, reward_kind="numeric"):
  """transformers' ids: the prompt with the generation header, or with `response_prefix` as the
  start of the assistant's message (continue_final_message)."""
  messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
      {"role": "user", "content": question + " " + chat.r1_instruction(reward_kind)}]
  if not response_prefix:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                         return_dict=False)
  return tokenizer.apply_chat_template(
      messages + [{"role": "assistant", "content": response_prefix}],
      continue_final_message=True, tokenize=True, return_dict=False)


@pytest.mark.parametrize("where,system_prompt,response_prefix",
                         [("jinja", "", ""), ("config", "", ""),
                          ("jinja", "You are a careful solver.", "<think>")])
def test_chat_prompt_ids_match_transformers(tmp_path, where, system_prompt, response_prefix):
  path = _tokenizer_dir(tmp_path / "tok", where=where)
  fmt = tasks.prompt_formatter("chat", checkpoint_dir=path, system_prompt=system_prompt,
                               reward_kind="numeric", response_prefix=response_prefix)
  ours = HFTokenizer(path)
  theirs = transformers.AutoTokenizer.from_pretrained(path)
  assert theirs.chat_template == TEMPLATE
  for problem in PROBLEMS:
    want = _reference_ids(theirs, problem.question, system_prompt, response_prefix)
    text = fmt(problem)
    got = ours.encode(text, add_bos=ours.bos_id is not None and tasks.template_adds_bos("chat"))
    assert got == want, text
    # One BOS, written by the template; the default system prompt only without --system_prompt.
    assert got[0] == ours.bos_id and got.count(ours.bos_id) == 1
    assert ("Default system prompt." in text) == (not system_prompt)
    assert text.endswith("<|assistant|>\n" + response_prefix) and "<answer> 42 </answer>" in text
  assert tasks.completion_prefix("chat", response_prefix) == response_prefix


def test_render_is_sandboxed_and_raises_naming_the_file(tmp_path):
  path = _tokenizer_dir(tmp_path / "tok")
  template = chat.load_chat_template(path)
  with pytest.raises(ValueError, match="chat_template.jinja: unknown role tool"):
    template.render([{"role": "tool", "content": "x"}])
  # The immutable sandbox refuses to mutate a list (a plain jinja2 Environment would not).
  unsafe = chat.ChatTemplate("{% set xs = [] %}{{ xs.append(1) }}", origin="unsafe.jinja")
  with pytest.raises(jinja2.exceptions.SecurityError):
    _compile_and_render(unsafe)


def _compile_and_render(template):
  try:
    return template.render([])
  except ValueError as e:  # render wraps TemplateError; surface the original for the check
    raise e.__cause__ from None


def test_missing_template_and_bad_flags_are_named(tmp_path):
  path = _tokenizer_dir(tmp_path / "tok", where="none")
  with pytest.raises(ValueError, match=r"--template=chat.*no chat template.*chat_template\.jinja"):
    tasks.prompt_formatter("chat", checkpoint_dir=path)
  with pytest.raises(ValueError, match="--init_checkpoint"):
    tasks.prompt_formatter("chat", checkpoint_dir=None)
  with pytest.raises(ValueError, match="--system_prompt is only used with --template=chat"):
    tasks.prompt_formatter("r1_zero", system_prompt="be brief")
  with pytest.raises(ValueError, match="--template=chat"):
    tasks.format_prompt("What is 1 + 1?", "chat")
  assert tasks.completion_prefix("chat") == ""
  with pytest.raises(ValueError, match="--chat_response_prefix is only used with --template=chat"):
    tasks.prompt_formatter("compact", response_prefix="<think>")
  assert not tasks.template_adds_bos("chat") and tasks.template_adds_bos("r1_zero")
  fixed = tasks.prompt_formatter("r1_zero")
  assert fixed(PROBLEMS[0]) == tasks.format_prompt(PROBLEMS[0].question, "r1_zero")


def test_instruction_asks_for_what_each_reward_reads():
  from r1jax import rewards  # pylint: disable=import-outside-toplevel
  for kind, answer, problem in [("numeric", "42", Problem("q", "42")),
                                ("countdown", "(1 + 2) / 3",
                                 Problem("q", "", {"numbers": (1, 2, 3), "target": 1})),
                                ("math", r"\frac{1}{2}", Problem("q", r"\frac{1}{2}"))]:
    text = chat.r1_instruction(kind)
    example = text[text.rindex("<think>"):].rstrip(".")
    assert f"<answer> {answer} </answer>" in example
    # The example completion of the instruction is well formatted and correct for its kind.
    assert rewards.format_reward(example) == 1.0
    assert rewards.ACCURACY_FNS[kind](example, problem) == 1.0
