"""GRPO: group-relative advantages and the clipped policy loss (DeepSeek-R1, Eq. 1-3).

For each prompt q the policy samples a group of G completions o_1..o_G and a rule-based reward
r_i for each. The paper's objective (Eq. 1) is, per completion and token,

    J = E[ 1/G sum_i 1/|o_i| sum_t ( min(rho_it A_i, clip(rho_it, 1-eps, 1+eps) A_i)
                                      - beta KL_it ) ],     rho_it = pi(o_it) / pi_old(o_it)

with the k3 estimator of KL(pi || pi_ref) (Eq. 2) and the group-normalized advantage (Eq. 3)
A_i = (r_i - mean(r)) / std(r). The loss is -J.

Variants, named as in TRL's GRPOTrainer so that its users find their flags:
  * `epsilon_high` (DAPO, "clip-higher"): asymmetric clip range [1-eps, 1+eps_high].
  * `loss_type`: how per-token terms are averaged.
      grpo    - mean over each completion's tokens, then mean over completions (Eq. 1).
      bnpo    - sum over all tokens / number of tokens in this batch.
      dapo    - sum over all tokens / number of tokens in the whole optimizer batch (DAPO's
                token-level loss). Equal to bnpo unless `num_items_in_batch` is passed.
      dr_grpo - sum over all tokens / (B * max_completion_length) (Dr. GRPO: no length bias).
  * `scale_rewards`: "group" (Eq. 3), "batch" (std over the whole batch), "none" (Dr. GRPO).
  * `importance_sampling_level="sequence"` (GSPO): one length-normalized ratio per completion.
  * `mask_truncated_completions` (DAPO overlong filtering): truncated completions get no loss.

Shapes: B completions (= prompts * G), T completion tokens (right-padded), G = num_generations.
Every function here is pure and jittable with `config` static (the dataclass is hashable).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")
SCALE_REWARDS = ("group", "batch", "none")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GRPOConfig:
  """The loss part of GRPO's configuration; field names and meanings follow TRL's GRPOConfig.

  `beta` defaults to 0.04, TRL's default when the R1 recipes were first reproduced (TRL >= 0.18
  defaults to 0.0; the DeepSeek-R1 paper reports 0.001). With beta == 0 the KL term is dropped
  and no reference log-probs are needed.
  """

  num_generations: int  # G, completions per prompt.
  max_completion_length: int  # dr_grpo's constant normalizer; T must not exceed it.
  beta: float = 0.04
  epsilon: float = 0.2
  epsilon_high: Optional[float] = None  # None -> epsilon (symmetric clip); DAPO uses 0.28.
  loss_type: str = "grpo"
  scale_rewards: str = "group"
  importance_sampling_level: str = "token"
  mask_truncated_completions: bool = False

  def __post_init__(self):
    def check(ok, field, why):
      if not ok:
        raise ValueError(f"{field}={getattr(self, field)!r}: {why}")

    check(self.loss_type in LOSS_TYPES, "loss_type", f"expected one of {LOSS_TYPES}")
    check(self.scale_rewards in SCALE_REWARDS, "scale_rewards", f"expected one of {SCALE_REWARDS}")
    check(self.importance_sampling_level in IMPORTANCE_SAMPLING_LEVELS,
          "importance_sampling_level", f"expected one of {IMPORTANCE_SAMPLING_LEVELS}")
    check(self.beta >= 0, "beta", "must be >= 0")
    check(0 < self.epsilon < 1, "epsilon", "must be in (0, 1)")
    check(self.epsilon_high is None or self.epsilon_high > 0, "epsilon_high", "must be > 0 or None")
    check(isinstance(self.num_generations, int) and self.num_generations >= 2, "num_generations",
          "GRPO needs an int >= 2 completions per prompt to form a group baseline")
    check(isinstance(self.max_completion_length, int) and self.max_completion_length >= 1,
          "max_completion_length", "must be an int >= 1")
    check(isinstance(self.mask_truncated_completions, bool), "mask_truncated_completions",
          "must be a bool")

  @property
  def clip_high(self) -> float:
    """The upper clip epsilon actually used: epsilon_high, or epsilon when it is None."""
    return self.epsilon if self.epsilon_high is None else self.epsilon_high

  def replace(self, **kw) -> "GRPOConfig":
    return dataclasses.replace(self, **kw)


def _float(x: jax.Array) -> jax.Array:
  """At least float32 (bf16 log-probs are upcast; float64 stays float64 under x64)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den with den clamped to >= 1: a count of zero tokens gives 0, not NaN."""
  return num / jnp.maximum(den, 1.0)


# ----------------------------------------------------------------------------------------------
# Advantages (Eq. 3)
# ----------------------------------------------------------------------------------------------
def _grouped(rewards: jax.Array, num_generations: int) -> jax.Array:
  rewards = _float(rewards)
  if rewards.ndim != 1 or rewards.shape[0] % num_generations:
    raise ValueError(f"rewards has shape {rewards.shape}; expected [B*G] with G=num_generations="
                     f"{num_generations} dividing it (completions of one prompt adjacent)")
  return rewards.reshape(-1, num_generations)


def _std(x: jax.Array, axis=None) -> jax.Array:
  """Unbiased (ddof=1) standard deviation, as torch.std / TRL's nanstd; 0 for a single element."""
  n = x.size if axis is None else x.shape[axis]
  if n < 2:
    return jnp.zeros_like(jnp.mean(x, axis=axis))
  return jnp.std(x, axis=axis, ddof=1)


