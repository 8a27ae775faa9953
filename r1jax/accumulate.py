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
import numpy as np
import optax

from r1jax import grpo, layout, sharding
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
  def loss_fn(params, batch, num_items_in_batch=None):
    logp, entropy = layout.completion_log_probs(
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


# ----------------------------------------------------------------------------------------------
# Length buckets: micro-batches of length-sorted rows, each cut to its own sequence length
# ----------------------------------------------------------------------------------------------
# The batch entries that the loss reads besides the log-probs.
LOSS_KEYS = ("advantages", "completion_mask", "truncated", "old_logp", "ref_logp")
# The batch entries that a log-prob forward reads.
FORWARD_KEYS = ("prompt_tokens", "prompt_mask", "completion_tokens", "completion_mask")


class _OnMesh:
  """Jitting and batch placement of the bucketed functions: plain jit on one device, or the
  mesh's shardings (params and optimizer state as given, batch rows over data/fsdp)."""

  def __init__(self, mesh=None, param_sh=None, opt_sh=None, rules=sharding.DEFAULT_RULES):
    self.mesh, self.param_sh, self.opt_sh, self.rules = mesh, param_sh, opt_sh, rules

  def jit(self, fn, in_shardings, out_shardings, donate=()):
    if self.mesh is None:
      return jax.jit(fn, donate_argnums=donate)
    return jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                   donate_argnums=donate)

  def put(self, tree):
    return tree if self.mesh is None else sharding.put_batch(tree, self.mesh, self.rules)

  def rows(self, n: int):
    return None if self.mesh is None else sharding.batch_sharding(self.mesh, self.rules, n)

  def replicated(self):
    return None if self.mesh is None else sharding.replicated(self.mesh)


def _host_batch(batch, keys=None) -> dict:
  return {k: np.asarray(v) for k, v in batch.items() if keys is None or k in keys}


def _buckets(batch, num_buckets: int) -> tuple[int, ...]:
  total = batch["prompt_mask"].shape[1] + batch["completion_mask"].shape[1]
  return layout.bucket_lengths(total, num_buckets)


