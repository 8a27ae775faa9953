"""Jitted autoregressive sampling with a KV cache: the rollout step of GRPO.

For each question q the policy samples a group of G outputs {o_1..o_G} (DeepSeek-R1 §2.2.1,
Eq. 1); the log-probs returned here are π_old(o_t | q, o_<t), which the GRPO ratio divides by.

Shapes: B prompts, G = `num_samples` completions per prompt, R = B*G rows, P prompt length
(left-padded), N = `max_new_tokens`, V vocab, S = P + N - 1 cache slots (the last sampled token is
never fed back, so it needs no slot).

Layout: one prefill forward over the B distinct prompts writes a cache of P slots; the cache and
the last-position logits are then `jnp.repeat`-ed G times along the batch (row b*G+g is sample g of
prompt b), split into one [R,N,S,K] array per layer and padded to S slots. Prefilling B rather
than R rows saves G-1 of every G prefill FLOPs, and the repeat is a single memory copy of the
prompt cache. The decode loop is a `jax.lax.while_loop` over fixed shapes that exits as soon as
every row is done; each iteration is `model.decode_step`, layers unrolled over per-layer
weights and cache buffers (why: see model.py).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import decode_kernels
from r1jax import model
from r1jax.config import ModelConfig, dtype_from_name


# ----------------------------------------------------------------------------------------------
# Configuration and outputs
# ----------------------------------------------------------------------------------------------
# The decode attention of every SamplingConfig that names none ("xla" or "ragged").
DEFAULT_ATTENTION = os.environ.get("R1JAX_SAMPLER_ATTENTION", "xla")
# The decode matmuls of every SamplingConfig that names none ("xla" or "pallas").
DEFAULT_KERNELS = os.environ.get("R1JAX_SAMPLER_KERNELS", "xla")


class StopStrings:
  """Stop strings matched on the generated text, whatever its token boundaries.

  A byte-level BPE tokenizer spells "</answer>" alone as ["</", "answer", ">"] but after a space as
  [" </", "answer", ">"], so matching token ids misses it; this matches the UTF-8 bytes of the
  text instead. Built once on the host from the bytes each token id adds to decoded text
  (`tokenizer.token_bytes()`); the decode loop then checks each sampled token with fixed shapes
  (`_text_stop_step`): it keeps the last W bytes of every row's generated text and asks whether
  a stop string ends inside the new token, either wholly inside it or starting in those W bytes.
  Only generated text counts: a stop string that begins in the prompt does not stop a row.

  Attributes:
    strings: the stop strings.
    width: W = max(longest stop string in UTF-8 bytes - 1, 1).
    table: [V, 2W + 1 + len(strings)] uint8 numpy, per token id: its first W bytes (zero-padded),
      its last W bytes (right-aligned), min(byte length, W), then per stop string 1 where the
      token holds the whole stop string. A token id >= V adds nothing.

  Hashable (a static part of SamplingConfig) by the strings and a digest of the table.
  """

  def __init__(self, strings: Sequence[str], token_bytes: Sequence[bytes]):
    strings = tuple(strings)
    for s in strings:
      if not isinstance(s, str) or not s:
        raise ValueError(f"stop strings must be non-empty str, got {strings!r}")
      if len(s.encode()) > 255:
        raise ValueError(f"stop string {s[:20]!r}... is longer than 255 bytes")
    if not strings:
      raise ValueError("StopStrings needs at least one stop string")
    self.strings = strings
    self.encoded = tuple(s.encode() for s in strings)
    self.width = max(max(len(b) for b in self.encoded) - 1, 1)
    self.table = _stop_table(self.encoded, tuple(token_bytes), self.width)
    self._key = (strings, hashlib.sha1(self.table.tobytes()).hexdigest())

  def __hash__(self):
    return hash(self._key)

  def __eq__(self, other):
    return isinstance(other, StopStrings) and self._key == other._key

  def __repr__(self):
    return f"StopStrings({self.strings!r}, vocab={self.table.shape[0]})"


@functools.lru_cache(maxsize=8)
def _stop_table(encoded: tuple[bytes, ...], token_bytes: tuple[bytes, ...], w: int) -> np.ndarray:
  """StopStrings.table: [V, 2W + 1 + len(encoded)] uint8 (see there)."""
  table = np.zeros((len(token_bytes), 2 * w + 1 + len(encoded)), np.uint8)
  sizes = np.array([len(b) for b in token_bytes], np.int64)
  flat = np.frombuffer(b"".join(token_bytes) + b"\0", np.uint8)
  starts = np.cumsum(sizes) - sizes
  for j in range(w):
    table[:, j] = np.where(j < sizes, flat[np.minimum(starts + j, len(flat) - 1)], 0)
    back = sizes - w + j  # byte j of the last W, right-aligned
    table[:, w + j] = np.where(back >= 0, flat[np.clip(starts + back, 0, len(flat) - 1)], 0)
  table[:, 2 * w] = np.minimum(sizes, w)
  for j, s in enumerate(encoded):
    table[:, 2 * w + 1 + j] = [s in b for b in token_bytes]
  table.setflags(write=False)
  return table


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to sample completions. Hashable: it is a static argument of the jitted `generate`.

  temperature 0 means greedy decoding (the returned log-probs then use temperature 1).
  top_k 0 and top_p 1 switch those filters off. Generation of a row stops after a token of
  `eos_ids`, after the last token of one of `stop_sequences` (token-id tuples matched against the
  generated tokens only), or after the token that completes one of `stop_strings` in the
  generated text (StopStrings); the stop tokens are kept in the output and counted in `lengths`.
  """

  max_new_tokens: int
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  num_samples: int = 1
  eos_ids: tuple[int, ...] = ()
  stop_sequences: tuple[tuple[int, ...], ...] = ()
  stop_strings: Optional[StopStrings] = None
  pad_id: int = 0
  # "xla": attention over the whole fixed-length cache under a mask. "ragged": only the filled
  # slots of each row, and of a finished row only its first slot (model.ragged_decode_attention,
  # a Pallas kernel; the cache is padded to a multiple of model.ATTENTION_BLOCK slots). 1.4-2.0x
  # faster per decode step at the 0.5B shape on an H200; checked there on random inputs only
  # (benchmarks/sampler.py --check, BENCHMARKS.md), not yet on a trained checkpoint, so it is
  # not the default. The default is DEFAULT_ATTENTION (the environment variable
  # R1JAX_SAMPLER_ATTENTION), so that every sampler of a run (rollouts, evaluations, rejection
  # sampling) can switch without a flag.
  attention: str = DEFAULT_ATTENTION
  # "xla": the decode step's weight matmuls as XLA compiles them (cuBLAS and small fusions).
  # "pallas": those whose shapes fit run as the Pallas kernels of r1jax.decode_kernels with their
  # norms, bias, activation and residual adds fused, blocks from decode_kernels.TUNED (measured
  # at the Qwen2.5-0.5B shape on an H200). Default DEFAULT_KERNELS (R1JAX_SAMPLER_KERNELS).
  kernels: str = DEFAULT_KERNELS

  def __post_init__(self):
    def is_int(x):
      return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

    if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={self.max_new_tokens!r} must be an int >= 1")
    if not np.isfinite(self.temperature) or self.temperature < 0:
      raise ValueError(f"temperature={self.temperature!r} must be finite and >= 0")
    if not is_int(self.top_k) or self.top_k < 0:
      raise ValueError(f"top_k={self.top_k!r} must be an int >= 0 (0 disables it)")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p={self.top_p!r} must be in (0, 1] (1 disables it)")
    if not is_int(self.num_samples) or self.num_samples < 1:
      raise ValueError(f"num_samples={self.num_samples!r} must be an int >= 1")
    if not is_int(self.pad_id) or self.pad_id < 0:
      raise ValueError(f"pad_id={self.pad_id!r} must be an int >= 0")
    if self.attention not in ("xla", "ragged"):
      raise ValueError(f"attention={self.attention!r} (R1JAX_SAMPLER_ATTENTION?); expected "
                       "'xla' or 'ragged'")
    if self.kernels not in ("xla", "pallas"):
      raise ValueError(f"kernels={self.kernels!r} (R1JAX_SAMPLER_KERNELS?); expected 'xla' or "
                       "'pallas'")
    # Lists would make the config unhashable; coerce to tuples.
    try:
      eos = tuple(int(i) for i in self.eos_ids)
    except (TypeError, ValueError) as e:
      raise ValueError(f"eos_ids={self.eos_ids!r} must be a sequence of ints") from e
    try:
      stops = tuple(tuple(int(i) for i in s) for s in self.stop_sequences)
    except (TypeError, ValueError) as e:
      raise ValueError(
          f"stop_sequences={self.stop_sequences!r} must be a sequence of int sequences") from e
    if any(len(s) == 0 for s in stops):
      raise ValueError(f"stop_sequences={self.stop_sequences!r} contains an empty sequence")
    if any(i < 0 for i in eos) or any(i < 0 for s in stops for i in s):
      raise ValueError("eos_ids and stop_sequences must hold non-negative token ids")
    if self.stop_strings is not None and not isinstance(self.stop_strings, StopStrings):
      raise ValueError(f"stop_strings={self.stop_strings!r} must be a StopStrings (built from the "
                       "tokenizer: trainer.text_stops) or None")
    object.__setattr__(self, "eos_ids", eos)
    object.__setattr__(self, "stop_sequences", stops)
    object.__setattr__(self, "temperature", float(self.temperature))
    object.__setattr__(self, "top_p", float(self.top_p))