def group_advantages(rewards: jax.Array, num_generations: int, scale_rewards: str = "group",
                     eps: float = 1e-4) -> jax.Array:
  """Group-relative advantages (Eq. 3), one per completion.

  Args:
    rewards: [B*G] rewards, the G completions of each prompt adjacent (prompt-major).
    num_generations: G.
    scale_rewards: "group": A_i = (r_i - mean_group) / (std_group + eps)   (Eq. 3);
      "batch": the same group mean, but the std is taken over the whole [B*G] batch (TRL);
      "none": A_i = r_i - mean_group (Dr. GRPO: the std division biases toward easy/hard prompts).
    eps: added to the std so a group of equal rewards gets advantage 0, not NaN (TRL's 1e-4).

  The std is the unbiased one (ddof=1), matching torch.std / TRL's `nanstd`; a group or batch of a
  single completion has std 0 as in TRL.

  Returns:
    [B*G] advantages, float32 (or float64 under x64).
  """
  if scale_rewards not in SCALE_REWARDS:
    raise ValueError(f"scale_rewards={scale_rewards!r}; expected one of {SCALE_REWARDS}")
  grouped = _grouped(rewards, num_generations)  # [B, G]
  advantages = grouped - jnp.mean(grouped, axis=1, keepdims=True)
  if scale_rewards == "group":
    advantages = advantages / (_std(grouped, axis=1)[:, None] + eps)
  elif scale_rewards == "batch":
    advantages = advantages / (_std(grouped) + eps)
  return advantages.reshape(-1)


def reward_stats(rewards: jax.Array, num_generations: int) -> dict[str, jax.Array]:
  """Metrics of a batch of rewards [B*G]: mean, unbiased std, share of zero-std groups.

  `frac_reward_zero_std` is the share of prompts whose G rewards are all equal: those groups have
  zero advantage under every `scale_rewards` and give no policy gradient (only the KL term).
  (TRL logs the batch std instead when scale_rewards="batch"; the per-group share is what tells
  how much of the batch is wasted.)
  """
  grouped = _grouped(rewards, num_generations)
  zero_std = zero_std_groups(rewards, num_generations)
  return {
      "reward/mean": jnp.mean(grouped),
      "reward/std": _std(grouped),
      "frac_reward_zero_std": jnp.mean(zero_std.astype(grouped.dtype)),
  }


def zero_std_groups(values: jax.Array, num_generations: int) -> jax.Array:
  """[B] bool: the groups whose G values [B*G] are all equal; their advantages are 0 under every
  `scale_rewards`. Compared exactly (max == min), not as std <= 1e-8 (TRL's torch.isclose): in
  float32 the std of G equal values is ~1e-7, not 0, for G that is not a power of two."""
  grouped = _grouped(jnp.asarray(values), num_generations)
  return jnp.max(grouped, axis=1) == jnp.min(grouped, axis=1)


# ----------------------------------------------------------------------------------------------
# KL (Eq. 2)
# ----------------------------------------------------------------------------------------------
def kl_k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """Eq. 2: the k3 estimator of KL(pi || pi_ref) per sampled token, [B, T] -> [B, T].

  pi_ref/pi - log(pi_ref/pi) - 1 = exp(d) - d - 1 with d = ref_logp - logp. It is unbiased for the
  sequence-level KL under samples from pi and non-negative. Written expm1(d) - d, which keeps the
  small-d values accurate in float32 (exp(d) - 1 would cancel), and clamped at 0 against rounding.
  """
  d = _float(ref_logp) - _float(logp)
  return jnp.maximum(jnp.expm1(d) - d, 0.0)


