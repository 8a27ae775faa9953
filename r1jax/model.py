"""A Llama / Qwen2-family decoder as pure functions over a params pytree.

Parameters of the `num_layers` blocks are stacked on a leading `layers` axis and the blocks run
under `jax.lax.scan`, so compile time does not grow with depth. Every parameter has logical axis
names (`param_axes`) that `r1jax.sharding` maps onto a device mesh.

Shapes: B batch, T query length, S key length (cache length when decoding), D hidden, H query
heads, N kv heads, G = H // N query heads per kv head, K head dim, F mlp, V vocab, L layers.

Padding convention: prompts are LEFT-padded so every prompt ends in the same slot and decoding
writes one slot per step for the whole batch. `positions` (for RoPE) count only valid tokens,
`kv_mask` marks which slots hold real tokens, and a query in slot i sees keys in slots <= i.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from r1jax import decode_kernels
from r1jax.config import ModelConfig

Params = dict[str, Any]
KVCache = dict[str, jax.Array]  # {"k": [L,B,S,N,K], "v": [L,B,S,N,K]}


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------
def param_axes(config: ModelConfig) -> Params:
  """Logical axis names of every parameter, a pytree of tuples shaped like `init_params`."""
  layers = {
      "attn_norm": ("layers", "norm"),
      "wq": ("layers", "embed", "heads", "head_dim"),
      "wk": ("layers", "embed", "kv_heads", "head_dim"),
      "wv": ("layers", "embed", "kv_heads", "head_dim"),
      "wo": ("layers", "heads", "head_dim", "embed"),
      "mlp_norm": ("layers", "norm"),
      "w_gate": ("layers", "embed", "mlp"),
      "w_up": ("layers", "embed", "mlp"),
      "w_down": ("layers", "mlp", "embed"),
  }
  if config.qkv_bias:
    layers.update(bq=("layers", "heads", "head_dim"), bk=("layers", "kv_heads", "head_dim"),
                  bv=("layers", "kv_heads", "head_dim"))
  axes = {"embed": ("vocab", "embed"), "layers": layers, "final_norm": ("norm",)}
  if not config.tie_embeddings:
    axes["lm_head"] = ("embed", "vocab")
  return axes


def param_shapes(config: ModelConfig) -> Params:
  """Shapes of every parameter, a pytree of tuples shaped like `init_params`."""
  c = config
  l, d, f, h, n, k, v = (c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads,
                         c.num_kv_heads, c.head_dim, c.vocab_size)
  layers = {
      "attn_norm": (l, d), "wq": (l, d, h, k), "wk": (l, d, n, k), "wv": (l, d, n, k),
      "wo": (l, h, k, d), "mlp_norm": (l, d), "w_gate": (l, d, f), "w_up": (l, d, f),
      "w_down": (l, f, d),
  }
  if c.qkv_bias:
    layers.update(bq=(l, h, k), bk=(l, n, k), bv=(l, n, k))
  shapes = {"embed": (v, d), "layers": layers, "final_norm": (d,)}
  if not c.tie_embeddings:
    shapes["lm_head"] = (d, v)
  return shapes


def _is_shape(x) -> bool:
  return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def init_params(config: ModelConfig, key: jax.Array, init_std: float = 0.02) -> Params:
  """Random parameters: normal(0, init_std) for matrices, ones for norms, zeros for biases."""
  shapes = param_shapes(config)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=_is_shape)
  keys = jax.random.split(key, len(leaves))
  dtype = config.storage_dtype
  out = []
  for (path, shape), k in zip(leaves, keys):
    name = path[-1].key
    if "norm" in name:
      out.append(jnp.ones(shape, dtype))
    elif name in ("bq", "bk", "bv"):
      out.append(jnp.zeros(shape, dtype))
    else:
      out.append((init_std * jax.random.normal(k, shape, jnp.float32)).astype(dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------
def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  """RMSNorm in float32, returned in x's dtype (as transformers does)."""
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return weight.astype(jnp.float32) * x32.astype(x.dtype).astype(jnp.float32)


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding, half-split convention of the HF Llama/Qwen2 checkpoints.

  x: [B,T,heads,K]; positions: [B,T] int.
  """
  k = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, k, 2, dtype=jnp.float32) / k))  # [K/2]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B,T,K/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def attention_mask(kv_mask: jax.Array, query_slots: jax.Array) -> jax.Array:
  """Causal-and-valid mask [B,1,1,T,S]: query in slot i sees valid keys in slots <= i.

  kv_mask: [B,S] bool; query_slots: [T] int.
  """
  key_slots = jnp.arange(kv_mask.shape[1])
  causal = key_slots[None, :] <= query_slots[:, None]  # [T,S]
  return (causal[None] & kv_mask[:, None, :])[:, None, None]


def attend(q, k, v, mask):
  """Grouped-query attention. q: [B,T,H,K]; k, v: [B,S,N,K]; mask: [B,1,1,T,S] -> [B,T,H,K]."""
  b, t, h, d = q.shape
  n = k.shape[2]
  q = q.reshape(b, t, n, h // n, d)
  scores = jnp.einsum("btngk,bsnk->bngts", q, k, preferred_element_type=jnp.float32)
  scores = scores * (d ** -0.5)
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bngts,bsnk->btngk", probs, v)
  return out.reshape(b, t, h, d)


# jax.nn.dot_product_attention's `implementation` for each ModelConfig.attention that calls it.
# (The tests map "cudnn" to jax's "xla" implementation to run the same call on a CPU.)
DOT_PRODUCT_ATTENTION = {"cudnn": "cudnn"}


def dot_product_attention(q, k, v, kv_mask, *, implementation: str, causal_only: bool = False):
  """Causal grouped-query self-attention through jax.nn.dot_product_attention.

  q: [B,T,H,K]; k, v: [B,T,N,K]; kv_mask: [B,T] bool -> [B,T,H,K]. `causal_only`: each row's
  valid tokens are a prefix (right padding), so a valid query's causal window holds only valid
  keys and the causal mask is the whole mask (cuDNN's fastest mode: is_causal, no mask). Else
  the key mask goes in as a boolean [B,1,T,S] mask (cuDNN adds it as a bias) on top of
  is_causal. Outputs at padded query slots are unspecified (finite); they differ between
  implementations and reach no valid position.
  """
  mask = None
  if not causal_only:
    b, t = kv_mask.shape
    mask = jnp.broadcast_to(kv_mask.astype(bool)[:, None, None, :], (b, 1, t, t))
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True,
                                      implementation=implementation)


def _cuda_gpu() -> bool:
  if jax.default_backend() != "gpu":
    return False
  try:
    return "cuda" in jax.devices()[0].client.platform_version.lower()
  except AttributeError:  # no client object: assume CUDA, the only GPU backend with cuDNN
    return True


def attention_implementation(config: ModelConfig, length: int, causal_only: bool) -> str:
  """The attention that `forward` (no cache) runs for `config.attention`: "xla" or "cudnn".

  "auto" takes cuDNN on a CUDA GPU for bf16/fp16 compute and a head dim that is a multiple of 8
  up to 128; with a padding mask (not `causal_only`) also only for an even `length` (cuDNN's
  backward with a bias needs one). Everywhere else (CPU, TPU, float32, the tests) XLA.
  """
  if config.attention != "auto":
    return config.attention
  if not _cuda_gpu() or config.dtype not in ("bfloat16", "float16"):
    return "xla"
  if config.head_dim % 8 or config.head_dim > 128:
    return "xla"
  if not causal_only and length % 2:
    return "xla"
  return "cudnn"


def self_attention(q, k, v, kv_mask, *, implementation: str, causal_only: bool = False):
  """Causal self-attention over a whole sequence (no cache) with `implementation`.

  q: [B,T,H,K]; k, v: [B,T,N,K]; kv_mask: [B,T] bool -> [B,T,H,K]. "xla" is `attend` under
  the full causal-and-valid mask whatever `causal_only` says (same values at valid slots).
  """
  if implementation == "xla":
    return attend(q, k, v, attention_mask(kv_mask.astype(bool), jnp.arange(q.shape[1])))
  if implementation in DOT_PRODUCT_ATTENTION:
    return dot_product_attention(q, k, v, kv_mask, causal_only=causal_only,
                                 implementation=DOT_PRODUCT_ATTENTION[implementation])
  raise ValueError(f"attention implementation {implementation!r}; expected 'xla' or "
                   f"{sorted(DOT_PRODUCT_ATTENTION)}")


def mlp(x, p, dtype):
  gate = jnp.einsum("btd,df->btf", x, p["w_gate"].astype(dtype))
  up = jnp.einsum("btd,df->btf", x, p["w_up"].astype(dtype))
  return jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, p["w_down"].astype(dtype))


def _block(x, p, layer_cache, *, config, positions, mask, cache_index, attention=None):
  """One transformer block. layer_cache: None or (k [B,S,N,K], v [B,S,N,K]).

  attention: None (attend under `mask`) or, without a cache, a function (q, k, v) -> out
  that runs the self-attention (`self_attention` with the forward's implementation)."""
  dtype = config.compute_dtype
  h = rms_norm(x, p["attn_norm"], config.rms_norm_eps).astype(dtype)
  q = jnp.einsum("btd,dhk->bthk", h, p["wq"].astype(dtype))
  k = jnp.einsum("btd,dnk->btnk", h, p["wk"].astype(dtype))
  v = jnp.einsum("btd,dnk->btnk", h, p["wv"].astype(dtype))
  if config.qkv_bias:
    q, k, v = q + p["bq"].astype(dtype), k + p["bk"].astype(dtype), v + p["bv"].astype(dtype)
  q = rotary(q, positions, config.rope_theta)
  k = rotary(k, positions, config.rope_theta)
  if layer_cache is not None:
    ck, cv = layer_cache
    ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, cache_index, 0, 0))
    cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, cache_index, 0, 0))
    layer_cache = (ck, cv)
    k, v = ck.astype(dtype), cv.astype(dtype)
  attn = attend(q, k, v, mask) if attention is None else attention(q, k, v)
  x = x + jnp.einsum("bthk,hkd->btd", attn, p["wo"].astype(dtype))
  h = rms_norm(x, p["mlp_norm"], config.rms_norm_eps).astype(dtype)
  x = x + mlp(h, p, dtype)
  return x, layer_cache


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def forward(params: Params, tokens: jax.Array, config: ModelConfig, *, positions: jax.Array,
            kv_mask: jax.Array, cache: Optional[KVCache] = None, cache_index=0,
            remat: str = "none", return_hidden: bool = False, causal_only: bool = False):
  """Runs the decoder.

  Args:
    tokens: [B,T] int token ids.
    positions: [B,T] int RoPE positions (count of valid tokens before each one).
    kv_mask: [B,S] bool, valid key slots. Without a cache S == T; with one, S is the cache
      length and the mask already covers the T slots being written.
    cache: optional KV cache {"k","v": [L,B,S,N,K]}; the new keys/values are written at slots
      [cache_index, cache_index + T).
    remat: rematerialization of each block in the backward pass: none | full | dots.
    return_hidden: return the final normed hidden states [B,T,D] instead of logits.
    causal_only: (no cache) every row's valid tokens are a prefix (right padding): padded keys
      follow every valid query, so the causal mask alone gives the same values at valid slots
      and cuDNN runs without a mask. Wrong (not detected) for left-padded or holed masks.

  Without a cache the attention is `config.attention` (`attention_implementation`); with one
  it is always `attend` (prefill of the sampler).

  Returns:
    (logits [B,T,V] float32 or hidden [B,T,D], updated cache or None).
  """
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r}; expected one of {sorted(REMAT_POLICIES)}")
  dtype = config.compute_dtype
  if causal_only and cache is not None:
    raise ValueError("causal_only applies to a forward without a KV cache")
  x = jnp.take(params["embed"], tokens, axis=0).astype(dtype)
  mask, attention = None, None
  if cache is None:
    impl = attention_implementation(config, tokens.shape[1], causal_only)
    if impl == "xla":  # one mask for all layers, built outside the scan as before
      mask = attention_mask(kv_mask, jnp.arange(tokens.shape[1]))
    else:
      attention = lambda q, k, v: self_attention(  # noqa: E731
          q, k, v, kv_mask, implementation=impl, causal_only=causal_only)
  else:
    mask = attention_mask(kv_mask, cache_index + jnp.arange(tokens.shape[1]))

  def body(carry, layer_params):
    x, ck, cv, i = carry
    layer_cache = None
    if cache is not None:
      layer_cache = (ck[i], cv[i])
    x, layer_cache = _block(x, layer_params, layer_cache, config=config, positions=positions,
                            mask=mask, cache_index=cache_index, attention=attention)
    if cache is not None:
      ck = jax.lax.dynamic_update_index_in_dim(ck, layer_cache[0], i, 0)
      cv = jax.lax.dynamic_update_index_in_dim(cv, layer_cache[1], i, 0)
    return (x, ck, cv, i + 1), None

  if remat != "none":
    body = jax.checkpoint(body, policy=REMAT_POLICIES[remat], prevent_cse=False)
  ck = cache["k"] if cache is not None else jnp.zeros((), dtype)
  cv = cache["v"] if cache is not None else jnp.zeros((), dtype)
  (x, ck, cv, _), _ = jax.lax.scan(body, (x, ck, cv, jnp.int32(0)), params["layers"])
  new_cache = {"k": ck, "v": cv} if cache is not None else None
  x = rms_norm(x, params["final_norm"], config.rms_norm_eps).astype(dtype)
  if return_hidden:
    return x, new_cache
  return unembed(params, x, config), new_cache