class SampleOutput(NamedTuple):
  """Completions of `generate`; row b*G+g is sample g of prompt b. R = B*G rows."""

  tokens: jax.Array         # [R,N] int32, pad_id after the end
  log_probs: jax.Array      # [R,N] float32, log softmax(logits/T) over the full vocab; 0 after end
  mask: jax.Array           # [R,N] bool, generated tokens up to and including EOS / stop
  lengths: jax.Array        # [R] int32, mask.sum(-1)
  truncated: jax.Array      # [R] bool, reached max_new_tokens without EOS / stop
  prompt_tokens: jax.Array  # [R,P] int32, the left-padded prompts repeated G times
  prompt_mask: jax.Array    # [R,P] bool


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, max_len: Optional[int] = None,
             truncate: bool = False):
  """Left-pads token-id prompts to one length (model.py's padding convention).

  Args:
    prompts: B non-empty sequences of token ids.
    pad_id: id written into the padding slots (masked out; must be a valid embedding row).
    max_len: P; defaults to the longest prompt. A longer prompt raises, or with `truncate=True`
      keeps its last max_len tokens.

  Returns:
    (tokens [B,P] int32, mask [B,P] bool).
  """
  prompts = [list(p) for p in prompts]
  if not prompts:
    raise ValueError("prompts is empty")
  for i, p in enumerate(prompts):
    if not p:
      raise ValueError(f"prompts[{i}] is empty")
  longest = max(len(p) for p in prompts)
  if max_len is None:
    max_len = longest
  if max_len < 1:
    raise ValueError(f"max_len={max_len} (max_prompt_length) must be >= 1")
  if longest > max_len:
    if not truncate:
      i = max(range(len(prompts)), key=lambda j: len(prompts[j]))
      raise ValueError(f"prompts[{i}] has {longest} tokens, more than max_prompt_length="
                       f"{max_len}; raise it or pass truncate=True")
    prompts = [p[-max_len:] for p in prompts]
  tokens = np.full((len(prompts), max_len), pad_id, np.int32)
  mask = np.zeros((len(prompts), max_len), bool)
  for i, p in enumerate(prompts):
    tokens[i, max_len - len(p):] = p
    mask[i, max_len - len(p):] = True
  return tokens, mask