class BucketedUpdateStep:
  """trainer.make_update_step's step, (params, opt_state, batch) -> (params, opt_state,
  metrics), with a cost that follows the real tokens (--length_buckets).

  The rows of the batch are sorted by length (prompt + completion tokens) into
  `num_microbatches` micro-batches of equal row counts, so long and short rows do not share
  one, and each micro-batch runs on the compact layout (r1jax.layout) cut to the shortest of
  layout.bucket_lengths(P + N, num_buckets) that holds its longest row. Host-driven: one jitted
  gradient pass per micro-batch (one compilation per bucket length), its gradient added in
  float32 to a donated buffer, then one jitted optimizer step. Where P + N gives one bucket
  only, the batch goes to `fixed_step` (the fixed-shape step) instead.

  Exact for every loss_type, as `value_and_grad`: bnpo/dapo micro-batches are scored as DAPO's
  shares of the whole batch's loss tokens and summed; grpo/dr_grpo micro-batch gradients are
  weighted by their share of the rows. The loss and the metrics are the whole batch's, computed
  once from the micro-batches' log-probs (exact also for advantages/* and
  completion_length/mean, which the scan's per-micro-batch combination only approximates).
  """

  def __init__(self, fixed_step: Callable, model_config: ModelConfig, cfg,
               loss_cfg: grpo.GRPOConfig, optimizer: optax.GradientTransformation,
               num_microbatches: int, num_buckets: int, on_mesh: Optional[_OnMesh] = None):
    self.fixed_step, self.model_config, self.cfg = fixed_step, model_config, cfg
    self.loss_cfg, self.optimizer = loss_cfg, optimizer
    self.num_microbatches, self.num_buckets = num_microbatches, num_buckets
    self.token_level = loss_cfg.loss_type in ("bnpo", "dapo")
    self.mesh = on_mesh or _OnMesh()
    m = self.mesh
    self._grads: dict = {}  # (length, rows) -> jitted gradient pass
    self._zeros = m.jit(lambda p: jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), p),
                        (m.param_sh,), m.param_sh)
    self._apply = m.jit(self._apply_fn, (m.param_sh, m.opt_sh, m.param_sh, None, None, None),
                        (m.param_sh, m.opt_sh, m.replicated()), donate=(0, 1))

  def on_mesh(self, param_sh, opt_sh, mesh, rules=sharding.DEFAULT_RULES) -> BucketedUpdateStep:
    """This step jitted over `mesh` (what sharding.shard_update_step does to a plain step)."""
    fixed = sharding.shard_update_step(self.fixed_step, param_sh, opt_sh, mesh, rules)
    return BucketedUpdateStep(fixed, self.model_config, self.cfg, self.loss_cfg, self.optimizer,
                              self.num_microbatches, self.num_buckets,
                              _OnMesh(mesh, param_sh, opt_sh, rules))

  def _grad(self, length: int, rows: int):
    """Jitted (params, acc, micro-batch, scalars) -> (acc + weight * grads, logp [rows,N],
    entropy [rows,N]) on the compact layout of `length` slots."""
    if (length, rows) not in self._grads:
      self._grads[length, rows] = self._build_grad(length, rows)
    return self._grads[length, rows]

  def _build_grad(self, length: int, rows: int):
    cfg, loss_cfg = self.cfg, self.loss_cfg

    def loss_fn(params, mb, num_items):
      logp, ent = layout.completion_log_probs(
          params, mb["prompt_tokens"], mb["prompt_mask"], mb["completion_tokens"],
          mb["completion_mask"], self.model_config, temperature=cfg.temperature,
          remat=cfg.remat, chunk_size=cfg.logprob_chunk_size, length=length)
      loss, _ = grpo_objective(logp, ent, mb, loss_cfg, num_items)
      return loss, (logp, ent)

    def fn(params, acc, mb, scalars):
      num_items = scalars["num_items"] if self.token_level else None
      (_, (logp, ent)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, mb, num_items)
      acc = jax.tree.map(lambda a, g: a + scalars["weight"] * g.astype(jnp.float32), acc, grads)
      return acc, logp, ent

    m = self.mesh
    return m.jit(fn, (m.param_sh, m.param_sh, None, None), (m.param_sh, m.rows(rows), m.rows(rows)),
                 donate=(1,))

  def _apply_fn(self, params, opt_state, acc, parts, logps, ents):
    """The optimizer step on the summed gradients, and the whole batch's loss and metrics from
    the micro-batches' log-probs (rows in micro-batch order: every metric is a row-order-free
    reduction)."""
    batch = {k: jnp.concatenate([p[k] for p in parts]) for k in parts[0]}
    loss, metrics = grpo_objective(jnp.concatenate(logps), jnp.concatenate(ents), batch,
                                   self.loss_cfg)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), acc, params)
    updates, opt_state = self.optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))

  def __call__(self, params, opt_state, batch):
    buckets = _buckets(batch, self.num_buckets)
    if len(buckets) == 1:
      return self.fixed_step(params, opt_state, batch)
    batch = _host_batch(batch)
    b = batch["completion_mask"].shape[0]
    lengths = layout.sequence_lengths(batch["prompt_mask"], batch["completion_mask"])
    groups = layout.length_sorted_groups(lengths, self.num_microbatches)
    num_items = np.float32(0.0)
    if self.token_level:
      num_items = np.float32(jax.device_get(grpo.num_loss_tokens(
          batch["completion_mask"], batch.get("truncated"), self.loss_cfg)))
    acc = self._zeros(params)
    parts, logps, ents = [], [], []
    for idx in groups:
      mb = self.mesh.put({k: v[idx] for k, v in batch.items()})
      weight = 1.0 if self.token_level else len(idx) / b
      scalars = self.mesh.put({"num_items": num_items, "weight": np.float32(weight)})
      grad = self._grad(layout.bucket_length(lengths[idx], buckets), len(idx))
      acc, logp, ent = grad(params, acc, mb, scalars)
      parts.append({k: mb[k] for k in LOSS_KEYS if k in mb})
      logps.append(logp)
      ents.append(ent)
    return self._apply(params, opt_state, acc, parts, logps, ents)

  def _cache_size(self) -> int:
    """Compiled executables of this step, all its jitted parts together (as jax.jit's)."""
    return _cache_size(self.fixed_step, self._zeros, self._apply, *self._grads.values())