def unembed(params: Params, hidden: jax.Array, config: ModelConfig) -> jax.Array:
  """Hidden [...,D] -> float32 logits [...,V] (tied embedding or lm_head)."""
  dtype = config.compute_dtype
  if config.tie_embeddings:
    w = params["embed"].astype(dtype)
    logits = jnp.einsum("...d,vd->...v", hidden, w, preferred_element_type=jnp.float32)
  else:
    w = params["lm_head"].astype(dtype)
    logits = jnp.einsum("...d,dv->...v", hidden, w, preferred_element_type=jnp.float32)
  return logits


# ----------------------------------------------------------------------------------------------
# Decoding one token: the inner loop of sampling
# ----------------------------------------------------------------------------------------------
# Decoding is memory-bound: each step should read every weight and the filled KV cache once.
# The scanned `forward` reads layer i's weights and cache with dynamic slices of the stacked
# arrays, which XLA materializes as copies (several times the cache's bytes per step on a GPU,
# measured in benchmarks/sampler.py). The decode step therefore runs the layers as an unrolled
# loop over per-layer buffers: weights unstacked once per `generate` call (`decode_weights`),
# and a cache of one [R,N,S,K] array per layer, written in place at one slot per step. Heads come
# before slots so that both attention products are plain batched matmuls over (row, kv head).


