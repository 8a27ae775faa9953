"""Token layout of the trainer's log-prob forwards (update, π_old and π_ref passes).

The rollout keeps each row as [left-padded prompt P | right-padded completion N]. The forwards
run on the compact, right-padded layout instead: row i holds its valid prompt tokens, then its
valid completion tokens, then padding,

    slot   0 ........ plen_i - 1 | plen_i ...... plen_i + clen_i - 1 | padding ... T - 1
    token  prompt tokens         | completion tokens                  | (anything)

so completion token j of row i sits at slot plen_i + j and is scored by logp entry
plen_i + j - 1. Every real token sees only real tokens before it: the causal mask alone is
exact, and a sequence may be cut to T < P + N slots when no row is longer (`bucket_length`).
The log-probs and entropies are gathered back to the [B,N] completion layout, so grpo.grpo_loss
and all metrics see what they saw before.

Shapes: B rows, P prompt and N completion slots, T slots of the compact sequence.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import model
from r1jax.config import ModelConfig

# How model.sequence_log_probs attends on this layout: the causal mask alone is exact (padding
# comes after every real token), so `causal_only=True` lets cuDNN flash attention run without a
# mask (model.forward).
SEQUENCE_LOG_PROBS_KW = {"causal_only": True}


def compact_layout(prompt_tokens, prompt_mask, completion_tokens, completion_mask,
                   length: Optional[int] = None):
  """[B,P] prompts + [B,N] completions -> (tokens [B,T], mask [B,T], score_index [B,N]).

  The valid tokens of each row (prompt then completion, in order) come first, then padding;
  T = `length` (default P + N) must hold the longest row's valid tokens (`sequence_lengths`).
  score_index[i, j] is the entry of the model's logp [B,T-1] that scores completion token j of
  row i (its slot minus one); it is clipped into range on padding, whose values never matter.
  Any masks work (holes included): a token keeps its RoPE position, the number of valid tokens
  before it, and sees the same valid tokens as in the padded layout.
  """
  p = prompt_tokens.shape[1]
  tokens = jnp.concatenate([prompt_tokens, completion_tokens], axis=1)
  mask = jnp.concatenate([prompt_mask, completion_mask], axis=1).astype(bool)
  t = tokens.shape[1] if length is None else length
  if not 2 <= t <= tokens.shape[1]:
    raise ValueError(f"compact length {t} must be in [2, P + N = {tokens.shape[1]}]")
  # Stable sort of the padding flags: the valid slots first, in their order.
  order = jnp.argsort((~mask).astype(jnp.int32), axis=1, stable=True)[:, :t]
  rank = jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1  # slot of each valid token, compacted
  score_index = jnp.clip(rank[:, p:] - 1, 0, t - 2)
  return (jnp.take_along_axis(tokens, order, axis=1), jnp.take_along_axis(mask, order, axis=1),
          score_index)


def completion_log_probs(params, prompt_tokens, prompt_mask, completion_tokens,
                         completion_mask, model_config: ModelConfig, *, temperature: float,
                         remat: str = "none", chunk_size: Optional[int] = None,
                         length: Optional[int] = None):
  """Log-probs and entropies [B,N] of the completion tokens given the prompts, computed on the
  compact layout of `length` slots (default P + N; see `compact_layout`)."""
  tokens, mask, index = compact_layout(prompt_tokens, prompt_mask, completion_tokens,
                                       completion_mask, length)
  logp, ent = model.sequence_log_probs(params, tokens, mask, model_config,
                                       temperature=temperature, remat=remat,
                                       chunk_size=chunk_size, **SEQUENCE_LOG_PROBS_KW)
  return jnp.take_along_axis(logp, index, axis=1), jnp.take_along_axis(ent, index, axis=1)


# ----------------------------------------------------------------------------------------------
# Length buckets (host side, numpy)
# ----------------------------------------------------------------------------------------------
def bucket_lengths(total: int, num_buckets: int, multiple: int = 8) -> tuple[int, ...]:
  """The sequence lengths a micro-batch is cut to: multiples of ceil(total / num_buckets)
  (rounded up to `multiple`), capped at `total` = P + N. num_buckets <= 1: (total,)."""
  if num_buckets <= 1:
    return (total,)
  step = -(-total // num_buckets)
  step = -(-step // multiple) * multiple
  return tuple(sorted({max(2, min(total, step * i)) for i in range(1, num_buckets + 1)}))


def sequence_lengths(prompt_mask, completion_mask) -> np.ndarray:
  """[B] valid tokens of each row (prompt + completion)."""
  return (np.asarray(prompt_mask).sum(1) + np.asarray(completion_mask).sum(1)).astype(np.int64)


def bucket_length(lengths: np.ndarray, buckets: Sequence[int]) -> int:
  """The shortest bucket that holds the longest of `lengths`."""
  longest = int(np.max(lengths))
  for b in buckets:
    if b >= longest:
      return b
  raise ValueError(f"a row has {longest} tokens, more than the longest bucket {max(buckets)} "
                   "(--max_prompt_length + --max_completion_length)")


def length_sorted_groups(lengths: np.ndarray, num_groups: int) -> list[np.ndarray]:
  """Row indices split into `num_groups` equal groups of rows sorted by length (stable), so that
  long and short rows do not share a group."""
  b = len(lengths)
  if b % num_groups:
    raise ValueError(f"{b} rows are not divisible into {num_groups} groups "
                     "(--gradient_accumulation_steps / --logprob_batch_size)")
  order = np.argsort(np.asarray(lengths), kind="stable")
  return list(order.reshape(num_groups, b // num_groups))
