"""Tiny random Hugging Face checkpoints for tests that compare r1jax against transformers."""

from __future__ import annotations

import os

import torch
import transformers

# Shapes small enough for two CPU cores. The Llama config has 4 query heads per kv head and
# Llama 3's rope_theta; the Qwen2 one q/k/v biases and tied embeddings.
FAMILIES = {
    "qwen2": dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                  rope_theta=10000.0, rms_norm_eps=1e-6, max_position_embeddings=128,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0),
    "llama": dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False,
                  rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=128,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0),
}
_CLASSES = {"qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
            "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM)}


def make_tiny_hf_model(tmp_path, family: str = "qwen2", seed: int = 0, *,
                       max_shard_size=None, **config_overrides):
  """A random tiny transformers causal LM of `family`, saved with save_pretrained.

  Weights are normal(0, initializer_range=0.5) so that logits are O(1) and a parity check is
  meaningful (HF's default 0.02 gives near-zero logits); norm weights and biases, which HF
  initializes to ones / zeros, are randomized too so that their mapping is exercised.
  Returns (torch model in eval mode, float32, eager attention; checkpoint directory).
  """
  if family not in _CLASSES:
    raise ValueError(f"family={family!r}; expected one of {sorted(_CLASSES)}")
  config_cls, model_cls = _CLASSES[family]
  kwargs = {**FAMILIES[family], "initializer_range": 0.5, **config_overrides}
  config = config_cls(**kwargs, attn_implementation="eager")
  torch.manual_seed(seed)
  model = model_cls(config).to(torch.float32).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("o_proj.bias"):  # Llama attention_bias; r1jax has no o_proj bias.
        p.zero_()
      elif name.endswith("bias"):
        p.copy_(0.5 * torch.randn_like(p))
      elif "norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
  path = os.path.join(str(tmp_path), f"{family}-{seed}")
  save_kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  model.save_pretrained(path, **save_kwargs)
  return model, path