# ----------------------------------------------------------------------------------------------
# Loss (Eq. 1 and its variants)
# ----------------------------------------------------------------------------------------------
def loss_mask(completion_mask: jax.Array, truncated: Optional[jax.Array],
              config: GRPOConfig) -> jax.Array:
  """[B, T] float mask of the tokens that enter the loss.

  With `mask_truncated_completions` (DAPO's overlong filtering) the rows of truncated completions
  (no EOS within max_completion_length) are zeroed, so a cut-off answer is neither rewarded nor
  punished for how it would have ended.
  """
  mask = _float(completion_mask)
  if config.mask_truncated_completions:
    if truncated is None:
      raise ValueError("truncated is None but config.mask_truncated_completions=True; pass the "
                       "[B] bool array of completions that hit max_completion_length without EOS")
    if jnp.shape(truncated) != mask.shape[:1]:
      raise ValueError(f"truncated has shape {jnp.shape(truncated)}; expected {mask.shape[:1]}")
    mask = mask * (1.0 - _float(truncated)[:, None])
  return mask


def num_loss_tokens(completion_mask: jax.Array, truncated: Optional[jax.Array],
                    config: GRPOConfig) -> jax.Array:
  """Number of tokens that enter the loss: sum these over micro-batches for `num_items_in_batch`."""
  return jnp.sum(loss_mask(completion_mask, truncated, config))


def _check_shapes(logp, **arrays):
  for name, (x, shape) in arrays.items():
    if x is not None and jnp.shape(x) != shape:
      raise ValueError(f"{name} has shape {jnp.shape(x)}; expected {shape} (logp is {logp.shape})")