def decode_weights(params: Params, config: ModelConfig) -> tuple[Params, list[Params]]:
  """The weights of `decode_step`, in the compute dtype, with q/k/v and gate/up fused.

  Returns (head, layers). head: the params without "layers", the embedding (and lm_head) cast
  to the compute dtype. layers: L dicts of attn_norm [D], w_qkv [D,N,G+2,K] (for each kv head:
  its G query heads, then its key, then its value, so a tensor-parallel split over kv heads
  stays local), b_qkv [N,G+2,K] (Qwen2), wo [H,K,D], mlp_norm [D], w_gate_up [D,2,F],
  w_down [F,D]; the matmul weights in the compute dtype (norm weights as stored: RMSNorm runs in
  float32). A copy of the weights: run it outside the decode loop, once per generation, so that
  float32 master weights are not converted again at every token.
  """
  dtype = config.compute_dtype
  n, g, k = config.num_kv_heads, config.num_heads // config.num_kv_heads, config.head_dim
  head = {name: (w.astype(dtype) if name in ("embed", "lm_head") else w)
          for name, w in params.items() if name != "layers"}
  layers = []
  for i in range(config.num_layers):
    p = jax.tree.map(lambda x, i=i: x[i], params["layers"])
    d = p["wq"].shape[0]
    layer = {
        "attn_norm": p["attn_norm"], "mlp_norm": p["mlp_norm"],
        "wo": p["wo"].astype(dtype), "w_down": p["w_down"].astype(dtype),
        "w_qkv": jnp.concatenate([p["wq"].reshape(d, n, g, k), p["wk"][:, :, None],
                                  p["wv"][:, :, None]], axis=2).astype(dtype),
        "w_gate_up": jnp.stack([p["w_gate"], p["w_up"]], axis=1).astype(dtype),
    }
    if config.qkv_bias:
      layer["b_qkv"] = jnp.concatenate([p["bq"].reshape(n, g, k), p["bk"][:, None],
                                        p["bv"][:, None]], axis=1).astype(dtype)
    layers.append(layer)
  return head, layers


