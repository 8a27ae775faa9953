"""Memory levers of the update step: gradient accumulation and row-chunked log-prob passes.

Gradient accumulation splits the optimizer batch of b rows into k micro-batches of b/k rows
inside ONE jitted step (`jax.lax.scan`), summing gradients, so activation memory is that of
b/k rows while the update is exactly the full-batch one. Exactness per `loss_type` (grpo.py):

  grpo     mean over completions of per-completion token means: full loss = mean of the k
           micro-batch losses (equal sizes).
  dr_grpo  sum / (b * max_completion_length): also the mean of the micro-batch losses.
  bnpo     sum / tokens of the batch. A micro-batch mean weights tokens unequally, so each
  dapo     micro-batch is scored as DAPO with num_items_in_batch = the loss tokens of the whole
           batch, and the k losses are summed (grpo_loss's contract for accumulation).

Micro-batch j takes rows j, j+k, j+2k, ...: with rows sharded contiguously over the data
devices, every device then holds an equal share of every micro-batch and the split is local.

Shapes: b rows of the optimizer batch, k micro-batches, P prompt and N completion tokens.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from r1jax import grpo
from r1jax.config import ModelConfig

# (params, batch, num_items_in_batch) -> (loss, metrics)
LossFn = Callable


def split_rows(batch, k: int):
  """[b, ...] leaves -> [k, b/k, ...], micro-batch j holding rows j, j+k, ... ."""
  def one(x):
    b = x.shape[0]
    if b % k:
      raise ValueError(f"batch of {b} rows is not divisible into {k} micro-batches "
                       "(--gradient_accumulation_steps / --logprob_batch_size)")
    return x.reshape((b // k, k) + x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(one, batch)


def merge_rows(chunks):
  """Inverse of `split_rows`: [k, b/k, ...] -> [b, ...]."""
  def one(x):
    return x.swapaxes(0, 1).reshape((x.shape[0] * x.shape[1],) + x.shape[2:])
  return jax.tree.map(one, chunks)


def grpo_objective(logp, entropy, batch, loss_cfg: grpo.GRPOConfig, num_items_in_batch=None):
  """grpo.grpo_loss on a (micro-)batch dict, given the policy's logp and entropy [b,N].

  With `num_items_in_batch` (the loss tokens of the whole optimizer batch) bnpo is scored as
  dapo: over a batch split into micro-batches the two are the same token mean.
  """
  c = loss_cfg if num_items_in_batch is None else loss_cfg.replace(loss_type="dapo")
  old_logp = batch.get("old_logp")
  if old_logp is None:  # μ = 1: π_old = π_θ, ratio 1 with the gradient of π_θ
    old_logp = jax.lax.stop_gradient(logp)
  return grpo.grpo_loss(logp, old_logp, batch.get("ref_logp"), batch["advantages"],
                        batch["completion_mask"], batch["truncated"], c,
                        entropy=jax.lax.stop_gradient(entropy),
                        num_items_in_batch=num_items_in_batch)


def make_grpo_loss_fn(model_config: ModelConfig, cfg, loss_cfg: grpo.GRPOConfig) -> LossFn:
  """The trainer's loss (trainer.make_update_step) taking grpo_loss's `num_items_in_batch`:
  (params, batch, num_items_in_batch=None) -> (loss, metrics).

  cfg: trainer.TrainConfig (temperature, remat, logprob_chunk_size).
  """
  from r1jax import trainer  # pylint: disable=import-outside-toplevel

  def loss_fn(params, batch, num_items_in_batch=None):
    logp, entropy = trainer.completion_log_probs(
        params, batch["prompt_tokens"], batch["prompt_mask"], batch["completion_tokens"],
        batch["completion_mask"], model_config, temperature=cfg.temperature, remat=cfg.remat,
        chunk_size=cfg.logprob_chunk_size)
    return grpo_objective(logp, entropy, batch, loss_cfg, num_items_in_batch)

  return loss_fn


def _combine_metrics(metrics: dict, tokens: jax.Array) -> dict:
  """Metrics [k] of the micro-batches -> one value each: min/max of extremes, the sum of the
  token count, token-weighted means otherwise (exact for the token means of grpo_loss; the
  per-completion statistics, advantages/* and completion_length/mean, are close but not
  exact)."""
  weights = tokens / jnp.maximum(jnp.sum(tokens), 1.0)
  out = {}
  for name, v in metrics.items():
    if name.endswith("/min"):
      out[name] = jnp.min(v)
    elif name.endswith("/max"):
      out[name] = jnp.max(v)
    elif name == "num_loss_tokens":
      out[name] = jnp.sum(v)
    else:
      out[name] = jnp.sum(v * weights)
  return out


def value_and_grad(loss_fn: LossFn, params, batch, loss_cfg: grpo.GRPOConfig,
                   num_microbatches: int = 1, microbatch_sharding=None):
  """((loss, metrics), grads) of the whole batch, computed over `num_microbatches` slices.

  loss_fn(params, batch, num_items_in_batch=None) -> (loss, metrics), as `make_grpo_loss_fn`
  (any loss ending in `grpo_objective`): for bnpo and dapo it must score a micro-batch as
  dapo's share of `num_items_in_batch` tokens.

  Equal (up to float rounding) to jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
  for every loss_type; gradients are accumulated in float32. `microbatch_sharding` (e.g.
  sharding.batch_sharding(mesh)) pins each micro-batch's rows to the data devices.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  k = num_microbatches
  if k == 1:
    return grad_fn(params, batch)
  token_level = loss_cfg.loss_type in ("bnpo", "dapo")
  if token_level:
    total_tokens = grpo.num_loss_tokens(batch["completion_mask"], batch.get("truncated"),
                                        loss_cfg)
    loss_fn_k = lambda p, mb: loss_fn(p, mb, total_tokens)  # noqa: E731
  else:
    loss_fn_k = lambda p, mb: loss_fn(p, mb)  # noqa: E731
  grad_fn = jax.value_and_grad(loss_fn_k, has_aux=True)
  chunks = split_rows(batch, k)

  def body(acc, mb):
    if microbatch_sharding is not None:
      mb = jax.lax.with_sharding_constraint(mb, microbatch_sharding)
    (loss, metrics), grads = grad_fn(params, mb)
    acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc, grads)
    return acc, (loss, metrics)

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  grads, (losses, metrics) = jax.lax.scan(body, zeros, chunks)
  scale = 1.0 if token_level else 1.0 / k  # token-level losses are shares: sum them
  grads = jax.tree.map(lambda g, p: (g * scale).astype(p.dtype), grads, params)
  loss = jnp.sum(losses) * scale
  return (loss, _combine_metrics(metrics, metrics["num_loss_tokens"])), grads


def make_update_step(model_config: ModelConfig, cfg, loss_cfg: grpo.GRPOConfig,
                     optimizer: optax.GradientTransformation, num_microbatches: int = 1,
                     microbatch_sharding=None):
  """trainer.make_update_step's step with gradient accumulation, NOT jitted (wrap it with
  jax.jit or sharding.shard_update_step): (params, opt_state, batch) -> (params, opt_state,
  metrics)."""
  loss_fn = make_grpo_loss_fn(model_config, cfg, loss_cfg)

  def step(params, opt_state, batch):
    (loss, metrics), grads = value_and_grad(loss_fn, params, batch, loss_cfg, num_microbatches,
                                            microbatch_sharding)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
    return params, opt_state, metrics

  return step


def map_row_chunks(fn: Callable, batch, chunk_rows: Optional[int]):
  """fn(batch) for a row-wise fn, run over chunks of `chunk_rows` rows (jax.lax.map) so only
  one chunk's activations are live: the `logprob_batch_size` lever for the π_old / π_ref
  passes. Outputs are [b, ...] trees in the original row order."""
  b = jax.tree.leaves(batch)[0].shape[0]
  if chunk_rows is None or chunk_rows >= b:
    return fn(batch)
  if b % chunk_rows:
    raise ValueError(f"--logprob_batch_size={chunk_rows} must divide the {b} rows")
  return merge_rows(jax.lax.map(fn, split_rows(batch, b // chunk_rows)))


def chunked_logprob_fn(logprob_fn: Callable, chunk_rows: Optional[int]) -> Callable:
  """(params, batch) -> logp [b,N] of trainer.make_logprob_fn, over row chunks (not jitted)."""
  def fn(params, batch):
    return map_row_chunks(lambda mb: logprob_fn(params, mb), batch, chunk_rows)
  return fn
