"""Model configuration: one frozen dataclass and the presets of the Llama / Qwen2 family."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import jax.numpy as jnp

_DTYPES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}

# Attention of the full-sequence forward (training, log-prob passes, SFT, pretraining); see
# ModelConfig.attention. The environment variable switches every ModelConfig that names none.
ATTENTION_CHOICES = ("auto", "xla", "cudnn")
DEFAULT_ATTENTION = os.environ.get("R1JAX_ATTENTION", "auto")


def dtype_from_name(name: str):
  """Maps 'float32' | 'bfloat16' | 'float16' to a jnp dtype; raises naming the bad value."""
  if name not in _DTYPES:
    raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}")
  return _DTYPES[name]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of a decoder-only transformer of the Llama / Qwen2 family.

  `dtype` is the compute dtype of activations and matmuls; `param_dtype` the storage dtype of
  the parameters. Norms, softmax and logits are always computed in float32.

  `attention` and `fused_logprobs` choose implementations, not the model: they never enter the
  exported config.json (`hf.config_to_hf` names its fields) and leave the outputs unchanged up
  to rounding.
  """

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: Optional[int] = None  # defaults to hidden_size // num_heads
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6
  qkv_bias: bool = False  # Qwen2 has biases on q, k and v projections.
  tie_embeddings: bool = False
  max_position_embeddings: int = 32768
  dtype: str = "float32"
  param_dtype: str = "float32"
  # Token ids; None where the tokenizer decides (HF checkpoints).
  bos_token_id: Optional[int] = None
  eos_token_id: Optional[int] = None
  pad_token_id: Optional[int] = None
  # "llama" or "qwen2": used to write back a config.json that transformers understands.
  family: str = "qwen2"
  # Attention of `model.forward` without a KV cache (the decode path has its own kernels):
  # "xla": einsum scores under a [B,1,1,T,S] mask (`model.attend`). "cudnn": cuDNN's fused
  # flash attention (jax.nn.dot_product_attention(implementation="cudnn"); GPU, bf16/fp16).
  # "auto": cudnn where it applies (a CUDA GPU, bf16/fp16 compute, head_dim a multiple of 8 up
  # to 128), else xla. Default DEFAULT_ATTENTION (the environment variable R1JAX_ATTENTION).
  attention: str = DEFAULT_ATTENTION
  # `model.sequence_log_probs`: unembedding, log-softmax, gather and entropy fused over chunks
  # of positions with a recomputing backward (never [B,T,V] float32 logits), or the plain path.
  fused_logprobs: bool = True

  def __post_init__(self):
    if self.head_dim is None:
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
    if self.family not in ("llama", "qwen2"):
      raise ValueError(f"family={self.family!r}; expected 'llama' or 'qwen2'")
    dtype_from_name(self.dtype)
    dtype_from_name(self.param_dtype)
    if self.attention not in ATTENTION_CHOICES:
      raise ValueError(f"attention={self.attention!r} (R1JAX_ATTENTION?); expected one of "
                       f"{ATTENTION_CHOICES}")

  @property
  def compute_dtype(self):
    return dtype_from_name(self.dtype)

  @property
  def storage_dtype(self):
    return dtype_from_name(self.param_dtype)

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def num_params(self) -> int:
    """Parameter count (embedding counted once when tied)."""
    d, f, l = self.hidden_size, self.intermediate_size, self.num_layers
    hq, hkv, k = self.num_heads, self.num_kv_heads, self.head_dim
    attn = d * hq * k + 2 * d * hkv * k + hq * k * d
    if self.qkv_bias:
      attn += hq * k + 2 * hkv * k
    per_layer = attn + 3 * d * f + 2 * d
    emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    return l * per_layer + emb + d


# Presets. Shapes of the public checkpoints (their config.json files); weights are never fetched.
PRESETS = {
    # Character vocabulary of r1jax.tokenizer.CharTokenizer (100 ids, padded to 128).
    "tiny": dict(vocab_size=128, hidden_size=64, intermediate_size=172, num_layers=2, num_heads=4,
                 num_kv_heads=2, rope_theta=10000.0, tie_embeddings=True, family="llama",
                 max_position_embeddings=2048),
    # ~3M parameters: the CPU base model of the R1-Zero-in-miniature experiment.
    "small": dict(vocab_size=128, hidden_size=192, intermediate_size=512, num_layers=4,
                  num_heads=6, num_kv_heads=2, rope_theta=10000.0, tie_embeddings=True,
                  family="llama", max_position_embeddings=2048),
    # ~25M parameters: the GPU base model of the R1-Zero-in-miniature experiment.
    "medium": dict(vocab_size=128, hidden_size=512, intermediate_size=1536, num_layers=8,
                   num_heads=8, num_kv_heads=4, rope_theta=10000.0, tie_embeddings=True,
                   family="llama", max_position_embeddings=4096),
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_layers=24, num_heads=14, num_kv_heads=2, rope_theta=1000000.0,
                         rms_norm_eps=1e-6, qkv_bias=True, tie_embeddings=True, family="qwen2",
                         bos_token_id=151643, eos_token_id=151643),
    "qwen2.5-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_layers=28, num_heads=12, num_kv_heads=2, rope_theta=1000000.0,
                         rms_norm_eps=1e-6, qkv_bias=True, tie_embeddings=True, family="qwen2",
                         bos_token_id=151643, eos_token_id=151643),
    "qwen2.5-3b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008,
                       num_layers=36, num_heads=16, num_kv_heads=2, rope_theta=1000000.0,
                       rms_norm_eps=1e-6, qkv_bias=True, tie_embeddings=True, family="qwen2",
                       bos_token_id=151643, eos_token_id=151643),
    "qwen2.5-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                       num_layers=28, num_heads=28, num_kv_heads=4, rope_theta=1000000.0,
                       rms_norm_eps=1e-6, qkv_bias=True, tie_embeddings=False, family="qwen2",
                       bos_token_id=151643, eos_token_id=151643),
    "llama-3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                       num_layers=32, num_heads=32, num_kv_heads=8, rope_theta=500000.0,
                       rms_norm_eps=1e-5, qkv_bias=False, tie_embeddings=False, family="llama",
                       max_position_embeddings=8192, bos_token_id=128000, eos_token_id=128001),
}


def get_config(name: str, **overrides) -> ModelConfig:
  """Returns the preset `name` with `overrides` applied; raises naming the unknown preset."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
  return ModelConfig(**{**PRESETS[name], **overrides})