ATTENTION_BLOCK = 64  # keys per program of ragged_decode_attention; S must be a multiple


def ragged_decode_attention(q, ck, cv, start, end):
  """Attention of one query per row over the slots [start, end) of its cache, reading only the
  blocks of `ATTENTION_BLOCK` slots that hold some of them: the Pallas flash-decoding kernel of
  `jax.experimental.pallas.ops.gpu.decode_attention` (Triton on GPU, interpreted elsewhere).

  q: [R,N,G,K]; ck, cv: [R,N,S,K] with S a multiple of ATTENTION_BLOCK; start, end: [R] int32.
  q is cast to the cache's dtype (casting the cache instead would copy all of it every step).
  Returns [R,N,G,K] in q's dtype. A row needs start < end."""
  from jax.experimental.pallas.ops.gpu import decode_attention  # pylint: disable=import-outside-toplevel
  r, n, g, k = q.shape
  s = ck.shape[2]
  if s % ATTENTION_BLOCK:
    raise ValueError(f"cache length {s} is not a multiple of ATTENTION_BLOCK={ATTENTION_BLOCK}")
  # gqa takes [R,S,N,K] and swaps back to [R,N,S,K] inside: the two transposes cancel.
  out = decode_attention.gqa(q.reshape(r, n * g, k).astype(ck.dtype), ck.swapaxes(1, 2),
                             cv.swapaxes(1, 2),
                             start_idx=start, kv_seq_len=end, block_k=ATTENTION_BLOCK,
                             k_splits=s // ATTENTION_BLOCK,
                             interpret=jax.default_backend() != "gpu")
  return out.reshape(r, n, g, k).astype(q.dtype)


