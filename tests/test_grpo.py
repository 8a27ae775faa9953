"""r1jax.grpo against an independent float64 NumPy re-derivation of Eq. 1-3, written as loops.

The reference below walks completions and tokens one at a time, exactly as the equations read;
gradients are central finite differences of that reference (float64), so neither the values nor
the gradients borrow anything from the JAX code or from autodiff.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import grpo
from r1jax.grpo import GRPOConfig

G = 3  # completions per prompt
PROMPTS = 3
B = PROMPTS * G
T = 5
L_MAX = 7  # max_completion_length > T: dr_grpo's normalizer is the config's, not the array's.


# ----------------------------------------------------------------------------------------------
# Reference (float64, loops)
# ----------------------------------------------------------------------------------------------
def ref_std(xs):
  """Unbiased std (ddof=1), as torch.std."""
  m = sum(xs) / len(xs)
  return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def ref_advantages(rewards, num_generations, scale_rewards):
  rewards = [float(r) for r in rewards]
  batch_std = ref_std(rewards)
  out = []
  for start in range(0, len(rewards), num_generations):
    group = rewards[start:start + num_generations]
    mean = sum(group) / len(group)
    std = {"group": ref_std(group), "batch": batch_std, "none": None}[scale_rewards]
    for r in group:
      out.append(r - mean if std is None else (r - mean) / (std + 1e-4))
  return np.array(out)


def ref_in_loss(cmask, truncated, cfg):
  """The loss mask as nested lists of bools."""
  return [[bool(cmask[i][t]) and not (cfg.mask_truncated_completions and truncated[i])
           for t in range(len(cmask[i]))] for i in range(len(cmask))]


def ref_loss(logp, old, ref, adv, cmask, truncated, cfg, num_items=None):
  """-J of Eq. 1 with the variant named by cfg, one completion and one token at a time."""
  lo, hi = 1 - cfg.epsilon, 1 + (cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high)
  mask = ref_in_loss(cmask, truncated, cfg)
  seq_sums, seq_lens = [], []
  for i in range(len(logp)):
    tokens = [t for t in range(len(logp[i])) if mask[i][t]]
    if cfg.importance_sampling_level == "sequence":  # GSPO: geometric mean of token ratios
      seq_ratio = math.exp(sum(logp[i][t] - old[i][t] for t in tokens) / len(tokens)) \
          if tokens else 1.0
    total = 0.0
    for t in tokens:
      r = math.exp(logp[i][t] - old[i][t]) if cfg.importance_sampling_level == "token" \
          else seq_ratio
      objective = min(r * adv[i], min(max(r, lo), hi) * adv[i])
      if cfg.beta > 0:  # Eq. 2
        d = ref[i][t] - logp[i][t]
        objective -= cfg.beta * (math.exp(d) - d - 1)
      total += -objective
    seq_sums.append(total)
    seq_lens.append(len(tokens))
  if cfg.loss_type == "grpo":
    return sum(s / n for s, n in zip(seq_sums, seq_lens) if n) / len(logp)
  if cfg.loss_type == "dr_grpo":
    return sum(seq_sums) / (len(logp) * cfg.max_completion_length)
  n_tokens = num_items if num_items is not None else sum(seq_lens)
  return sum(seq_sums) / max(n_tokens, 1)


def ref_grad(fn, x, h=1e-6):
  """Central finite differences of fn at every entry of x (float64)."""
  g = np.zeros_like(x)
  for idx in np.ndindex(*x.shape):
    xp, xm = x.copy(), x.copy()
    xp[idx] += h
    xm[idx] -= h
    g[idx] = (fn(xp) - fn(xm)) / (2 * h)
  return g


def ref_metrics(logp, old, ref, adv, cmask, truncated, cfg):
  lo, hi = 1 - cfg.epsilon, 1 + (cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high)
  mask = ref_in_loss(cmask, truncated, cfg)
  low = high = kl = 0.0
  ratios, advs = [], []
  for i in range(len(logp)):
    tokens = [t for t in range(len(logp[i])) if mask[i][t]]
    if tokens:
      advs.append(adv[i])
    for t in tokens:
      if cfg.importance_sampling_level == "token":
        r = math.exp(logp[i][t] - old[i][t])
      else:
        r = math.exp(sum(logp[i][s] - old[i][s] for s in tokens) / len(tokens))
      ratios.append(r)
      low += r < lo and adv[i] < 0
      high += r > hi and adv[i] > 0
      d = ref[i][t] - logp[i][t]
      kl += math.exp(d) - d - 1
  n = len(ratios)
  m = sum(advs) / len(advs)
  return {"clip_ratio/low_mean": low / n, "clip_ratio/high_mean": high / n,
          "clip_ratio/region_mean": (low + high) / n, "ratio/mean": sum(ratios) / n,
          "ratio/min": min(ratios), "ratio/max": max(ratios), "kl": kl / n,
          "advantages/mean": m, "advantages/min": min(advs), "advantages/max": max(advs),
          "advantages/std": math.sqrt(sum((a - m) ** 2 for a in advs) / len(advs)),
          "num_loss_tokens": n}


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
# Garbage on padding: inf there turns any multiplicative mask (inf * 0) into NaN.
PAD = {"logp": np.inf, "old": -np.inf, "ref": -np.inf}


def make_batch(seed=0):
  rng = np.random.default_rng(seed)
  # Ragged lengths: a full-length (truncated) row per group, an empty row, the rest in between.
  lengths = rng.integers(1, T, size=B)
  lengths[::G] = T
  lengths[4] = 0
  truncated = lengths == T
  cmask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
  logp = rng.uniform(-3.0, -0.1, size=(B, T))
  # old/ref within ~0.3 nats: ratios fall on both sides of [1-eps, 1+eps] and inside it.
  old = logp + rng.normal(0.0, 0.3, size=(B, T))
  ref = logp + rng.normal(0.0, 0.3, size=(B, T))
  for x, k in ((logp, "logp"), (old, "old"), (ref, "ref")):
    x[cmask == 0] = PAD[k]
  rewards = rng.integers(0, 3, size=B).astype(np.float64) / 2
  rewards[G:2 * G] = 1.0  # one group of equal rewards: zero advantages, not NaN
  # float32 round trip so that JAX and the reference see the same numbers.
  f = lambda x: x.astype(np.float32).astype(np.float64)
  return dict(logp=f(logp), old=f(old), ref=f(ref), cmask=cmask, truncated=truncated,
              rewards=f(rewards))


def value_and_grad_fn(cfg, jit=False):
  """(loss, metrics), d loss / d logp. Eager by default: 192 configs would mean 192 compiles,
  while eager ops are compiled once per shape; `test_jit_matches_eager` covers jit."""
  def f(logp, old, ref, adv, cmask, truncated):
    return grpo.grpo_loss(logp, old, ref, adv, cmask, truncated, cfg)
  vg = jax.value_and_grad(f, has_aux=True)
  return jax.jit(vg) if jit else vg


# ----------------------------------------------------------------------------------------------
# Every variant against the reference: loss, gradient, metrics
# ----------------------------------------------------------------------------------------------
COMBOS = list(itertools.product(grpo.LOSS_TYPES, grpo.SCALE_REWARDS,
                                grpo.IMPORTANCE_SAMPLING_LEVELS, (0.0, 0.04), (None, 0.28),
                                (False, True)))


@pytest.mark.parametrize("loss_type,scale_rewards,level,beta,epsilon_high,mask_truncated", COMBOS)
def test_loss_and_grad_match_reference(loss_type, scale_rewards, level, beta, epsilon_high,
                                       mask_truncated):
  cfg = GRPOConfig(num_generations=G, max_completion_length=L_MAX, beta=beta,
                   epsilon_high=epsilon_high, loss_type=loss_type, scale_rewards=scale_rewards,
                   importance_sampling_level=level, mask_truncated_completions=mask_truncated)
  d = make_batch()
  adv_ref = ref_advantages(d["rewards"], G, scale_rewards)
  adv = grpo.group_advantages(jnp.float32(d["rewards"]), G, scale_rewards)
  np.testing.assert_allclose(adv, adv_ref, rtol=1e-5, atol=1e-6)

  f32 = lambda x: jnp.asarray(x, jnp.float32)
  ref_in = f32(d["ref"]) if beta > 0 else None  # beta == 0 needs no reference model
  (loss, metrics), grad = value_and_grad_fn(cfg)(f32(d["logp"]), f32(d["old"]), ref_in, adv,
                                                 f32(d["cmask"]), jnp.asarray(d["truncated"]))
  ref_fn = lambda lp: ref_loss(lp, d["old"], d["ref"], adv_ref, d["cmask"], d["truncated"], cfg)
  np.testing.assert_allclose(loss, ref_fn(d["logp"]), rtol=1e-5, atol=1e-6)
  grad_ref = ref_grad(ref_fn, d["logp"])
  assert np.abs(grad_ref).max() > 1e-3  # the comparison below is not between two zeros
  np.testing.assert_allclose(grad, grad_ref, rtol=1e-4, atol=1e-6)
  assert np.all(np.asarray(grad)[d["cmask"] == 0] == 0)

  want = ref_metrics(d["logp"], d["old"], d["ref"], adv_ref, d["cmask"], d["truncated"], cfg)
  if beta == 0:
    assert "kl" not in metrics
    del want["kl"]
  assert want.keys() <= metrics.keys()
  for k, v in want.items():
    np.testing.assert_allclose(metrics[k], v, rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("level", grpo.IMPORTANCE_SAMPLING_LEVELS)
@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
def test_jit_matches_eager(loss_type, level):
  cfg = GRPOConfig(num_generations=G, max_completion_length=L_MAX, loss_type=loss_type,
                   importance_sampling_level=level, mask_truncated_completions=True,
                   epsilon_high=0.28)
  d = make_batch(seed=7)
  args = [jnp.asarray(d[k], jnp.float32) for k in ("logp", "old", "ref")]
  args += [grpo.group_advantages(jnp.float32(d["rewards"]), G), d["cmask"], d["truncated"]]
  (loss, metrics), grad = value_and_grad_fn(cfg)(*args)
  (loss_j, metrics_j), grad_j = value_and_grad_fn(cfg, jit=True)(*args)
  np.testing.assert_allclose(loss_j, loss, rtol=1e-6)
  np.testing.assert_allclose(grad_j, grad, rtol=1e-6, atol=1e-9)
  for k in metrics:
    np.testing.assert_allclose(metrics_j[k], metrics[k], rtol=1e-6, err_msg=k)


def test_clipping_happens_on_both_sides():
  """The inputs of the combo test exercise both clip branches (else that test proves less)."""
  d = make_batch()
  cfg = GRPOConfig(num_generations=G, max_completion_length=L_MAX, beta=0.0)
  adv = grpo.group_advantages(jnp.float32(d["rewards"]), G)
  _, m = grpo.grpo_loss(d["logp"], d["old"], None, adv, d["cmask"], d["truncated"], cfg)
  assert m["clip_ratio/low_mean"] > 0 and m["clip_ratio/high_mean"] > 0
  assert m["clip_ratio/region_mean"] < 1


# ----------------------------------------------------------------------------------------------
# On-policy gradient identities
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", grpo.IMPORTANCE_SAMPLING_LEVELS)
@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
@pytest.mark.parametrize("pass_old", [True, False])
def test_on_policy_gradient_is_advantage_weighted_reinforce(loss_type, level, pass_old):
  """At pi = pi_old and beta = 0 every ratio is 1 and unclipped, so d loss / d logp_it is
  -A_i * w_it with the aggregation weight w: grpo 1/(B |o_i|), bnpo/dapo 1/N (N loss tokens in
  the batch), dr_grpo 1/(B L_max). GSPO's sequence ratio has the same gradient here, since
  d s_i / d logp_it = 1/|o_i| and each of its |o_i| identical terms carries the same weight."""
  cfg = GRPOConfig(num_generations=G, max_completion_length=L_MAX, beta=0.0, loss_type=loss_type,
                   importance_sampling_level=level, mask_truncated_completions=True)
  d = make_batch(seed=1)
  adv = grpo.group_advantages(jnp.float32(d["rewards"]), G)
  old = jnp.float32(d["logp"]) if pass_old else None
  grad = jax.grad(lambda lp: grpo.grpo_loss(lp, old, None, adv, d["cmask"], d["truncated"],
                                            cfg)[0])(jnp.float32(d["logp"]))
  mask = d["cmask"] * (1 - d["truncated"][:, None])
  lengths, n_tokens = mask.sum(1), mask.sum()
  for i in range(B):
    for t in range(T):
      if not mask[i, t]:
        want = 0.0
      elif loss_type == "grpo":
        want = -adv[i] / (B * lengths[i])
      elif loss_type == "dr_grpo":
        want = -adv[i] / (B * L_MAX)
      else:
        want = -adv[i] / n_tokens
      np.testing.assert_allclose(grad[i, t], want, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------------------------
# DAPO across micro-batches
# ----------------------------------------------------------------------------------------------
def test_dapo_num_items_in_batch_makes_micro_batches_exact():
  """Summed over micro-batches with the global token count, dapo equals the full-batch loss
  (and so does its gradient); the per-micro-batch token mean (bnpo) does not."""
  cfg = GRPOConfig(num_generations=G, max_completion_length=L_MAX, loss_type="dapo")
  d = make_batch(seed=2)
  adv = grpo.group_advantages(jnp.float32(d["rewards"]), G)
  args = lambda s: (d["old"][s], d["ref"][s], adv[s], d["cmask"][s], d["truncated"][s])
  loss = lambda lp, s, n=None: grpo.grpo_loss(lp, *args(s), cfg, num_items_in_batch=n)[0]
  full_loss, full_grad = jax.value_and_grad(loss)(jnp.float32(d["logp"]), slice(None))
  halves = [slice(0, G), slice(G, 2 * G), slice(2 * G, B)]  # equal shapes: one eager compile
  n = sum(grpo.num_loss_tokens(d["cmask"][s], d["truncated"][s], cfg) for s in halves)
  parts = [jax.value_and_grad(loss)(jnp.float32(d["logp"][s]), s, n) for s in halves]
  np.testing.assert_allclose(sum(p[0] for p in parts), full_loss, rtol=1e-6)
  np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), full_grad, rtol=1e-6)
  local = sum(loss(jnp.float32(d["logp"][s]), s) for s in halves) / len(halves)
  assert abs(local - full_loss) > 1e-3


# ----------------------------------------------------------------------------------------------
# Advantages, KL, edge cases
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale_rewards", grpo.SCALE_REWARDS)
def test_equal_rewards_give_zero_advantages(scale_rewards):
  rewards = jnp.array([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])
  adv = grpo.group_advantages(rewards, 3, scale_rewards)
  assert np.all(np.isfinite(adv)) and np.all(adv[:3] == 0)
  np.testing.assert_allclose(adv, ref_advantages(rewards, 3, scale_rewards), rtol=1e-5)
  all_equal = grpo.group_advantages(jnp.full((6,), 0.5), 3, scale_rewards)
  assert np.all(all_equal == 0)


def test_group_advantages_uses_unbiased_std():
  adv = grpo.group_advantages(jnp.array([0.0, 1.0]), 2)  # ddof=1: std = sqrt(1/2)
  np.testing.assert_allclose(adv, [-0.5 / (math.sqrt(0.5) + 1e-4), 0.5 / (math.sqrt(0.5) + 1e-4)],
                             rtol=1e-6)


def test_reward_stats():
  rewards = np.array([1.0, 1.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.0])
  s = grpo.reward_stats(jnp.float32(rewards), 3)
  np.testing.assert_allclose(s["reward/mean"], rewards.mean(), rtol=1e-6)
  np.testing.assert_allclose(s["reward/std"], ref_std(list(rewards)), rtol=1e-6)
  np.testing.assert_allclose(s["frac_reward_zero_std"], 1 / 3)


@pytest.mark.parametrize("g", [3, 6, 7, 16])
def test_groups_of_equal_float_rewards_have_zero_std(g):
  # Rewards such as 1 + 0.5 x 0.97: a float32 std of G equal copies is ~1e-7, not 0, for most G.
  values = np.random.default_rng(g).uniform(0, 3, size=64).astype(np.float32)
  assert np.all(np.asarray(grpo.zero_std_groups(np.repeat(values, g), g)))
  assert float(grpo.reward_stats(jnp.asarray(np.repeat(values, g)), g)["frac_reward_zero_std"]) == 1
  varied = np.repeat(values, g)
  varied[::g] += 1e-3
  assert not np.any(np.asarray(grpo.zero_std_groups(varied, g)))


def test_kl_k3():
  rng = np.random.default_rng(3)
  logp = rng.normal(-2.0, 1.0, size=(4, 50))
  ref = logp + rng.normal(0.0, 1.0, size=logp.shape) * rng.choice([1e-6, 1e-3, 1.0, 5.0],
                                                                  size=logp.shape)
  logp, ref = logp.astype(np.float32), ref.astype(np.float32)
  kl = np.asarray(grpo.kl_k3(logp, ref))
  assert np.all(kl >= 0)
  assert np.all(np.asarray(grpo.kl_k3(logp, logp)) == 0)
  want = np.zeros(logp.shape)
  for idx in np.ndindex(*logp.shape):
    dd = float(ref[idx]) - float(logp[idx])
    want[idx] = math.exp(dd) - dd - 1
  np.testing.assert_allclose(kl, want, rtol=1e-4, atol=1e-9)


def test_beta_zero_ignores_reference():
  d = make_batch(seed=4)
  cfg = GRPOConfig(num_generations=G, max_completion_length=L_MAX, beta=0.0)
  adv = grpo.group_advantages(jnp.float32(d["rewards"]), G)
  with_ref = grpo.grpo_loss(d["logp"], d["old"], d["ref"], adv, d["cmask"], None, cfg)[0]
  without = grpo.grpo_loss(d["logp"], d["old"], None, adv, d["cmask"], None, cfg)[0]
  assert with_ref == without


def test_all_masked_batch_is_finite():
  d = make_batch(seed=5)
  zero = np.zeros_like(d["cmask"])
  adv = grpo.group_advantages(jnp.float32(d["rewards"]), G)
  for loss_type in grpo.LOSS_TYPES:
    for level in grpo.IMPORTANCE_SAMPLING_LEVELS:
      cfg = GRPOConfig(num_generations=G, max_completion_length=L_MAX, loss_type=loss_type,
                       importance_sampling_level=level)
      (loss, metrics), grad = jax.value_and_grad(
          lambda lp: grpo.grpo_loss(lp, d["old"], d["ref"], adv, zero, None, cfg,
                                    entropy=np.ones_like(zero)), has_aux=True)(
                                        jnp.float32(d["logp"]))
      assert loss == 0 and np.all(np.asarray(grad) == 0)
      for k, v in metrics.items():
        assert np.isfinite(v), k


def test_entropy_metric_and_bf16_inputs():
  d = make_batch(seed=6)
  cfg = GRPOConfig(num_generations=G, max_completion_length=L_MAX)
  adv = grpo.group_advantages(jnp.float32(d["rewards"]), G)
  entropy = np.random.default_rng(6).uniform(0, 2, size=(B, T))
  bf = lambda x: jnp.asarray(x, jnp.bfloat16)
  loss, m = grpo.grpo_loss(bf(d["logp"]), bf(d["old"]), bf(d["ref"]), adv, d["cmask"], None, cfg,
                           entropy=entropy)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(m["entropy"], (entropy * d["cmask"]).sum() / d["cmask"].sum(),
                             rtol=1e-5)


@pytest.mark.parametrize("field,value", [
    ("loss_type", "ppo"), ("scale_rewards", True), ("importance_sampling_level", "tok"),
    ("beta", -0.1), ("epsilon", 0.0), ("epsilon_high", -0.1), ("num_generations", 1),
    ("max_completion_length", 0), ("mask_truncated_completions", "yes")])
def test_config_errors_name_the_field(field, value):
  kw = dict(num_generations=G, max_completion_length=L_MAX)
  kw[field] = value
  with pytest.raises(ValueError, match=field):
    GRPOConfig(**kw)


def test_argument_errors_name_the_argument():
  d = make_batch()
  adv = grpo.group_advantages(jnp.float32(d["rewards"]), G)
  cfg = GRPOConfig(num_generations=G, max_completion_length=L_MAX, beta=0.04)
  args = [d["logp"], d["old"], d["ref"], adv, d["cmask"], None]
  cases = [(2, None, "ref_logp"), (3, adv[:-1], "advantages"), (4, d["cmask"][:, :-1],
                                                                "completion_mask")]
  for pos, bad, name in cases:
    a = list(args)
    a[pos] = bad
    with pytest.raises(ValueError, match=name):
      grpo.grpo_loss(*a, cfg)
  with pytest.raises(ValueError, match="truncated"):
    grpo.grpo_loss(*args, cfg.replace(mask_truncated_completions=True))
  with pytest.raises(ValueError, match="max_completion_length"):
    grpo.grpo_loss(*args, cfg.replace(max_completion_length=T - 1))
  with pytest.raises(ValueError, match="num_items_in_batch"):
    grpo.grpo_loss(*args, cfg, num_items_in_batch=10)
  with pytest.raises(ValueError, match="rewards"):
    grpo.group_advantages(jnp.ones(7), G)
  with pytest.raises(ValueError, match="scale_rewards"):
    grpo.group_advantages(jnp.ones(6), G, "std")


def test_group_scaling_turns_a_small_second_reward_into_unit_advantages():
  # Why the R1 pipeline's RL stages scale by the batch std (experiments/configs/r1_gpu.flags):
  # in a group whose accuracy is uniform, a 0.5-weighted language score that differs by a few
  # hundredths is all that varies, and dividing by the group's own std makes its advantages as
  # large as those of a group that differs in accuracy.
  accuracy = np.array([1, 1, 1, 1, 0, 1, 0, 0], np.float32)
  language = np.array([0.98, 0.99, 1.0, 0.97, 1.0, 1.0, 1.0, 1.0], np.float32)
  rewards = jnp.asarray(accuracy + 0.5 * language)
  group = np.asarray(grpo.group_advantages(rewards, 4, "group")).reshape(2, 4)
  batch = np.asarray(grpo.group_advantages(rewards, 4, "batch")).reshape(2, 4)
  np.testing.assert_allclose(np.abs(group).max(1), [1.144, 1.500], atol=1e-3)  # equal footing
  assert np.abs(batch[0]).max() < 0.05 < 0.5 < np.abs(batch[1]).max()
