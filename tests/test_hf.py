"""r1jax.hf against transformers: logits parity, sharded checkpoints, round trips, bad input."""

import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from r1jax import hf
from r1jax.config import ModelConfig
from r1jax.model import forward, param_shapes, positions_from_mask
from r1jax.tokenizer import HFTokenizer
from tests.hf_utils import make_tiny_hf_model

# Two rows: a full one and one LEFT-padded by 3 slots (the sampler's prompt layout).
MASK = np.array([[1] * 9, [0] * 3 + [1] * 6], np.int32)


def _tokens(vocab_size, seed=1):
  return np.random.default_rng(seed).integers(3, vocab_size, MASK.shape).astype(np.int32)


def _hf_logits(model, tokens, mask):
  # HF positions count valid tokens, like r1jax.model.positions_from_mask.
  position_ids = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long),
                position_ids=torch.tensor(position_ids, dtype=torch.long))
  return out.logits.float().numpy()


def _r1jax_logits(params, config, tokens, mask):
  logits, _ = forward(params, tokens, config, positions=positions_from_mask(mask),
                      kv_mask=mask.astype(bool))
  return np.asarray(logits)


def _assert_logits_close(ours, theirs, mask):
  valid = mask.astype(bool)
  ours, theirs = ours[valid], theirs[valid]
  scale = max(1.0, float(np.abs(theirs).max()))
  assert np.abs(theirs).max() > 0.5, "logits too small for a meaningful comparison"
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * scale)


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def tiny(request, tmp_path_factory):
  return make_tiny_hf_model(tmp_path_factory.mktemp(request.param), request.param)


def test_config_from_hf_reads_the_family(tiny):
  model, path = tiny
  config, _ = hf.load_hf_checkpoint(path)
  c = model.config
  assert config.family == c.model_type
  assert (config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim) == (
      c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
      c.hidden_size // c.num_attention_heads)
  assert config.rope_theta == c.rope_parameters["rope_theta"]
  assert config.qkv_bias == (c.model_type == "qwen2")
  assert config.tie_embeddings == c.tie_word_embeddings
  assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, 0)
  assert config.param_dtype == "float32"


def test_logits_match_transformers(tiny):
  model, path = tiny
  config, params = hf.load_hf_checkpoint(path)
  tokens = _tokens(config.vocab_size)
  _assert_logits_close(_r1jax_logits(params, config, tokens, MASK),
                       _hf_logits(model, tokens, MASK), MASK)


def test_state_dict_round_trip(tiny):
  model, _ = tiny
  config = hf.config_from_hf(model.config.to_dict())
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  params = hf.params_from_hf_state_dict(state, config)
  back = hf.params_to_hf_state_dict(params, config)
  assert set(back) == set(state) - ({"lm_head.weight"} if config.tie_embeddings else set())
  for name, value in back.items():
    np.testing.assert_array_equal(value, state[name], err_msg=name)


def test_sharded_checkpoint_loads_the_same(tmp_path):
  _, single = make_tiny_hf_model(tmp_path / "one", "llama", seed=3)
  _, sharded = make_tiny_hf_model(tmp_path / "many", "llama", seed=3, max_shard_size="20KB")
  assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
  assert not os.path.exists(os.path.join(sharded, "model.safetensors"))
  _, a = hf.load_hf_checkpoint(single)
  _, b = hf.load_hf_checkpoint(sharded)
  for x, y in zip(*(jax.tree_util.tree_leaves(p) for p in (a, b))):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("family,shard_bytes", [("qwen2", 10**9), ("llama", 16_000)])
def test_saved_checkpoint_loads_in_transformers(tmp_path, family, shard_bytes):
  model, path = make_tiny_hf_model(tmp_path, family, seed=5)
  config, params = hf.load_hf_checkpoint(path)
  out = hf.save_hf_checkpoint(str(tmp_path / "saved"), config, params,
                              max_shard_bytes=shard_bytes)
  index = os.path.join(out, "model.safetensors.index.json")
  assert os.path.exists(index) == (shard_bytes < 10**9)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      out, attn_implementation="eager", dtype=torch.float32).eval()
  assert type(reloaded) is type(model)
  tokens = _tokens(config.vocab_size, seed=2)
  ours = _r1jax_logits(params, config, tokens, MASK)
  _assert_logits_close(ours, _hf_logits(reloaded, tokens, MASK), MASK)
  # And r1jax reads its own output back to the same config and params.
  config2, params2 = hf.load_hf_checkpoint(out)
  assert config2 == config
  for x, y in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2)):
    np.testing.assert_array_equal(x, y)
  with open(os.path.join(out, "generation_config.json")) as f:
    assert json.load(f)["eos_token_id"] == 2