_NO_KERNELS = decode_kernels.LayerKernels()


def decode_step(head: Params, layers: list[Params], config: ModelConfig, token: jax.Array,
                position: jax.Array, kv_mask: jax.Array, cache: tuple, slot,
                kv_range: Optional[tuple[jax.Array, jax.Array]] = None, kernels=None):
  """One token per row through the decoder, reading and writing a per-layer KV cache.

  Args:
    head, layers: `decode_weights(params, config)` (matmul weights in the compute dtype).
    token, position: [R] int, the token fed at slot `slot` and its RoPE position.
    kv_mask: [R,S] bool, valid slots, `slot` included.
    cache: L pairs (k, v), each [R,N,S,K].
    kv_range: optional ([R] start, [R] end): the valid slots are exactly [start, end) (left-
      padded prompts); attention then reads only those (`ragged_decode_attention`) instead of
      all S slots under `kv_mask`.
    kernels: optional `decode_kernels.LayerKernels`: which of each layer's four matmuls run as a
      Pallas kernel with its elementwise neighbours fused (the norm, bias, silu * up, residual
      add; same numerics up to one rounding of the epilogue); the others as XLA writes them.

  Returns:
    (logits [R,V] float32, the cache with slot `slot` written).
  """
  dtype = config.compute_dtype
  r, k = token.shape[0], config.head_dim
  n, g = config.num_kv_heads, config.num_heads // config.num_kv_heads
  x = jnp.take(head["embed"], token[:, None], axis=0)  # [R,1,D]
  positions = position[:, None]
  valid = kv_mask[:, None, None, :]  # [R,1,1,S]
  new_cache = []
  eps = config.rms_norm_eps
  fused = kernels or _NO_KERNELS
  for p, (ck, cv) in zip(layers, cache):
    if fused.qkv is not None:
      w = p["w_qkv"]
      bias = p["b_qkv"].reshape(-1) if config.qkv_bias else None
      qkv = decode_kernels.norm_matmul(x[:, 0], p["attn_norm"], w.reshape(w.shape[0], -1), eps,
                                       bias=bias, **fused.qkv.kwargs())
      qkv = qkv.reshape(r, 1, *w.shape[1:])
    else:
      h = rms_norm(x, p["attn_norm"], eps).astype(dtype)
      qkv = jnp.einsum("btd,dngk->btngk", h, p["w_qkv"])  # [R,1,N,G+2,K]
      if config.qkv_bias:
        qkv = qkv + p["b_qkv"]
    q = rotary(qkv[:, :, :, :g].reshape(r, 1, n * g, k), positions, config.rope_theta)
    kk = rotary(qkv[:, :, :, g], positions, config.rope_theta)  # [R,1,N,K]
    ck = jax.lax.dynamic_update_slice(ck, kk.swapaxes(1, 2).astype(ck.dtype), (0, 0, slot, 0))
    cv = jax.lax.dynamic_update_slice(cv, qkv[:, :, :, g + 1].swapaxes(1, 2).astype(cv.dtype),
                                      (0, 0, slot, 0))
    new_cache.append((ck, cv))
    q = q.reshape(r, n, g, k)
    if kv_range is not None:
      attn = ragged_decode_attention(q.astype(dtype), ck, cv, *kv_range).reshape(r, 1, n * g, k)
    else:
      scores = jnp.einsum("rngk,rnsk->rngs", q, ck.astype(dtype),
                          preferred_element_type=jnp.float32) * (k ** -0.5)
      scores = jnp.where(valid, scores, jnp.finfo(jnp.float32).min)
      probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
      attn = jnp.einsum("rngs,rnsk->rngk", probs, cv.astype(dtype)).reshape(r, 1, n * g, k)
    if fused.wo is not None:
      wo = p["wo"]
      x = decode_kernels.matmul_residual(attn.reshape(r, -1), wo.reshape(-1, wo.shape[-1]),
                                         x[:, 0], **fused.wo.kwargs(split=True))[:, None]
    else:
      x = x + jnp.einsum("bthk,hkd->btd", attn, p["wo"])
    if fused.gate_up is not None:
      act = decode_kernels.norm_gate_up(x[:, 0], p["mlp_norm"], p["w_gate_up"], eps,
                                        **fused.gate_up.kwargs())[:, None]
    else:
      h = rms_norm(x, p["mlp_norm"], eps).astype(dtype)
      gate_up = jnp.einsum("btd,dcf->btcf", h, p["w_gate_up"])
      act = jax.nn.silu(gate_up[:, :, 0]) * gate_up[:, :, 1]
    if fused.down is not None:
      x = decode_kernels.matmul_residual(act[:, 0], p["w_down"], x[:, 0],
                                         **fused.down.kwargs(split=True))[:, None]
    else:
      x = x + jnp.einsum("btf,fd->btd", act, p["w_down"])
  x = rms_norm(x, head["final_norm"], config.rms_norm_eps).astype(dtype)
  return unembed(head, x[:, 0], config), tuple(new_cache)