def _cache_size(*fns) -> int:
  """Compiled executables of jitted functions (a sharded step counts its `.jitted`; a function
  that is not jitted counts 0)."""
  fns = [getattr(f, "jitted", f) for f in fns]
  # pylint: disable-next=protected-access
  return sum(f._cache_size() for f in fns if hasattr(f, "_cache_size"))


class BucketedLogprobFn:
  """The π_old / π_ref pass, (params, batch) -> completion log-probs [b,N] (host numpy, in the
  batch's row order), with a cost that follows the real tokens (--length_buckets): rows sorted
  by length into chunks of `chunk_rows` (None: one chunk of all rows), each run on the compact
  layout cut to its bucket length (one compilation per bucket length). Where P + N gives one
  bucket only, the batch goes to `fixed_fn` (the fixed-shape pass) instead."""

  def __init__(self, fixed_fn: Callable, model_config: ModelConfig, cfg,
               chunk_rows: Optional[int], num_buckets: int, on_mesh: Optional[_OnMesh] = None):
    self.fixed_fn, self.model_config, self.cfg = fixed_fn, model_config, cfg
    self.chunk_rows, self.num_buckets = chunk_rows, num_buckets
    self.mesh = on_mesh or _OnMesh()
    self._fns: dict = {}  # (length, rows) -> jitted pass

  def on_mesh(self, param_sh, mesh, rules=sharding.DEFAULT_RULES) -> BucketedLogprobFn:
    """This pass jitted over `mesh` (what sharding.shard_logprob_fn does to a plain pass)."""
    fixed = sharding.shard_logprob_fn(self.fixed_fn, param_sh, mesh, rules)
    return BucketedLogprobFn(fixed, self.model_config, self.cfg, self.chunk_rows,
                             self.num_buckets, _OnMesh(mesh, param_sh, None, rules))

  def _fn(self, length: int, rows: int):
    if (length, rows) not in self._fns:
      cfg = self.cfg

      def fn(params, mb):
        logp, _ = layout.completion_log_probs(
            params, mb["prompt_tokens"], mb["prompt_mask"], mb["completion_tokens"],
            mb["completion_mask"], self.model_config, temperature=cfg.temperature,
            chunk_size=cfg.logprob_chunk_size, length=length)
        return logp

      self._fns[length, rows] = self.mesh.jit(fn, (self.mesh.param_sh, None),
                                              self.mesh.rows(rows))
    return self._fns[length, rows]

  def __call__(self, params, batch):
    buckets = _buckets(batch, self.num_buckets)
    if len(buckets) == 1:
      return self.fixed_fn(params, batch)
    batch = _host_batch(batch, FORWARD_KEYS)
    b, n = batch["completion_mask"].shape
    lengths = layout.sequence_lengths(batch["prompt_mask"], batch["completion_mask"])
    chunk = b if self.chunk_rows is None else min(self.chunk_rows, b)
    if b % chunk:
      raise ValueError(f"--logprob_batch_size={chunk} must divide the {b} rows")
    groups = layout.length_sorted_groups(lengths, b // chunk)
    outs = []
    for idx in groups:  # all dispatched before the first result is waited for
      mb = self.mesh.put({k: v[idx] for k, v in batch.items()})
      outs.append(self._fn(layout.bucket_length(lengths[idx], buckets), len(idx))(params, mb))
    logp = np.empty((b, n), np.float32)
    for idx, out in zip(groups, jax.device_get(outs)):
      logp[idx] = out
    return logp

  def _cache_size(self) -> int:
    """Compiled executables of this pass, all its jitted parts together (as jax.jit's)."""
    return _cache_size(self.fixed_fn, *self._fns.values())
