"""Algorithm 1 of DeepSeekMath / DeepSeek-R1: iterative GRPO with a periodically reset reference.

    for iteration = 1..I:                      (every `ref_model_sync_steps` steps)
      π_ref ← π_θ                              (`sync_ref_model`; beta = 0 keeps no π_ref)
      for step = 1..M:
        sample B prompts; π_old ← π_θ
        sample G completions per prompt from π_old       (r1jax.sampling, one jitted call)
        rule-based rewards, group-normalized advantages    (r1jax.rewards, r1jax.grpo)
        for μ = 1..num_iterations: shuffled minibatches → one jitted update step each

Temperature: the sampler draws from softmax(logits / T) (then top-k/top-p) and returns
log-probs of the sampled tokens under softmax(logits / T) over the full vocabulary; the trainer
computes π_θ, π_old and π_ref log-probs with the same logits / T, so the ratio is exactly 1 at
π_θ = π_old whatever T is (TRL does the same).

The train state is one pytree (params, optimizer state, reference params, step, PRNG key, data
position) that orbax saves whole, so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from r1jax import accumulate, grpo, layout, model, sampling, sharding
from r1jax import rewards as rewards_lib
from r1jax.config import ModelConfig, dtype_from_name
from r1jax.data import ProblemStream

log = logging.getLogger("r1jax")
State = dict[str, Any]
# (completions, problems) -> (rewards [N], components {name: [N]}, stats {name: number})
RewardFn = Callable[[list[str], list[Any]], tuple[np.ndarray, dict, dict]]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Hyperparameters of GRPO training. Names follow TRL's GRPOConfig where it has one."""

  # Rollouts. A step samples `prompts_per_step` prompts x `num_generations` completions; TRL's
  # global generation batch (per_device_train_batch_size x devices x steps_per_generation) is
  # prompts_per_step * num_generations here.
  prompts_per_step: int = 8
  num_generations: int = 8
  max_prompt_length: int = 256
  max_completion_length: int = 256
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  stop_strings: tuple[str, ...] = ()
  # Optimization: AdamW, warm-up then a schedule, global-norm clipping.
  learning_rate: float = 1e-6
  lr_scheduler_type: str = "constant"  # constant | linear | cosine (after warm-up)
  warmup_steps: int = 0
  weight_decay: float = 0.0
  adam_beta1: float = 0.9
  adam_beta2: float = 0.99
  adam_epsilon: float = 1e-8
  max_grad_norm: float = 1.0
  max_steps: int = 100
  num_iterations: int = 1  # μ: passes over each generation batch.
  num_minibatches: int = 1  # optimizer steps per pass; each sees B*G / num_minibatches rows.
  # Reference policy. Algorithm 1 resets π_ref ← π_θ every `ref_model_sync_steps` steps.
  # TRL mixes π_ref ← α π_θ + (1 − α) π_ref with α = ref_model_mixup_alpha (TRL's default 0.6);
  # the paper's reset is α = 1, our default.
  sync_ref_model: bool = False
  ref_model_sync_steps: int = 64
  ref_model_mixup_alpha: float = 1.0
  # DAPO dynamic sampling: drop groups whose rewards are all equal and refill from new prompts.
  dynamic_sampling: bool = False
  max_resample_rounds: int = 4
  # DAPO soft overlong punishment: overlong_penalty x rewards.overlong_penalty (0 up to
  # max_completion_length - overlong_buffer tokens, -1 at the limit) is added to each
  # completion's reward. 0 tokens: off.
  overlong_buffer: int = 0
  overlong_penalty: float = 1.0
  # Memory levers.
  remat: str = "none"
  logprob_chunk_size: Optional[int] = None
  # Micro-batches per optimizer step (one jitted step, gradients summed; exact for every
  # loss_type, see r1jax.accumulate).
  gradient_accumulation_steps: int = 1
  # Rows per chunk of the π_old / π_ref log-prob passes (None: all rows at once).
  logprob_batch_size: Optional[int] = None
  # Cost that follows the real tokens: the rows of each update minibatch (and of the π_old /
  # π_ref passes) are sorted by length into micro-batches (chunks), each cut to the shortest of
  # `length_buckets` lengths, multiples of (max_prompt_length + max_completion_length) /
  # length_buckets, that holds its longest row (r1jax.layout, accumulate.BucketedUpdateStep).
  # Exact; one compilation per length. 0 or 1: off, every pass has the fixed length P + N.
  length_buckets: int = 4
  # dtype of Adam's first moment (e.g. "bfloat16" halves it); None: the params' dtype.
  adam_mu_dtype: Optional[str] = None
  seed: int = 0

  def validate(self):
    """Raises ValueError naming the flag at fault."""
    positive = ("prompts_per_step", "num_generations", "max_prompt_length",
                "max_completion_length", "max_steps", "num_iterations", "num_minibatches",
                "ref_model_sync_steps")
    for name in positive:
      if getattr(self, name) < 1:
        raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
    if self.num_generations < 2:
      raise ValueError("--num_generations must be >= 2: group advantages need two samples")
    if (self.prompts_per_step * self.num_generations) % self.num_minibatches:
      raise ValueError(f"--num_minibatches={self.num_minibatches} must divide prompts_per_step "
                       f"* num_generations = {self.prompts_per_step * self.num_generations}")
    if self.temperature <= 0:
      raise ValueError(f"--temperature must be > 0 for training, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"--top_p must be in (0, 1], got {self.top_p}")
    if self.top_k < 0:
      raise ValueError(f"--top_k must be >= 0, got {self.top_k}")
    if self.learning_rate <= 0 or not np.isfinite(self.learning_rate):
      raise ValueError(f"--learning_rate must be a positive number, got {self.learning_rate}")
    if self.lr_scheduler_type not in ("constant", "linear", "cosine"):
      raise ValueError(f"--lr_scheduler_type={self.lr_scheduler_type!r}; expected constant, "
                       "linear or cosine")
    if not 0 < self.ref_model_mixup_alpha <= 1:
      raise ValueError("--ref_model_mixup_alpha must be in (0, 1]")
    rows = self.prompts_per_step * self.num_generations
    if self.gradient_accumulation_steps < 1 or (
        (rows // self.num_minibatches) % self.gradient_accumulation_steps):
      raise ValueError(f"--gradient_accumulation_steps={self.gradient_accumulation_steps} must "
                       f"divide the {rows // self.num_minibatches} rows of a minibatch")
    if self.logprob_batch_size is not None and (
        self.logprob_batch_size < 1 or rows % self.logprob_batch_size):
      raise ValueError(f"--logprob_batch_size={self.logprob_batch_size} must divide "
                       f"prompts_per_step * num_generations = {rows}")
    if not 0 <= self.overlong_buffer <= self.max_completion_length:
      raise ValueError(f"--overlong_buffer={self.overlong_buffer} must be in [0, "
                       f"max_completion_length={self.max_completion_length}]")
    if self.overlong_penalty < 0 or not np.isfinite(self.overlong_penalty):
      raise ValueError(f"--overlong_penalty must be >= 0, got {self.overlong_penalty}")
    if self.length_buckets < 0:
      raise ValueError(f"--length_buckets must be >= 0 (0 or 1: off), got {self.length_buckets}")
    if self.remat not in model.REMAT_POLICIES:
      raise ValueError(f"--remat={self.remat!r}; expected one of {sorted(model.REMAT_POLICIES)}")


def make_optimizer(cfg: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with linear warm-up, then constant / linear decay / cosine decay to 0."""
  warm = max(cfg.warmup_steps, 0)
  rest = max(cfg.max_steps * cfg.num_iterations * cfg.num_minibatches - warm, 1)
  if cfg.lr_scheduler_type == "constant":
    after = optax.constant_schedule(cfg.learning_rate)
  elif cfg.lr_scheduler_type == "linear":
    after = optax.linear_schedule(cfg.learning_rate, 0.0, rest)
  else:
    after = optax.cosine_decay_schedule(cfg.learning_rate, rest)
  if warm:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.learning_rate, warm), after], [warm])
  else:
    schedule = after
  tx = optax.chain(
      optax.clip_by_global_norm(cfg.max_grad_norm),
      optax.adamw(schedule, b1=cfg.adam_beta1, b2=cfg.adam_beta2, eps=cfg.adam_epsilon,
                  weight_decay=cfg.weight_decay,
                  mu_dtype=dtype_from_name(cfg.adam_mu_dtype) if cfg.adam_mu_dtype else None))
  return tx, schedule


def init_state(params, cfg: TrainConfig, optimizer, loss_cfg: grpo.GRPOConfig) -> State:
  """The whole train state as a pytree of arrays (what orbax saves).

  The state owns `params`: the jitted update donates their buffers, so callers must not reuse
  the arrays they passed in.
  """
  return {
      "params": params,
      "opt_state": optimizer.init(params),
      # beta = 0: no reference policy is kept or evaluated.
      "ref_params": jax.tree.map(jnp.copy, params) if loss_cfg.beta != 0 else None,
      "step": jnp.int32(0),
      "rng": jax.random.PRNGKey(cfg.seed),
      "data_position": jnp.int32(0),  # index into the ProblemStream
  }


# ----------------------------------------------------------------------------------------------
# Jitted pieces
# ----------------------------------------------------------------------------------------------
# The log-prob forward of every pass, on the compact right-padded layout (r1jax.layout).
completion_log_probs = layout.completion_log_probs


def make_logprob_fn(model_config: ModelConfig, cfg: TrainConfig):
  """Jitted (params, batch) -> completion log-probs [B,N], for π_old and π_ref."""

  def fn(params, batch):
    logp, _ = completion_log_probs(params, batch["prompt_tokens"], batch["prompt_mask"],
                                   batch["completion_tokens"], batch["completion_mask"],
                                   model_config, temperature=cfg.temperature,
                                   chunk_size=cfg.logprob_chunk_size)
    return logp

  return jax.jit(fn)


def make_update_step(model_config: ModelConfig, cfg: TrainConfig, loss_cfg: grpo.GRPOConfig,
                     optimizer: optax.GradientTransformation, schedule: optax.Schedule):
  """One optimizer step: (params, opt_state, batch) -> (params, opt_state, metrics); one jit,
  or with `length_buckets` > 1 an accumulate.BucketedUpdateStep of several.

  batch: prompt_tokens/prompt_mask [b,P], completion_tokens/completion_mask [b,N],
  advantages [b], truncated [b], and old_logp [b,N] (absent when μ = 1: then π_old = π_θ and
  the ratio is 1 with the gradient of π_θ), ref_logp [b,N] (absent when beta = 0).
  """

  step = accumulate.make_update_step(model_config, cfg, loss_cfg, optimizer,
                                     cfg.gradient_accumulation_steps)
  step = jax.jit(step, donate_argnums=(0, 1))
  if cfg.length_buckets > 1:  # rows sorted by length into micro-batches of their own lengths
    step = accumulate.BucketedUpdateStep(step, model_config, cfg, loss_cfg, optimizer,
                                         cfg.gradient_accumulation_steps, cfg.length_buckets)
  return step


def make_chunked_logprob_fn(model_config: ModelConfig, cfg: TrainConfig):
  """(params, batch) -> completion log-probs [B,N] of the π_old / π_ref passes, in chunks of
  `logprob_batch_size` rows (length-sorted and cut to their bucket with `length_buckets`)."""
  fn = jax.jit(accumulate.chunked_logprob_fn(make_logprob_fn(model_config, cfg),
                                             cfg.logprob_batch_size))
  if cfg.length_buckets > 1:
    fn = accumulate.BucketedLogprobFn(fn, model_config, cfg, cfg.logprob_batch_size,
                                      cfg.length_buckets)
  return fn


# TrainConfig fields that no jitted function of the trainer reads: sampling (the sampler is
# jitted on its own SamplingConfig), data, rewards, the reference reset and the seed. They are
# reset to their defaults in the key of `_compiled`, so that trainers differing only in them
# share one compiled update step and log-prob pass. Every other field stays in the key: a
# field added to TrainConfig is part of the key unless it is listed here.
HOST_ONLY_FIELDS = ("prompts_per_step", "max_prompt_length", "top_p", "top_k", "stop_strings",
                    "sync_ref_model", "ref_model_sync_steps", "ref_model_mixup_alpha",
                    "dynamic_sampling", "max_resample_rounds", "overlong_buffer",
                    "overlong_penalty", "seed")


def compiled_key(cfg: TrainConfig) -> TrainConfig:
  """`cfg` with the HOST_ONLY_FIELDS at their defaults: what the jitted functions depend on."""
  defaults = TrainConfig()
  return dataclasses.replace(cfg, **{f: getattr(defaults, f) for f in HOST_ONLY_FIELDS})


@functools.lru_cache(maxsize=16)
def _compiled(model_config: ModelConfig, key: TrainConfig, loss_cfg: grpo.GRPOConfig):
  """(optimizer, schedule, jitted update step, jitted log-prob pass) of one configuration
  (`key` = compiled_key(cfg)), built once in a process: trainers of equal configurations (a
  resumed run, the tests) reuse the compiled functions instead of compiling them again."""
  optimizer, schedule = make_optimizer(key)
  update_step = make_update_step(model_config, key, loss_cfg, optimizer, schedule)
  logprob_fn = make_chunked_logprob_fn(model_config, key)
  return optimizer, schedule, update_step, logprob_fn


# ----------------------------------------------------------------------------------------------
# Host-side pieces: prompts, rollouts, the step
# ----------------------------------------------------------------------------------------------
def encode_prompts(tokenizer, texts: Sequence[str], max_len: int, add_bos: bool):
  """Tokenizes and left-pads prompts to exactly `max_len` (fixed shapes: one compilation)."""
  ids = [tokenizer.encode(t, add_bos=add_bos) for t in texts]
  longest = max(len(i) for i in ids)
  if longest > max_len:
    raise ValueError(f"a prompt has {longest} tokens, more than --max_prompt_length={max_len}")
  return sampling.left_pad(ids, tokenizer.pad_id, max_len)


def text_stops(tokenizer, stop_strings: Sequence[str]) -> Optional[sampling.StopStrings]:
  """The sampler's matcher of `stop_strings` on the generated text (None without any): a stop
  string stops a row whatever tokens spell it (BPE spells "</answer>" differently after a space,
  a period or a newline). Tables come from `tokenizer.token_bytes()`."""
  stop_strings = tuple(s for s in stop_strings if s)
  if not stop_strings:
    return None
  return sampling.StopStrings(stop_strings, tokenizer.token_bytes())


def decode_completions(tokenizer, out: sampling.SampleOutput, stop_strings: Sequence[str] = ()
                       ) -> tuple[sampling.SampleOutput, list[str]]:
  """(out cut at the first stop string of each completion's text, the decoded texts): nothing
  past a stop string reaches rewards, the loss or logs (sampling.cut_at_stop_strings)."""
  return sampling.cut_at_stop_strings(out, tokenizer.decode, stop_strings, tokenizer.pad_id)


@dataclasses.dataclass
class Rollout:
  """One generation batch: B prompts x G completions, scored, as host numpy arrays."""
  problems: list  # [B*G], problem of each row
  completions: list[str]  # [B*G]
  batch: dict[str, np.ndarray]  # prompt/completion tokens and masks, truncated
  rewards: np.ndarray  # [B*G]
  components: dict[str, np.ndarray]
  reward_stats: dict[str, float]
  sample_time_s: float
  reward_time_s: float
  generated_tokens: int


class GRPOTrainer:
  """Runs Algorithm 1. Construct, then call `train(state, ...)` or `step(state)` repeatedly."""

  def __init__(self, model_config: ModelConfig, cfg: TrainConfig, loss_cfg: grpo.GRPOConfig,
               tokenizer, train_problems: Sequence[Any], format_prompt: Callable[[Any], str],
               reward_fn: RewardFn, *, add_bos: bool = True, mesh=None,
               mesh_rules: sharding.Rules = sharding.DEFAULT_RULES):
    cfg.validate()
    if loss_cfg.num_generations != cfg.num_generations:
      raise ValueError("GRPOConfig.num_generations and TrainConfig.num_generations differ")
    if loss_cfg.max_completion_length != cfg.max_completion_length:
      raise ValueError("GRPOConfig.max_completion_length and --max_completion_length differ")
    self.model_config, self.cfg, self.loss_cfg = model_config, cfg, loss_cfg
    self.tokenizer = tokenizer
    self.stream = ProblemStream(train_problems, cfg.seed)
    self.format_prompt = format_prompt
    self.reward_fn = reward_fn
    self.add_bos = add_bos
    self._warned_other_terms_decide = False
    eos = tuple(tokenizer.eos_ids)
    self.sampling_config = sampling.SamplingConfig(
        max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature,
        top_k=cfg.top_k, top_p=cfg.top_p, num_samples=cfg.num_generations, eos_ids=eos,
        stop_strings=text_stops(tokenizer, cfg.stop_strings), pad_id=tokenizer.pad_id)
    # Shared by the trainers of one configuration (see `_compiled`).
    self.optimizer, self.schedule, self.update_step, self.logprob_fn = _compiled(
        model_config, compiled_key(cfg), loss_cfg)
    self.generate = lambda params, tokens, mask, key: sampling.generate(  # noqa: E731
        params, model_config, tokens, mask, key, self.sampling_config)
    # On a mesh (r1jax.sharding): the same functions jitted with the state's shardings.
    self.mesh, self.state_shardings = mesh, None
    if mesh is not None:
      self.state_shardings = sharding.train_state_shardings(model_config, self.init_state, mesh,
                                                            mesh_rules)
      psh, osh = self.state_shardings["params"], self.state_shardings["opt_state"]
      self.update_step = sharding.shard_update_step(self.update_step, psh, osh, mesh,
                                                    mesh_rules)
      self.logprob_fn = sharding.shard_logprob_fn(self.logprob_fn, psh, mesh, mesh_rules)
      self.generate = sharding.shard_generate(model_config, self.sampling_config, psh, mesh,
                                              mesh_rules)

  def init_state(self, params) -> State:
    state = init_state(params, self.cfg, self.optimizer, self.loss_cfg)
    if self.state_shardings is not None:
      state = sharding.shard_params(state, self.state_shardings)
    return state

  # -- rollouts ---------------------------------------------------------------------------------
  def rollout(self, params, problems: list, key) -> Rollout:
    """Samples G completions for each problem with π_old = params, decodes and scores them."""
    prompts = [self.format_prompt(p) for p in problems]
    ptoks, pmask = encode_prompts(self.tokenizer, prompts, self.cfg.max_prompt_length,
                                  self.add_bos)
    t0 = time.perf_counter()
    out = self.generate(params, ptoks, pmask, key)
    out = jax.device_get(out)
    sample_time = time.perf_counter() - t0
    rows = [p for p in problems for _ in range(self.cfg.num_generations)]
    out, completions = decode_completions(self.tokenizer, out, self.cfg.stop_strings)
    t0 = time.perf_counter()
    rewards, components, stats = self.reward_fn(completions, rows)
    rewards = np.asarray(rewards, np.float32)
    if self.cfg.overlong_buffer:
      overlong = rewards_lib.overlong_penalty(out.lengths, self.cfg.max_completion_length,
                                              self.cfg.overlong_buffer)
      components = dict(components, overlong=overlong)
      rewards = rewards + np.float32(self.cfg.overlong_penalty) * overlong
    reward_time = time.perf_counter() - t0
    batch = {
        "prompt_tokens": np.asarray(out.prompt_tokens), "prompt_mask": np.asarray(out.prompt_mask),
        "completion_tokens": np.asarray(out.tokens), "completion_mask": np.asarray(out.mask),
        "truncated": np.asarray(out.truncated),
    }
    return Rollout(rows, completions, batch, rewards, components,
                   dict(stats), sample_time, reward_time, int(np.sum(out.lengths)))

  def _sample_batch(self, params, position: int, key):
    """B prompts' rollouts; with dynamic sampling, groups of equal rewards are replaced by
    groups sampled from further prompts (up to `max_resample_rounds` rounds). Returns the
    rollout and the new data position."""
    b, g = self.cfg.prompts_per_step, self.cfg.num_generations
    key, sub = jax.random.split(key)
    problems = self.stream.get(position, b)
    position += b
    ro = self.rollout(params, problems, sub)
    if not self.cfg.dynamic_sampling:
      return ro, position, {}
    keep = _informative_groups(ro.rewards, g)
    rounds = 0
    pool = [ro]
    while keep.sum() < b and rounds < self.cfg.max_resample_rounds:
      rounds += 1
      key, sub = jax.random.split(key)
      more = self.rollout(params, self.stream.get(position, b), sub)
      position += b
      pool.append(more)
      keep = np.concatenate([keep, _informative_groups(more.rewards, g)])
    merged = _concat_rollouts(pool)
    # Informative groups first; if too few, fill with uninformative ones (advantage 0: they add
    # only the KL term), keeping the batch shape fixed.
    order = np.concatenate([np.flatnonzero(keep), np.flatnonzero(~keep)])[:b]
    ro = _select_groups(merged, order, g)
    return ro, position, {"dynamic_sampling_rounds": rounds,
                          "informative_groups": float(min(keep.sum(), b)) / b}

  # -- one step of Algorithm 1 -------------------------------------------------------------------
  def step(self, state: State) -> tuple[State, dict[str, float], Rollout]:
    cfg = self.cfg
    t_start = time.perf_counter()
    step = int(state["step"])
    if (self.loss_cfg.beta != 0 and cfg.sync_ref_model and step > 0
        and step % cfg.ref_model_sync_steps == 0):
      a = cfg.ref_model_mixup_alpha
      state["ref_params"] = jax.tree.map(lambda p, r: a * p + (1 - a) * r, state["params"],
                                         state["ref_params"])
    rng, key_sample, key_shuffle = jax.random.split(state["rng"], 3)
    ro, position, ds_metrics = self._sample_batch(state["params"], int(state["data_position"]),
                                                  key_sample)
    adv = grpo.group_advantages(jnp.asarray(ro.rewards), cfg.num_generations,
                                self.loss_cfg.scale_rewards)
    batch = dict(ro.batch, advantages=np.asarray(adv))
    t_lp = time.perf_counter()
    if cfg.num_iterations > 1:  # μ > 1: π_old must be frozen before the first update.
      batch["old_logp"] = np.asarray(self.logprob_fn(state["params"], batch))
    if self.loss_cfg.beta != 0:
      batch["ref_logp"] = np.asarray(self.logprob_fn(state["ref_params"], batch))
    logprob_time = time.perf_counter() - t_lp

    t_up = time.perf_counter()
    params, opt_state = state["params"], state["opt_state"]
    n = len(ro.rewards)
    mb = n // cfg.num_minibatches
    shuffle_keys = jax.random.split(key_shuffle, cfg.num_iterations)
    update_metrics = []
    for it in range(cfg.num_iterations):
      perm = np.asarray(jax.random.permutation(shuffle_keys[it], n))
      for j in range(cfg.num_minibatches):
        idx = perm[j * mb:(j + 1) * mb]
        minibatch = {k: v[idx] for k, v in batch.items()}
        params, opt_state, m = self.update_step(params, opt_state, minibatch)
        update_metrics.append(m)
    update_metrics = jax.device_get(update_metrics)
    update_time = time.perf_counter() - t_up
    losses = [float(m["loss"]) for m in update_metrics]
    if not np.all(np.isfinite(losses)):
      raise FloatingPointError(
          f"non-finite loss {losses} at step {step + 1}; nothing from this step was saved. "
          "Lower --learning_rate or --max_grad_norm, or check the base checkpoint.")

    new_state = dict(state, params=params, opt_state=opt_state, step=jnp.int32(step + 1),
                     rng=rng, data_position=jnp.int32(position))
    metrics = {k: float(np.mean([m[k] for m in update_metrics])) for k in update_metrics[0]}
    lengths = ro.batch["completion_mask"].sum(1)
    step_time = time.perf_counter() - t_start
    metrics.update(
        step=step + 1,
        reward_mean=float(ro.rewards.mean()), reward_std=float(ro.rewards.std()),
        accuracy=float(np.mean(ro.components.get("accuracy", np.zeros(1)))),
        format_reward=float(np.mean(ro.components.get("format", np.zeros(1)))),
        completion_length_mean=float(lengths.mean()),
        completion_length_max=float(lengths.max()),
        truncated_fraction=float(ro.batch["truncated"].mean()),
        learning_rate=float(self.schedule(
            (step + 1) * cfg.num_iterations * cfg.num_minibatches - 1)),
        step_time_s=step_time, sample_time_s=ro.sample_time_s,
        reward_time_s=ro.reward_time_s, logprob_time_s=logprob_time,
        update_time_s=update_time,
        sample_tokens_per_s=ro.generated_tokens / max(ro.sample_time_s, 1e-9),
        data_position=position,
        **{f"reward_{k}": float(np.mean(v)) for k, v in ro.components.items()},
        **zero_std_shares(ro.rewards, ro.components, cfg.num_generations),
        **{k: float(v) for k, v in ro.reward_stats.items() if k != "reward_time_s"},
        **ds_metrics,
    )
    if not self._warned_other_terms_decide:
      self._warned_other_terms_decide = warn_if_other_terms_decide(
          metrics, self.loss_cfg.scale_rewards)
    metrics.setdefault("kl", 0.0)  # beta = 0: no KL is computed
    metrics["clip_fraction"] = metrics["clip_ratio/region_mean"]
    return new_state, metrics, ro


def zero_std_shares(rewards: np.ndarray, components: dict[str, np.ndarray],
                    g: int) -> dict[str, float]:
  """The share of groups whose G values are all equal: of the reward, and of each component.

  A group of equal rewards gets zero advantage. With several reward components the two shares
  tell apart what decides the other groups: when `frac_zero_std/accuracy` is high but
  `frac_reward_zero_std` is near 0, a small second component (e.g. language consistency) is all
  that differs inside the groups whose accuracy is uniform, and under `scale_rewards="group"`
  its differences are divided by their own small std, so they get advantages of unit size.
  """
  share = lambda values: float(np.mean(grpo.zero_std_groups(values, g)))  # noqa: E731
  return {"frac_reward_zero_std": share(rewards),
          **{f"frac_zero_std/{name}": share(values) for name, values in components.items()}}


def warn_if_other_terms_decide(shares: dict[str, float], scale_rewards: str,
                               margin: float = 0.25) -> bool:
  """Warns, and returns True, under `scale_rewards="group"` when the accuracy is uniform in at
  least `margin` more of the groups than the reward is (`zero_std_shares`): in those groups the
  other reward terms alone differ, and the group's std scales their small differences up to
  advantages as large as a right answer's against a wrong one. In the R1 pipeline's stage 2 on
  2026-12-03 (a 0.5-weighted language score) this held for 60% of the groups and pass@1
  did not move in 60 steps (docs/r1_pipeline.md, "What did not work")."""
  if scale_rewards != "group" or "frac_zero_std/accuracy" not in shares:
    return False
  gap = shares["frac_zero_std/accuracy"] - shares["frac_reward_zero_std"]
  if gap >= margin:
    log.warning("In %.0f%% of this step's groups every completion has the same accuracy but the "
                "reward differs: only the other reward terms decide those groups' advantages, and "
                "--scale_rewards=group scales them to unit size. --scale_rewards=batch keeps them "
                "at their own size.", 100 * gap)
    return True
  return False


def _informative_groups(rewards: np.ndarray, g: int) -> np.ndarray:
  return ~np.asarray(grpo.zero_std_groups(rewards, g))


def _concat_rollouts(pool: list[Rollout]) -> Rollout:
  if len(pool) == 1:
    return pool[0]
  return Rollout(
      problems=sum((r.problems for r in pool), []),
      completions=sum((r.completions for r in pool), []),
      batch={k: np.concatenate([r.batch[k] for r in pool]) for k in pool[0].batch},
      rewards=np.concatenate([r.rewards for r in pool]),
      components={k: np.concatenate([r.components[k] for r in pool])
                  for k in pool[0].components},
      reward_stats={k: float(sum(r.reward_stats.get(k, 0) for r in pool))
                    for k in pool[0].reward_stats},
      sample_time_s=sum(r.sample_time_s for r in pool),
      reward_time_s=sum(r.reward_time_s for r in pool),
      generated_tokens=sum(r.generated_tokens for r in pool))


def _select_groups(ro: Rollout, groups: np.ndarray, g: int) -> Rollout:
  rows = (groups[:, None] * g + np.arange(g)[None]).reshape(-1)
  return dataclasses.replace(
      ro, problems=[ro.problems[i] for i in rows],
      completions=[ro.completions[i] for i in rows],
      batch={k: v[rows] for k, v in ro.batch.items()}, rewards=ro.rewards[rows],
      components={k: v[rows] for k, v in ro.components.items()})