def init_cache(config: ModelConfig, batch: int, length: int, dtype=None) -> KVCache:
  """Zero KV cache {"k","v": [L,B,S,N,K]} in the compute dtype (or `dtype`)."""
  shape = (config.num_layers, batch, length, config.num_kv_heads, config.head_dim)
  dtype = dtype or config.compute_dtype
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """RoPE positions [B,T] from a validity mask: number of valid tokens before each slot."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def token_log_probs(logits: jax.Array, targets: jax.Array, temperature: float = 1.0):
  """log softmax(logits / temperature)[targets] and the entropy, both [...] float32."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
  return picked, entropy


# ----------------------------------------------------------------------------------------------
# Log-probs of given tokens without [B,T,V] float32 logits
# ----------------------------------------------------------------------------------------------
# Bytes of float32 logits per chunk of `fused_token_log_probs` when no chunk size is given. The
# backward holds about three such arrays at once (logits, probabilities, their gradient).
FUSED_CHUNK_BYTES = 1 << 30


def fused_chunk_size(rows: int, length: int, vocab: int,
                     budget_bytes: int = FUSED_CHUNK_BYTES) -> int:
  """Positions per chunk so that rows * chunk * vocab float32 logits fit `budget_bytes` (at
  least 1), spread evenly over the chunks that `length` then needs (least padding)."""
  most = max(1, min(length, budget_bytes // (4 * rows * vocab)))
  chunks = -(-length // most)
  return -(-length // chunks)


def _unembedding(params: Params, config: ModelConfig) -> jax.Array:
  """The unembedding matrix in the compute dtype: embed [V,D] if tied, else lm_head [D,V]."""
  name = "embed" if config.tie_embeddings else "lm_head"
  return params[name].astype(config.compute_dtype)


def _chunk_logits(h, w, vocab_major: bool):
  """h: [B,C,D], w: [V,D] (vocab_major) or [D,V] -> float32 logits [B,C,V]."""
  spec = "bcd,vd->bcv" if vocab_major else "bcd,dv->bcv"
  return jnp.einsum(spec, h, w, preferred_element_type=jnp.float32)


def _chunk_stats(h, w, targets, temperature, vocab_major):
  """log p(target), entropy and log-normalizer [B,C] of one chunk, with z = logits / T."""
  z = _chunk_logits(h, w, vocab_major) / temperature
  lse = jax.nn.logsumexp(z, axis=-1)
  logp = z - lse[..., None]
  picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
  return picked, entropy, lse


def _to_chunks(x, chunk: int):
  """[B,T,...] -> [n,B,chunk,...], T zero-padded to n * chunk."""
  b, t = x.shape[:2]
  pad = (-t) % chunk
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  return x.reshape(b, -1, chunk, *x.shape[2:]).swapaxes(0, 1)


def _from_chunks(x, length: int):
  """[n,B,chunk,...] -> [B,length,...]."""
  x = x.swapaxes(0, 1)
  return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :length]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _fused_log_probs(hidden, w, targets, temperature, chunk, vocab_major):
  out, _ = _fused_log_probs_fwd(hidden, w, targets, temperature, chunk, vocab_major)
  return out


def _fused_log_probs_fwd(hidden, w, targets, temperature, chunk, vocab_major):
  t = hidden.shape[1]
  picked, entropy, lse = jax.lax.map(
      lambda a: _chunk_stats(a[0], w, a[1], temperature, vocab_major),
      (_to_chunks(hidden, chunk), _to_chunks(targets, chunk)))
  picked, entropy, lse = (_from_chunks(x, t) for x in (picked, entropy, lse))
  return (picked, entropy), (hidden, w, targets, entropy, lse)


def _fused_log_probs_bwd(temperature, chunk, vocab_major, res, cotangents):
  """Recomputes each chunk's logits; d logp(y)/dz = onehot(y) - p and
  dH/dz = -p (log p + H) with z = logits / T, so d/dlogits is that over T. The logits' gradient
  is cast to the compute dtype for the two matmuls (bf16 on GPU, as the unfused path's own
  matmul inputs); the weight gradient accumulates over chunks in float32."""
  hidden, w, targets, entropy, lse = res
  g_picked, g_entropy = cotangents
  t = hidden.shape[1]

  def one(dw, a):
    h, tgt, ent, lz, gp, ge = a
    logp = _chunk_logits(h, w, vocab_major) / temperature - lz[..., None]
    p = jnp.exp(logp)
    dz = -p * (gp[..., None] + ge[..., None] * (logp + ent[..., None]))
    dz = dz + gp[..., None] * (jnp.arange(logp.shape[-1]) == tgt[..., None])
    dlogits = (dz / temperature).astype(h.dtype)
    if vocab_major:
      dh = jnp.einsum("bcv,vd->bcd", dlogits, w, preferred_element_type=jnp.float32)
      dw = dw + jnp.einsum("bcv,bcd->vd", dlogits, h, preferred_element_type=jnp.float32)
    else:
      dh = jnp.einsum("bcv,dv->bcd", dlogits, w, preferred_element_type=jnp.float32)
      dw = dw + jnp.einsum("bcd,bcv->dv", h, dlogits, preferred_element_type=jnp.float32)
    return dw, dh.astype(h.dtype)

  xs = tuple(_to_chunks(x, chunk) for x in (hidden, targets, entropy, lse,
                                             g_picked.astype(jnp.float32),
                                             g_entropy.astype(jnp.float32)))
  dw, dh = jax.lax.scan(one, jnp.zeros(w.shape, jnp.float32), xs)
  return _from_chunks(dh, t), dw.astype(w.dtype), None


_fused_log_probs.defvjp(_fused_log_probs_fwd, _fused_log_probs_bwd)


def fused_token_log_probs(params: Params, hidden: jax.Array, targets: jax.Array,
                          config: ModelConfig, *, temperature: float = 1.0,
                          chunk_size: Optional[int] = None):
  """`token_log_probs(unembed(params, hidden, config), targets, temperature)` without the
  [B,T,V] float32 logits: the unembedding, log-softmax, gather and entropy run over chunks of
  `chunk_size` positions (all B rows each; default `fused_chunk_size`), and the backward
  recomputes each chunk's logits (a custom VJP) to return the gradients w.r.t. `hidden` and the
  unembedding weight (tied embedding or lm_head). Both outputs carry gradients.

  hidden: [B,T,D] in the compute dtype; targets: [B,T] int. Returns (logp, entropy) [B,T]
  float32.
  """
  b, t = targets.shape
  chunk = chunk_size or fused_chunk_size(b, t, config.vocab_size)
  chunk = max(1, min(int(chunk), t))
  return _fused_log_probs(hidden, _unembedding(params, config), targets.astype(jnp.int32),
                          float(temperature), chunk, config.tie_embeddings)


def sequence_log_probs(params: Params, tokens: jax.Array, mask: jax.Array, config: ModelConfig,
                       *, temperature: float = 1.0, remat: str = "none",
                       chunk_size: Optional[int] = None, causal_only: bool = False,
                       fused: Optional[bool] = None):
  """Log-prob of each next token of `tokens` under the policy, and the policy's entropy.

  tokens, mask: [B,T]. Returns (logp [B,T-1], entropy [B,T-1]) where entry t scores token t+1
  given tokens <= t. `causal_only`: the valid tokens of every row are a prefix (right padding;
  see `forward`). `fused` (default config.fused_logprobs): `fused_token_log_probs`, chunks of
  `chunk_size` positions or sized by `fused_chunk_size` when None. Unfused: `chunk_size`
  unembeds in checkpointed chunks of that many positions, None materializes the [B,T,V]
  float32 logits at once.
  """
  positions = positions_from_mask(mask)
  hidden, _ = forward(params, tokens, config, positions=positions, kv_mask=mask.astype(bool),
                      remat=remat, return_hidden=True, causal_only=causal_only)
  hidden, targets = hidden[:, :-1], tokens[:, 1:]
  if config.fused_logprobs if fused is None else fused:
    return fused_token_log_probs(params, hidden, targets, config, temperature=temperature,
                                 chunk_size=chunk_size)
  if chunk_size is None or chunk_size >= hidden.shape[1]:
    return token_log_probs(unembed(params, hidden, config), targets, temperature)
  t = hidden.shape[1]
  pad = (-t) % chunk_size
  hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
  targets = jnp.pad(targets, ((0, 0), (0, pad)))
  n = hidden.shape[1] // chunk_size
  hs = hidden.reshape(hidden.shape[0], n, chunk_size, -1).swapaxes(0, 1)
  ts = targets.reshape(targets.shape[0], n, chunk_size).swapaxes(0, 1)

  @jax.checkpoint
  def one(h, tgt):
    return token_log_probs(unembed(params, h, config), tgt, temperature)

  logp, ent = jax.lax.map(lambda a: one(*a), (hs, ts))
  logp = logp.swapaxes(0, 1).reshape(hidden.shape[0], -1)[:, :t]
  ent = ent.swapaxes(0, 1).reshape(hidden.shape[0], -1)[:, :t]
  return logp, ent