# ----------------------------------------------------------------------------------------------
# One sampling step
# ----------------------------------------------------------------------------------------------
def _top_p_threshold(sorted_desc: jax.Array, top_p: float) -> jax.Array:
  """Smallest kept logit [...,1] of the top-p nucleus of logits sorted in descending order.

  Keeps the smallest prefix whose probability mass is >= top_p (as transformers' TopPLogitsWarper):
  a token is kept when the mass strictly before it is < top_p, so the first is always kept.
  """
  probs = jax.nn.softmax(sorted_desc, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  num_kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)  # >= 1
  return jnp.take_along_axis(sorted_desc, num_kept - 1, axis=-1)


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Top-k then top-p filtering: logits [...,V] with the removed entries set to -inf.

  Apply to temperature-scaled logits. Ties with the smallest kept logit are kept. top-k uses
  `jax.lax.top_k` (no full sort) and the top-p nucleus is then found among those k; only top-p
  without top-k sorts the whole vocabulary.
  """
  if top_k > 0 and top_k < logits.shape[-1]:
    kept = jax.lax.top_k(logits, top_k)[0]  # [...,k] descending
    threshold = kept[..., -1:]
    if top_p < 1.0:
      threshold = _top_p_threshold(kept, top_p)
  elif top_p < 1.0:
    threshold = _top_p_threshold(-jnp.sort(-logits, axis=-1), top_p)
  else:
    return logits
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def sample_token(key: jax.Array, logits: jax.Array, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0):
  """Samples one token per row.

  Args:
    logits: [R,V] float32 raw logits.
    temperature: 0 means argmax.

  Returns:
    (token [R] int32, log_prob [R] float32). The log-prob is under softmax(logits / temperature)
    over the FULL vocabulary, not the truncated one, so that it equals what the GRPO trainer
    recomputes from the same logits; temperature 0 scores with temperature 1.
  """
  logits = logits.astype(jnp.float32)
  if temperature == 0:
    token = jnp.argmax(logits, axis=-1)
    scaled = logits
  else:
    scaled = logits / temperature
    token = jax.random.categorical(key, filter_logits(scaled, top_k, top_p), axis=-1)
  token = token.astype(jnp.int32)
  logp = jax.nn.log_softmax(scaled, axis=-1)
  return token, jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------
class _State(NamedTuple):
  step: jax.Array       # [] int32, index of the token sampled next
  logits: jax.Array     # [R,V] float32, logits for token `step`
  cache: tuple          # L pairs (k, v) [R,N,S,K] (model.decode_step)
  kv_mask: jax.Array    # [R,S] bool
  tokens: jax.Array     # [R,N] int32
  log_probs: jax.Array  # [R,N] float32
  done: jax.Array       # [R] bool
  lengths: jax.Array    # [R] int32, tokens written so far (stop token included)
  history: jax.Array    # [R,M] int32, last M generated tokens (M = longest stop sequence)
  text_tail: jax.Array  # [R,W] int32, last W bytes of the generated text, -1 before its start
  last: jax.Array       # [R] int32, last sampled token (fed to the next decode step)


def _stop_hit(history: jax.Array, stop_sequences) -> jax.Array:
  """[R] bool: the generated tokens end with one of the stop sequences. history: [R,M]."""
  hit = jnp.zeros(history.shape[:1], bool)
  for seq in stop_sequences:  # static and few
    tail = history[:, history.shape[1] - len(seq):]
    hit |= jnp.all(tail == jnp.asarray(seq, jnp.int32), axis=-1)
  return hit


def _text_stop_step(text_tail: jax.Array, token: jax.Array, stops: StopStrings):
  """Appends `token` [R] to the text kept in `text_tail` [R,W] int32 (bytes, -1 = none).

  Returns (hit [R] bool: a stop string ends inside the new token's bytes, new text_tail [R,W]).
  """
  w = stops.width
  row = jnp.take(jnp.asarray(stops.table), token, axis=0, mode="fill", fill_value=0)
  row = row.astype(jnp.int32)
  head, last, size, inside = row[:, :w], row[:, w:2 * w], row[:, 2 * w], row[:, 2 * w + 1:]
  hit = jnp.any(inside > 0, axis=-1)  # a stop string wholly inside the new token
  both = jnp.concatenate([text_tail, head], axis=1)  # [R,2W]; head is valid up to `size`
  for s in stops.encoded:  # static and few
    m, target = len(s), jnp.asarray(list(s), jnp.int32)
    for k in range(m - 1):  # ends at byte k of the new token and starts before it
      window = both[:, w + k + 1 - m:w + k + 1]
      hit |= jnp.all(window == target, axis=-1) & (k < size)
  shifted = jnp.take_along_axis(both, size[:, None] + jnp.arange(w)[None, :], axis=1)
  return hit, jnp.where((size >= w)[:, None], last, shifted)


def _sample_and_record(state: _State, key: jax.Array, sampling: SamplingConfig) -> _State:
  """Samples token `state.step` from `state.logits` and writes it for the rows not yet done."""
  t = state.step
  token, logp = sample_token(jax.random.fold_in(key, t), state.logits, sampling.temperature,
                             sampling.top_k, sampling.top_p)
  active = ~state.done
  tokens = state.tokens.at[:, t].set(jnp.where(active, token, sampling.pad_id))
  log_probs = state.log_probs.at[:, t].set(jnp.where(active, logp, 0.0))
  history, text_tail = state.history, state.text_tail
  stopped = jnp.zeros_like(active)
  if sampling.eos_ids:
    stopped |= jnp.isin(token, jnp.asarray(sampling.eos_ids, jnp.int32))
  if sampling.stop_sequences:
    history = jnp.concatenate([history[:, 1:], token[:, None]], axis=1)
    stopped |= _stop_hit(history, sampling.stop_sequences)
  if sampling.stop_strings is not None:
    hit, text_tail = _text_stop_step(text_tail, token, sampling.stop_strings)
    stopped |= hit
  return state._replace(tokens=tokens, log_probs=log_probs, done=state.done | (active & stopped),
                        lengths=state.lengths + active.astype(jnp.int32), history=history,
                        text_tail=text_tail, last=token)


def _generate(params, config: ModelConfig, prompt_tokens, prompt_mask, key,
              sampling: SamplingConfig, cache_dtype=None, cache_sharding=None) -> SampleOutput:
  b, p = prompt_tokens.shape
  g, n = sampling.num_samples, sampling.max_new_tokens
  r, s = b * g, p + n - 1
  ragged = sampling.attention == "ragged"
  if ragged:  # slots past p + n - 1 are never valid: the kernel skips their blocks
    s = -(-s // model.ATTENTION_BLOCK) * model.ATTENTION_BLOCK
  prompt_tokens = prompt_tokens.astype(jnp.int32)
  prompt_mask = prompt_mask.astype(bool)

  # Prefill the B distinct prompts once; only the last slot's logits are unembedded (the full
  # [B,P,V] float32 logits would be gigabytes for a 150k vocabulary).
  cache = model.init_cache(config, b, p, cache_dtype)
  hidden, cache = model.forward(params, prompt_tokens, config,
                                positions=model.positions_from_mask(prompt_mask),
                                kv_mask=prompt_mask, cache=cache, cache_index=0,
                                return_hidden=True)
  logits = model.unembed(params, hidden[:, -1], config)  # [B,V]

  def constrain(x):  # XLA would otherwise replicate the cache over the data devices.
    return x if cache_sharding is None else jax.lax.with_sharding_constraint(x, cache_sharding)

  def per_layer(x):  # [L,B,P,N,K] -> L arrays [R,N,S,K]; row b*G+g is a copy of row b.
    x = jnp.repeat(x, g, axis=1).transpose(0, 1, 3, 2, 4)
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, s - p), (0, 0)))
    return [constrain(x[i]) for i in range(config.num_layers)]

  head, layers = model.decode_weights(params, config)  # once, outside the decode loop
  kernels = decode_kernels.tuned(r, config) if sampling.kernels == "pallas" else None
  prompt_tokens = jnp.repeat(prompt_tokens, g, axis=0)
  prompt_mask = jnp.repeat(prompt_mask, g, axis=0)
  prompt_lengths = jnp.sum(prompt_mask, axis=-1, dtype=jnp.int32)  # [R]
  state = _State(
      step=jnp.int32(0),
      logits=jnp.repeat(logits, g, axis=0),
      cache=tuple(zip(per_layer(cache["k"]), per_layer(cache["v"]))),
      kv_mask=jnp.pad(prompt_mask, ((0, 0), (0, s - p))),
      tokens=jnp.full((r, n), sampling.pad_id, jnp.int32),
      log_probs=jnp.zeros((r, n), jnp.float32),
      done=jnp.zeros((r,), bool),
      lengths=jnp.zeros((r,), jnp.int32),
      history=jnp.full((r, max([len(q) for q in sampling.stop_sequences], default=1)), -1,
                       jnp.int32),
      text_tail=jnp.full((r, 1 if sampling.stop_strings is None else sampling.stop_strings.width),
                         -1, jnp.int32),
      last=jnp.zeros((r,), jnp.int32),
  )
  state = _sample_and_record(state, key, sampling)

  def cond(state: _State):
    return (state.step + 1 < n) & ~jnp.all(state.done)

  def body(state: _State) -> _State:
    # Feed token `step` (slot P+step) and sample token `step+1`. Rows already done still run
    # (fixed shapes) on their last token; their outputs are discarded by _sample_and_record.
    t = state.step
    slot = p + t
    kv_mask = jax.lax.dynamic_update_slice(state.kv_mask, jnp.ones((r, 1), bool), (0, slot))
    kv_range = None
    if ragged:  # [start, end) of each row; a finished row reads its first slot's block only
      start = p - prompt_lengths
      kv_range = (start, jnp.where(state.done, start + 1, slot + 1))
    logits, cache = model.decode_step(head, layers, config, state.last, prompt_lengths + t,
                                      kv_mask, state.cache, slot, kv_range=kv_range,
                                      kernels=kernels)
    cache = tuple((constrain(k), constrain(v)) for k, v in cache)
    state = state._replace(step=t + 1, logits=logits, cache=cache, kv_mask=kv_mask)
    return _sample_and_record(state, key, sampling)

  state = jax.lax.while_loop(cond, body, state)
  mask = jnp.arange(n)[None, :] < state.lengths[:, None]
  return SampleOutput(tokens=state.tokens, log_probs=state.log_probs, mask=mask,
                      lengths=state.lengths, truncated=~state.done, prompt_tokens=prompt_tokens,
                      prompt_mask=prompt_mask)



def parse_compiler_options(spec: str) -> dict:
  """'xla_gpu_autotune_level=4,xla_gpu_enable_triton_gemm=false' -> {name: value} (ints and
  true/false parsed; '' -> {}); raises naming the bad entry."""
  out = {}
  for item in filter(None, (x.strip() for x in spec.split(","))):
    name, sep, value = item.partition("=")
    if not sep or not name.strip() or not value.strip():
      raise ValueError(f"R1JAX_SAMPLER_XLA_OPTIONS: {item!r} is not name=value")
    value = value.strip()
    if value.lower() in ("true", "false"):
      out[name.strip()] = value.lower() == "true"
    else:
      try:
        out[name.strip()] = int(value)
      except ValueError:
        out[name.strip()] = value
  return out


# XLA options of every sampling program: GEMM autotuning off on GPU, and cuBLAS instead of
# XLA's Triton GEMMs. Measured with jax 0.11.2 on one H200 (docs/performance.md, BENCHMARKS.md):
# - 2026-12-01: with autotuning on, a lone process's evaluation program (1,024 rows, T 0.6, top-p
#   0.95) sampled corrupted text (format rate 0.21-0.23 where the same weights give 0.999) while
#   its training rollouts (512 rows, T 1.0) were sound; with autotuning off every sampling
#   program was sound. Training programs keep autotuning (5-7x faster updates).
# - 2026-12-02: untuned Triton GEMMs are slow where the matmuls are large. At the Qwen2.5-0.5B
#   shape (benchmarks/sampler.py, batch 64 / 256) a decode step took 6.14 / 20.4 ms with autotuning
#   off and 1.75 / 3.95 ms with cuBLAS (autotuned); at the 25M miniature's rollout shape 2.854 ms
#   untuned Triton, 2.691 ms untuned cuBLAS (this setting), 2.671 ms autotuned cuBLAS, all three
#   sound on its evaluation. Without autotuning no process tunes kernels on a shared GPU.
# On CPU the options change nothing. The environment variable R1JAX_SAMPLER_XLA_OPTIONS
# (name=value,...) replaces them, e.g. to try a faster setting against
# tools/gpu_jobs/choose_sampler_options.sh's check; empty ("") compiles with XLA's defaults.
DEFAULT_COMPILER_OPTIONS = "xla_gpu_autotune_level=0,xla_gpu_enable_triton_gemm=false"
COMPILER_OPTIONS = parse_compiler_options(
    os.environ.get("R1JAX_SAMPLER_XLA_OPTIONS", DEFAULT_COMPILER_OPTIONS))

_STATIC = ("config", "sampling", "cache_dtype", "cache_sharding")
_generate_jit = jax.jit(_generate, static_argnames=_STATIC, compiler_options=COMPILER_OPTIONS)
# Inside another jit, whose compile options then apply (sharding.shard_generate passes them).
_generate_nested = jax.jit(_generate, static_argnames=_STATIC)


def generate(params, config: ModelConfig, prompt_tokens, prompt_mask, key: jax.Array,
             sampling: SamplingConfig, *, cache_dtype=None,
             cache_sharding=None) -> SampleOutput:
  """Samples `sampling.num_samples` completions of each left-padded prompt.

  Jitted (config, sampling and cache_dtype static; one compilation per prompt length P) and
  usable inside another jit. Deterministic given `key`: step t samples with fold_in(key, t).

  Args:
    params: model parameters (r1jax.model).
    prompt_tokens: [B,P] int token ids, left-padded (see `left_pad`).
    prompt_mask: [B,P] bool, True on real tokens; every row needs at least one.
    key: PRNG key.
    cache_dtype: dtype of the KV cache (default: the model's compute dtype).
    cache_sharding: optional Sharding of each layer's decode cache k and v [R,N,S,K]
      (r1jax.sharding.cache_sharding), kept through the decode loop.

  Returns:
    SampleOutput with B*G rows; row b*G+g is sample g of prompt b.
  """
  if not isinstance(config, ModelConfig):
    raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
  if not isinstance(sampling, SamplingConfig):
    raise TypeError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
  if len(jnp.shape(prompt_tokens)) != 2:
    raise ValueError(f"prompt_tokens must be [B,P], got shape {jnp.shape(prompt_tokens)}")
  if jnp.shape(prompt_mask) != jnp.shape(prompt_tokens):
    raise ValueError(f"prompt_mask shape {jnp.shape(prompt_mask)} != prompt_tokens shape "
                     f"{jnp.shape(prompt_tokens)}")
  v = config.vocab_size
  if sampling.pad_id >= v:
    raise ValueError(f"pad_id={sampling.pad_id} is not a token id of vocab_size={v}")
  for name, ids in (("eos_ids", sampling.eos_ids),
                    ("stop_sequences", [i for q in sampling.stop_sequences for i in q])):
    if any(i >= v for i in ids):
      raise ValueError(f"{name} holds ids >= vocab_size={v}: {ids}")
  p = jnp.shape(prompt_tokens)[1]
  if p + sampling.max_new_tokens > config.max_position_embeddings:
    raise ValueError(f"prompt length {p} + max_new_tokens={sampling.max_new_tokens} exceeds "
                     f"max_position_embeddings={config.max_position_embeddings}")
  if isinstance(cache_dtype, str):
    cache_dtype = dtype_from_name(cache_dtype)
  traced = any(isinstance(x, jax.core.Tracer)
               for x in jax.tree.leaves((params, prompt_tokens, prompt_mask, key)))
  fn = _generate_nested if traced else _generate_jit
  return fn(params, config, prompt_tokens, prompt_mask, key, sampling, cache_dtype=cache_dtype,
            cache_sharding=cache_sharding)


# ----------------------------------------------------------------------------------------------
# Host side: cutting decoded completions at their first stop string
# ----------------------------------------------------------------------------------------------
def _first_stop_end(text: str, stop_strings: Sequence[str]) -> Optional[int]:
  """End (exclusive) of the earliest-ending stop string occurrence in `text`, or None."""
  ends = [i + len(s) for s in stop_strings for i in (text.find(s),) if i >= 0]
  return min(ends) if ends else None


def cut_at_stop_strings(out: SampleOutput, decode: Callable[[Sequence[int]], str],
                        stop_strings: Sequence[str], pad_id: int) -> tuple[SampleOutput, list[str]]:
  """Decodes every completion and cuts it at the first stop string of its text.

  The decode loop stops a row on the token that completes a stop string, but a row can still
  hold one it did not stop on (one that ended at max_new_tokens, or a stop string that only
  the whole text's decoding shows), so this is the one place where completions end. A row whose
  text holds a stop string keeps its tokens up to and including the one that completes the first
  occurrence (the shortest prefix whose decoded text holds a stop string); its later tokens become
  `pad_id` with log-prob 0 and mask False, its length shrinks to match, it is not truncated, and
  its text ends right after the stop string (even where the completing token runs past it).
  Other rows are decoded as they are.

  Args:
    out: a SampleOutput with host (numpy) or device arrays.
    decode: token ids -> text (tokenizer.decode).
    stop_strings: the stop strings ((): only decode).

  Returns:
    (SampleOutput with numpy arrays, R decoded texts).
  """
  tokens, lengths = np.array(out.tokens), np.array(out.lengths)
  log_probs, truncated = np.array(out.log_probs), np.array(out.truncated)
  stop_strings = [s for s in stop_strings if s]
  texts = []
  for r, (row, n) in enumerate(zip(tokens, lengths)):
    text = decode(row[:n])
    end = _first_stop_end(text, stop_strings) if stop_strings else None
    if end is None:
      texts.append(text)
      continue
    # The shortest prefix whose text holds a stop string: usually all n tokens (the loop stopped
    # on the last one), else a binary search (a longer prefix's text extends a shorter one's, so
    # once a prefix holds a stop string every longer one does).
    k = n
    if n > 1 and _first_stop_end(decode(row[:n - 1]), stop_strings) is not None:
      lo, k = 0, n - 1  # prefix lo holds none, prefix k holds one
      while k - lo > 1:
        mid = (lo + k) // 2
        if _first_stop_end(decode(row[:mid]), stop_strings) is None:
          lo = mid
        else:
          k = mid
      text = decode(row[:k])
      end = _first_stop_end(text, stop_strings)
    texts.append(text[:end])
    tokens[r, k:], log_probs[r, k:] = pad_id, 0.0
    lengths[r], truncated[r] = k, False
  mask = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
  return out._replace(tokens=tokens, log_probs=log_probs, mask=mask, lengths=lengths,
                      truncated=truncated, prompt_tokens=np.asarray(out.prompt_tokens),
                      prompt_mask=np.asarray(out.prompt_mask)), texts