def test_llama_attention_bias_round_trips(tmp_path):
  # Llama's attention_bias also adds an o_proj bias; r1jax loads it only when it is zero.
  model, path = make_tiny_hf_model(tmp_path, "llama", seed=7, attention_bias=True)
  config, params = hf.load_hf_checkpoint(path)
  assert config.qkv_bias and "bq" in params["layers"]
  tokens = _tokens(config.vocab_size)
  _assert_logits_close(_r1jax_logits(params, config, tokens, MASK),
                       _hf_logits(model, tokens, MASK), MASK)
  state = hf.params_to_hf_state_dict(params, config)
  assert not state["model.layers.1.self_attn.o_proj.bias"].any()
  state["model.layers.1.self_attn.o_proj.bias"] = np.ones(config.hidden_size, np.float32)
  with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.o_proj\.bias"):
    hf.params_from_hf_state_dict(state, config)


def test_bfloat16_checkpoint(tmp_path, tiny):
  model, path = tiny
  config, params = hf.load_hf_checkpoint(path, param_dtype="bfloat16")
  assert params["embed"].dtype == ml_dtypes.bfloat16
  out = hf.save_hf_checkpoint(str(tmp_path / "bf16"), config, params)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
  assert reloaded.dtype == torch.bfloat16
  config2, params2 = hf.load_hf_checkpoint(out)
  assert (config2.param_dtype, config2.dtype) == ("bfloat16", "bfloat16")
  for x, y in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2)):
    assert y.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(x, y)
  # The raw-bytes reader (fallback for safetensors without numpy bfloat16) agrees.
  file = os.path.join(out, "model.safetensors")
  raw = hf._read_raw_tensor(file, "model.embed_tokens.weight")  # pylint: disable=protected-access
  np.testing.assert_array_equal(raw, params["embed"])
  np.testing.assert_array_equal(
      raw.astype(np.float32), model.model.embed_tokens.weight.detach().bfloat16().float().numpy())


def test_config_to_hf_round_trip():
  for family, kw in [("qwen2", dict(qkv_bias=True, tie_embeddings=True)),
                     ("llama", dict(num_kv_heads=1, head_dim=16, rope_theta=5e5))]:
    fields = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
                  num_heads=4, num_kv_heads=2, family=family, eos_token_id=5,
                  param_dtype="bfloat16", dtype="bfloat16")
    config = ModelConfig(**{**fields, **kw})
    hf_config = hf.config_to_hf(config)
    assert hf.config_from_hf(hf_config) == config
    loaded = transformers.AutoConfig.for_model(**hf_config)
    assert loaded.head_dim == config.head_dim
    assert loaded.num_key_value_heads == config.num_kv_heads