def grpo_loss(logp: jax.Array, old_logp: Optional[jax.Array], ref_logp: Optional[jax.Array],
              advantages: jax.Array, completion_mask: jax.Array, truncated: Optional[jax.Array],
              config: GRPOConfig, entropy: Optional[jax.Array] = None,
              num_items_in_batch: Optional[jax.Array] = None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The GRPO loss -J (Eq. 1) with TRL's variants, and its metrics.

  Args:
    logp: [B, T] log pi_theta of the sampled completion tokens (the only differentiated input).
    old_logp: [B, T] log pi_old (the sampling policy), or None for on-policy (num_iterations=1):
      then pi_old = stop_gradient(pi_theta), ratio 1 with the right gradient, as in TRL.
    ref_logp: [B, T] log pi_ref, or None; required iff config.beta > 0 (ignored when beta == 0).
    advantages: [B] from `group_advantages`.
    completion_mask: [B, T] 1 on completion tokens (up to and including EOS), 0 on padding.
      Values of logp/old_logp/ref_logp on padding never matter, even inf.
    truncated: [B] bool, completion hit max_completion_length without EOS; used only when
      config.mask_truncated_completions (may be None otherwise).
    config: static GRPOConfig.
    entropy: optional [B, T] per-token entropy of pi_theta, for the `entropy` metric only.
    num_items_in_batch: loss_type="dapo" only: the number of loss tokens (see `num_loss_tokens`)
      in the whole optimizer batch, over all gradient-accumulation micro-batches. The loss is then
      this micro-batch's share sum_tokens / num_items_in_batch, so micro-batch losses (and
      gradients) must be SUMMED, not averaged, to give DAPO's token mean over the whole batch
      (multiply by the number of micro-batches if the accumulator averages, as optax.MultiSteps
      does). None: the tokens of this call, i.e. bnpo. A batch sharded over devices inside one jit
      needs nothing: the sums here are already global.

  Returns:
    (loss, metrics): a scalar and a dict of scalars (masked means over loss tokens; 0, never NaN,
    when no token is left).
  """
  c = config
  logp = _float(logp)
  b, t = logp.shape
  _check_shapes(logp, old_logp=(old_logp, (b, t)), ref_logp=(ref_logp, (b, t)),
                advantages=(advantages, (b,)), completion_mask=(completion_mask, (b, t)),
                entropy=(entropy, (b, t)))
  if t > c.max_completion_length:
    raise ValueError(f"logp has {t} completion tokens > config.max_completion_length="
                     f"{c.max_completion_length}")
  if c.beta > 0 and ref_logp is None:
    raise ValueError(f"ref_logp is None but config.beta={c.beta} > 0 needs reference log-probs")
  if num_items_in_batch is not None and c.loss_type != "dapo":
    raise ValueError(f"num_items_in_batch is only used by loss_type='dapo', not {c.loss_type!r}")

  mask = loss_mask(completion_mask, truncated, c)  # [B, T]
  valid = mask > 0
  seq_len = jnp.sum(mask, axis=1)  # [B] |o_i|
  num_tokens = jnp.sum(mask)
  adv = _float(advantages)[:, None]  # [B, 1]
  old_logp = jax.lax.stop_gradient(logp) if old_logp is None else _float(old_logp)

  # Padding may hold anything (even inf): select before exp so neither values nor gradients
  # see it (a multiplicative mask would turn inf * 0 into NaN).
  log_ratio = jnp.where(valid, logp - old_logp, 0.0)  # [B, T]
  if c.importance_sampling_level == "token":
    log_weight = log_ratio
  else:
    # GSPO: s_i = (pi(o_i) / pi_old(o_i))^(1/|o_i|), one ratio per completion for all its tokens.
    # TRL differentiates through the mean; GSPO-token's sg[s_i] * pi_t / sg[pi_t] has the same
    # value and, with one advantage per completion, the same gradient.
    log_weight = jnp.broadcast_to(_safe_div(jnp.sum(log_ratio, axis=1), seq_len)[:, None], (b, t))
  ratio = jnp.exp(log_weight)  # [B, T]

  # Eq. 1 (PPO's pessimistic clipped surrogate), with DAPO's asymmetric upper bound.
  lo, hi = 1.0 - c.epsilon, 1.0 + c.clip_high
  objective = jnp.minimum(ratio * adv, jnp.clip(ratio, lo, hi) * adv)  # [B, T]
  if c.beta > 0:
    kl = kl_k3(jnp.where(valid, logp, 0.0), jnp.where(valid, _float(ref_logp), 0.0))  # Eq. 2
    objective = objective - c.beta * kl
  per_token_loss = jnp.where(valid, -objective, 0.0)

  if c.loss_type == "grpo":  # Eq. 1: 1/G sum_i 1/|o_i| sum_t; all-masked rows count as 0 (TRL).
    loss = jnp.mean(_safe_div(jnp.sum(per_token_loss, axis=1), seq_len))
  elif c.loss_type == "dr_grpo":  # Dr. GRPO: a constant normalizer, so no length bias.
    loss = jnp.sum(per_token_loss) / (b * c.max_completion_length)
  elif c.loss_type == "dapo" and num_items_in_batch is not None:  # DAPO: global token mean.
    loss = _safe_div(jnp.sum(per_token_loss), _float(num_items_in_batch))
  else:  # bnpo, or dapo within one call: token mean over this batch.
    loss = _safe_div(jnp.sum(per_token_loss), num_tokens)

  def masked_mean(x):
    return _safe_div(jnp.sum(jnp.where(valid, x, 0.0)), num_tokens)

  def masked_extreme(x, reduce, fill):  # min/max over loss tokens; 0 when there are none.
    return jnp.where(num_tokens > 0, reduce(jnp.where(valid, x, fill)), 0.0)

  # Clipped where the clip is active in the min, i.e. where the token gets no policy gradient.
  low_clipped = (ratio < lo) & (adv < 0)
  high_clipped = (ratio > hi) & (adv > 0)
  seq_valid = seq_len > 0  # advantage stats over completions that are in the loss
  num_seqs = jnp.sum(seq_valid)
  adv_row = adv[:, 0]
  adv_mean = _safe_div(jnp.sum(jnp.where(seq_valid, adv_row, 0.0)), num_seqs)
  adv_var = _safe_div(jnp.sum(jnp.where(seq_valid, (adv_row - adv_mean) ** 2, 0.0)), num_seqs)
  adv_min = jnp.where(num_seqs > 0, jnp.min(jnp.where(seq_valid, adv_row, jnp.inf)), 0.0)
  adv_max = jnp.where(num_seqs > 0, jnp.max(jnp.where(seq_valid, adv_row, -jnp.inf)), 0.0)
  metrics = {
      "clip_ratio/low_mean": masked_mean(low_clipped.astype(logp.dtype)),
      "clip_ratio/high_mean": masked_mean(high_clipped.astype(logp.dtype)),
      "clip_ratio/region_mean": masked_mean((low_clipped | high_clipped).astype(logp.dtype)),
      "ratio/mean": masked_mean(ratio),
      "ratio/min": masked_extreme(ratio, jnp.min, jnp.inf),
      "ratio/max": masked_extreme(ratio, jnp.max, -jnp.inf),
      "advantages/mean": adv_mean,
      "advantages/std": jnp.sqrt(adv_var),  # population std over completions in the loss
      "advantages/min": adv_min,
      "advantages/max": adv_max,
      "num_loss_tokens": num_tokens,
      "completion_length/mean": _safe_div(num_tokens, num_seqs),
  }
  if c.beta > 0:
    metrics["kl"] = masked_mean(kl)
  if entropy is not None:
    metrics["entropy"] = masked_mean(_float(entropy))
  metrics = jax.tree.map(jax.lax.stop_gradient, metrics)
  return loss, metrics