def test_transformers5_rope_parameters_and_rejections():
  base = dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=48,
              num_hidden_layers=2, num_attention_heads=4)
  c = hf.config_from_hf({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 7.0}})
  assert (c.rope_theta, c.num_kv_heads, c.qkv_bias) == (7.0, 4, False)
  assert hf.config_from_hf(base, rms_norm_eps=0.5).rms_norm_eps == 0.5
  with pytest.raises(ValueError, match="mistral"):
    hf.config_from_hf({**base, "model_type": "mistral"})
  with pytest.raises(ValueError, match="llama3"):
    hf.config_from_hf({**base, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
  with pytest.raises(ValueError, match="yarn"):
    hf.config_from_hf({**base, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0}})
  qwen = {**base, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 8,
          "max_window_layers": 1}
  with pytest.raises(ValueError, match="sliding"):
    hf.config_from_hf(qwen)
  # Qwen2.5 ships sliding_window set but use_sliding_window false: full attention, accepted.
  assert hf.config_from_hf({**qwen, "use_sliding_window": False}).qkv_bias
  with pytest.raises(ValueError, match="hidden_act"):
    hf.config_from_hf({**base, "hidden_act": "gelu"})


def test_bad_input_names_the_culprit(tmp_path, tiny):
  model, path = tiny
  missing = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="nope"):
    hf.load_hf_checkpoint(missing)
  os.makedirs(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load_hf_checkpoint(str(tmp_path / "empty"))
  with open(tmp_path / "empty" / "config.json", "w") as f:
    json.dump(hf.config_to_hf(hf.load_hf_config(path)), f)
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    hf.load_hf_checkpoint(str(tmp_path / "empty"))

  config = hf.load_hf_config(path)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  name = "model.layers.1.mlp.up_proj.weight"
  with pytest.raises(ValueError, match=name):
    hf.params_from_hf_state_dict({k: v for k, v in state.items() if k != name}, config)
  with pytest.raises(ValueError, match="model.layers.2.mlp.up_proj.weight"):
    hf.params_from_hf_state_dict({**state, "model.layers.2.mlp.up_proj.weight": state[name]},
                                 config)
  with pytest.raises(ValueError, match=name):
    hf.params_from_hf_state_dict({**state, name: state[name][:, :-1]}, config)
  # A config that disagrees with the checkpoint (wider MLP) fails on the first MLP tensor.
  with pytest.raises(ValueError, match="model.layers.0.mlp.gate_proj.weight"):
    hf.params_from_hf_state_dict(state, config.replace(intermediate_size=4 * config.hidden_size))
  # Tolerated extras: old rotary buffers, and lm_head.weight of a tied model if it is the embedding.
  extras = {"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(4, np.float32)}
  if config.tie_embeddings:
    extras["lm_head.weight"] = state["model.embed_tokens.weight"]
  hf.params_from_hf_state_dict({**state, **extras}, config)
  # Tied: an lm_head.weight that is not the embedding; untied: one of the wrong shape.
  bad_head = (state["model.embed_tokens.weight"] + 1 if config.tie_embeddings
              else state["lm_head.weight"][:-1])
  with pytest.raises(ValueError, match="lm_head.weight"):
    hf.params_from_hf_state_dict({**state, "lm_head.weight": bad_head}, config)
  params = hf.params_from_hf_state_dict(state, config)
  params["layers"]["w_up"] = params["layers"]["w_up"][:, :-1]
  with pytest.raises(ValueError, match="w_up"):
    hf.save_hf_checkpoint(str(tmp_path / "bad"), config, params)
  with pytest.raises(FileNotFoundError, match="no_tokenizer"):
    hf.save_hf_checkpoint(str(tmp_path / "bad2"), config, params,
                          tokenizer_dir=str(tmp_path / "no_tokenizer"))


def _tiny_tokenizer_dir(path):
  from tokenizers import (  # pylint: disable=import-outside-toplevel
      Tokenizer, decoders, models, pre_tokenizers, trainers)
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  corpus = ["The answer is 42.", "Let me think step by step.", "<think> 2 + 2 = 4 </think>",
            "def f(x):\n    return x * x"] * 10
  tok.train_from_iterator(corpus, trainer)
  tok.decoder = decoders.ByteLevel()
  os.makedirs(path, exist_ok=True)
  tok.save(os.path.join(path, "tokenizer.json"))
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
               "tokenizer_class": "PreTrainedTokenizerFast"}, f)
  return path


def test_tokenizer_matches_transformers_and_is_copied(tmp_path, tiny):
  tok_dir = _tiny_tokenizer_dir(str(tmp_path / "tok"))
  ours = HFTokenizer(tok_dir)
  theirs = transformers.PreTrainedTokenizerFast(
      tokenizer_file=os.path.join(tok_dir, "tokenizer.json"), bos_token="<s>", eos_token="</s>",
      pad_token="<pad>")
  texts = ["The answer is 42.", "step by step: 2 + 2 = 4", "return x * x\n", "unseen Zq!"]
  for text in texts:
    ids = ours.encode(text)
    assert ids == theirs.encode(text, add_special_tokens=False), text
    assert ours.decode(ids) == theirs.decode(ids) == text
  assert (ours.bos_id, ours.eos_id, ours.pad_id) == (theirs.bos_token_id, theirs.eos_token_id,
                                                     theirs.pad_token_id)
  _, path = tiny
  config, params = hf.load_hf_checkpoint(path)
  out = hf.save_hf_checkpoint(str(tmp_path / "with_tok"), config, params, tokenizer_dir=tok_dir)
  copied = HFTokenizer(out)
  assert copied.encode(texts[0]) == ours.encode(texts[0])
  assert 2 in copied.eos_ids and ours.eos_id in copied.eos_ids
  auto = transformers.AutoTokenizer.from_pretrained(out)
  assert auto.encode(texts[1], add_special_tokens=False) == ours.encode(texts[1])


def test_param_shapes_cover_the_layout(tiny):
  # Every r1jax parameter is written exactly once (per layer) by the naming map.
  model, _ = tiny
  config = hf.config_from_hf(model.config.to_dict())
  state = hf.params_to_hf_state_dict(hf.params_from_hf_state_dict(
      {k: v.numpy() for k, v in model.state_dict().items()}, config), config)
  shapes = jax.tree_util.tree_leaves(param_shapes(config), is_leaf=lambda x: isinstance(x, tuple))
  total = sum(int(np.prod(s)) for s in shapes)
  assert sum(v.size for v in state.values()) == total == config.num_params()
