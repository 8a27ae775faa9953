"""Supervised fine-tuning on (prompt, completion) pairs: the cold start, the rejection-sampling SFT
and the distillation of DeepSeek-R1 (§2.3.1, §2.3.3, §2.4), plus the rejection-sampling filter.

Batch layout, the sampler's: each prompt left-padded to P tokens (BOS first when the tokenizer
has one), then its completion right-padded to C tokens (EOS appended), so that the model is
fine-tuned on exactly the positions and masks it later samples and is RL-trained with.

    tokens     [B, P+C]   pad..pad  prompt  completion EOS  pad..pad
    mask       [B, P+C]   0 ..  0   1 .. 1  1 ..     1  1   0 ..  0
    loss_mask  [B, P+C]   0 ..  0   0 .. 0  1 ..     1  1   0 ..  0

The loss is the cross-entropy of the completion tokens only, averaged over all completion
tokens of the batch (prompt tokens are context, not targets).

The train state (params, optimizer state, step, PRNG key, data position) is one pytree that orbax
saves whole; a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import re
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from r1jax import checkpoint, language, logs, model, trainer
from r1jax.config import ModelConfig
from r1jax.data import ProblemStream

log = logging.getLogger("r1jax")
State = dict[str, Any]


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Example:
  """One SFT pair; `meta` is carried along (question, gold, source, ...) and ignored by training."""
  prompt: str
  completion: str
  meta: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)


def load_examples(path: str) -> list[Example]:
  """Examples of a JSONL file with "prompt" and "completion" string fields (other fields go to
  `meta`); raises naming the file and line of a bad record."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"SFT data file {path!r} does not exist")
  out = []
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        r = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{i}: not JSON ({e})") from e
      if not isinstance(r, dict) or not all(isinstance(r.get(k), str)
                                            for k in ("prompt", "completion")):
        raise ValueError(f"{path}:{i}: expected an object with string 'prompt' and 'completion'")
      out.append(Example(r["prompt"], r["completion"],
                         {k: v for k, v in r.items() if k not in ("prompt", "completion")}))
  if not out:
    raise ValueError(f"SFT data file {path!r} has no examples")
  return out


def write_examples(path: str, examples: Sequence[Example]):
  """Writes examples as JSONL (prompt, completion, then the meta fields), atomically."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for e in examples:
      f.write(json.dumps({"prompt": e.prompt, "completion": e.completion, **e.meta}) + "\n")
  os.replace(tmp, path)


def encode_batch(tokenizer, examples: Sequence[Example], max_prompt_length: int,
                 max_completion_length: int, *, add_bos: bool = True,
                 add_eos: bool = True) -> dict[str, np.ndarray]:
  """Tokenizes a batch into the layout of the module docstring.

  Returns tokens, mask, loss_mask [B, P+C] (int32, bool, bool) and truncated [B] bool (the
  completion was cut at C tokens and lost its EOS). A prompt over P tokens raises.
  """
  p, c = max_prompt_length, max_completion_length
  b = len(examples)
  tokens = np.full((b, p + c), tokenizer.pad_id, np.int32)
  mask = np.zeros((b, p + c), bool)
  loss_mask = np.zeros((b, p + c), bool)
  truncated = np.zeros((b,), bool)
  eos = tokenizer.eos_id if add_eos else None
  for i, ex in enumerate(examples):
    prompt = tokenizer.encode(ex.prompt, add_bos=add_bos)
    if len(prompt) > p:
      raise ValueError(f"a prompt has {len(prompt)} tokens, more than max_prompt_length={p}: "
                       f"{ex.prompt[:60]!r}...")
    if not prompt:
      raise ValueError("an SFT example has an empty prompt (and the tokenizer adds no BOS)")
    completion = tokenizer.encode(ex.completion) + ([eos] if eos is not None else [])
    truncated[i] = len(completion) > c
    completion = completion[:c]
    tokens[i, p - len(prompt):p] = prompt
    mask[i, p - len(prompt):p] = True
    tokens[i, p:p + len(completion)] = completion
    mask[i, p:p + len(completion)] = True
    loss_mask[i, p:p + len(completion)] = True
  return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask, "truncated": truncated}


# ----------------------------------------------------------------------------------------------
# Loss and the jitted step
# ----------------------------------------------------------------------------------------------
def sft_loss_from_logits(logits, targets, loss_mask):
  """Mean cross-entropy of `targets` [B,T] under `logits` [B,T,V] over positions where
  `loss_mask` [B,T] is set. Returns (loss, number of scored tokens)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  return _masked_mean_nll(picked, loss_mask)


def _masked_mean_nll(logp, loss_mask):
  w = loss_mask.astype(jnp.float32)
  count = w.sum()
  return -(logp * w).sum() / jnp.maximum(count, 1.0), count


def sft_loss(params, batch, model_config: ModelConfig, *, remat: str = "none",
             chunk_size: Optional[int] = None):
  """SFT loss of a batch from `encode_batch`: (loss, number of completion tokens).

  Position t of the logits predicts token t+1, so the targets are tokens[:, 1:] and the loss
  mask is loss_mask[:, 1:]. `chunk_size` unembeds in chunks (large vocabularies; same value).
  """
  tokens, mask = batch["tokens"], batch["mask"]
  if chunk_size is None:
    positions = model.positions_from_mask(mask)
    logits, _ = model.forward(params, tokens, model_config, positions=positions,
                              kv_mask=mask.astype(bool), remat=remat)
    return sft_loss_from_logits(logits[:, :-1], tokens[:, 1:], batch["loss_mask"][:, 1:])
  logp, _ = model.sequence_log_probs(params, tokens, mask, model_config, remat=remat,
                                     chunk_size=chunk_size)
  return _masked_mean_nll(logp, batch["loss_mask"][:, 1:])


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """SFT hyperparameters; the optimizer is the GRPO trainer's (AdamW, warm-up, schedule,
  global-norm clipping)."""

  batch_size: int = 16
  max_prompt_length: int = 128
  max_completion_length: int = 256
  learning_rate: float = 1e-4
  lr_scheduler_type: str = "cosine"
  warmup_steps: int = 0
  weight_decay: float = 0.0
  adam_beta1: float = 0.9
  adam_beta2: float = 0.99
  adam_epsilon: float = 1e-8
  max_grad_norm: float = 1.0
  max_steps: int = 100
  add_eos: bool = True
  remat: str = "none"
  logprob_chunk_size: Optional[int] = None
  seed: int = 0

  def validate(self):
    """Raises ValueError naming the flag at fault."""
    for name in ("batch_size", "max_prompt_length", "max_completion_length", "max_steps"):
      if getattr(self, name) < 1:
        raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
    self.train_config().validate()

  def train_config(self) -> trainer.TrainConfig:
    """The TrainConfig whose optimizer fields are these (for trainer.make_optimizer)."""
    return trainer.TrainConfig(
        learning_rate=self.learning_rate, lr_scheduler_type=self.lr_scheduler_type,
        warmup_steps=self.warmup_steps, weight_decay=self.weight_decay,
        adam_beta1=self.adam_beta1, adam_beta2=self.adam_beta2, adam_epsilon=self.adam_epsilon,
        max_grad_norm=self.max_grad_norm, max_steps=self.max_steps, remat=self.remat,
        seed=self.seed)


def steps_for_epochs(num_examples: int, batch_size: int, epochs: float) -> int:
  """Optimizer steps for `epochs` passes over `num_examples` (the paper: two epochs, §2.3.3)."""
  return max(1, math.ceil(epochs * num_examples / batch_size))


def make_optimizer(cfg: SFTConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
  return trainer.make_optimizer(cfg.train_config())


def init_state(params, cfg: SFTConfig, optimizer) -> State:
  """The whole SFT state (what orbax saves). The jitted step donates the params' buffers."""
  return {"params": params, "opt_state": optimizer.init(params), "step": jnp.int32(0),
          "rng": jax.random.PRNGKey(cfg.seed), "data_position": jnp.int32(0)}


def make_sft_step(model_config: ModelConfig, cfg: SFTConfig, optimizer, schedule):
  """One jitted optimizer step: (params, opt_state, batch, step) -> (params, opt_state, metrics).

  Shardings: the step follows its inputs' shardings (place params / opt state / batch on a mesh
  with jax.device_put and the same step runs data- or model-parallel).
  """

  def loss_fn(params, batch):
    return sft_loss(params, batch, model_config, remat=cfg.remat,
                    chunk_size=cfg.logprob_chunk_size)

  def step(params, opt_state, batch, step):
    (loss, ntokens), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads),
                               "completion_tokens": ntokens, "learning_rate": schedule(step)}

  return jax.jit(step, donate_argnums=(0, 1))


@functools.lru_cache(maxsize=8)
def _cached_step(model_config: ModelConfig, cfg: SFTConfig):
  """(optimizer, schedule, jitted step), built once per configuration in a process, so that a
  resumed or repeated run (tests, the multi-stage pipeline) does not compile again."""
  optimizer, schedule = make_optimizer(cfg)
  return optimizer, schedule, make_sft_step(model_config, cfg, optimizer, schedule)


# ----------------------------------------------------------------------------------------------
# The resumable loop
# ----------------------------------------------------------------------------------------------
def warn_if_foreign(first_loss: float, vocab_size: int) -> bool:
  """Warns, and returns True, when the loss of the starting params on the SFT data is more than a
  nat above uniform guessing (log vocab_size): the params predict this data worse than knowing
  nothing, i.e. it holds tokens they never learnt. On 2026-12-03 the R1 pipeline's cold start on
  readable traces started at 8.18 nats per character against log 128 = 4.85: six letters of those
  traces never occur in the base's corpus (docs/r1_pipeline.md)."""
  foreign = first_loss > math.log(vocab_size) + 1.0
  if foreign:
    log.warning("SFT loss at the first step is %.2f, above log(vocab)=%.2f + 1: the starting "
                "policy predicts this data worse than uniform guessing (tokens it never saw in "
                "pretraining?). A short SFT from here teaches those tokens badly; train longer "
                "or bring the data closer to what the base knows.", first_loss,
                math.log(vocab_size))
  return foreign


def run_sft(model_config: ModelConfig, params, tokenizer, examples: Sequence[Example],
            cfg: SFTConfig, workdir: str, *, save_steps: int = 50, save_total_limit: int = 2,
            add_bos: bool = True, meta: Optional[dict] = None, log_every: int = 1,
            batch_sharding=None,
            eval_fn: Optional[Callable[[Any, int], dict]] = None, eval_steps: int = 0,
            stop_at: Optional[int] = None) -> State:
  """Fine-tunes `params` on `examples` for cfg.max_steps steps, resuming from
  `workdir/checkpoints` when it holds a checkpoint. Writes metrics.jsonl (+ TensorBoard) and
  eval_metrics.jsonl (when `eval_fn(params, step) -> dict` is given; at the end and every
  `eval_steps`). Batches are drawn from an epoch-shuffled stream (r1jax.data.ProblemStream), so
  `data_position` is the number of examples consumed. `batch_sharding`: optional sharding the
  batch is placed with (e.g. over a mesh's data axis). `stop_at` stops after that step (the
  schedule still spans cfg.max_steps), as a run cut short would. Returns the final state."""
  cfg.validate()
  if not examples:
    raise ValueError("no SFT examples")
  os.makedirs(workdir, exist_ok=True)
  optimizer, _, step_fn = _cached_step(model_config, cfg)
  stream = ProblemStream(list(examples), cfg.seed)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), save_steps,
                                 save_total_limit)
  state = init_state(params, cfg, optimizer)
  start = 0
  if ckpt.latest_step() is not None:
    state, _ = ckpt.restore(state)
    start = int(state["step"])
    log.info("SFT resumed from %s at step %d", ckpt.directory, start)
  writer = logs.MetricsWriter(workdir, resume_step=start)
  eval_writer = logs.MetricsWriter(workdir, resume_step=start, filename="eval_metrics.jsonl",
                                   tensorboard=False)
  stop = checkpoint.StopAtStepBoundary()
  try:
    stop.install()
    for step in range(start, min(cfg.max_steps, stop_at or cfg.max_steps)):
      stop.check()
      t0 = time.perf_counter()
      position = int(state["data_position"])
      batch = encode_batch(tokenizer, stream.get(position, cfg.batch_size),
                           cfg.max_prompt_length, cfg.max_completion_length, add_bos=add_bos,
                           add_eos=cfg.add_eos)
      truncated = float(batch.pop("truncated").mean())
      if batch_sharding is not None:
        batch = jax.device_put(batch, batch_sharding)
      params, opt_state, m = step_fn(state["params"], state["opt_state"], batch,
                                     state["step"])
      m = jax.device_get(m)
      if not np.isfinite(m["loss"]):
        raise FloatingPointError(f"non-finite SFT loss at step {step + 1}; lower "
                                 "--learning_rate or check the data")
      state = dict(state, params=params, opt_state=opt_state, step=jnp.int32(step + 1),
                   data_position=jnp.int32(position + cfg.batch_size))
      dt = time.perf_counter() - t0
      metrics = {"step": step + 1, "loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]),
                 "learning_rate": float(m["learning_rate"]),
                 "completion_tokens": float(m["completion_tokens"]),
                 "truncated_fraction": truncated, "epoch": (position + cfg.batch_size)
                 / len(examples), "step_time_s": dt,
                 "tokens_per_s": float(m["completion_tokens"]) / max(dt, 1e-9)}
      writer.write(metrics)
      if step == 0:
        warn_if_foreign(metrics["loss"], model_config.vocab_size)
      if log_every and (step + 1) % log_every == 0:
        log.info("sft step %d/%d loss=%.4f grad_norm=%.3f lr=%.2e %.2fs", step + 1,
                 cfg.max_steps, metrics["loss"], metrics["grad_norm"],
                 metrics["learning_rate"], dt)
      ckpt.save(step + 1, state, meta=meta)
      if eval_fn is not None and eval_steps and (step + 1) % eval_steps == 0:
        eval_writer.write({"step": step + 1, **eval_fn(state["params"], step + 1)})
    final = int(state["step"])
    if ckpt.latest_step() != final:
      ckpt.save(final, state, meta=meta, force=True)
    done = logs.read_jsonl(eval_writer.path)
    if eval_fn is not None and (not done or done[-1]["step"] != final):
      eval_writer.write({"step": final, **eval_fn(state["params"], final)})
  except KeyboardInterrupt:
    checkpoint.save_on_interrupt(ckpt, state, meta)
    raise
  finally:
    stop.uninstall()
    writer.close()
    eval_writer.close()
    ckpt.close()
  return state


# ----------------------------------------------------------------------------------------------
# Rejection sampling (§2.3.3): keep correct, well-formatted, readable, distinct completions.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RejectionConfig:
  """What a sampled completion must satisfy to become SFT data.

  The paper keeps only correct responses and filters out chains of thought "with mixed
  languages, long paragraphs, and code blocks". `vocabulary` (lowercase words) is the
  char-level miniature's target language (r1jax.language); `max_paragraph_chars` 0 means no
  limit; `max_per_prompt` 0 keeps every distinct accepted completion.
  """

  require_correct: bool = True
  require_format: bool = True
  min_language_score: float = 0.95
  language: str = "en"
  vocabulary: Optional[frozenset] = None
  max_paragraph_chars: int = 0
  drop_code_blocks: bool = True
  drop_truncated: bool = True
  max_per_prompt: int = 0

  def __post_init__(self):
    if not 0.0 <= self.min_language_score <= 1.0:
      raise ValueError(f"min_language_score={self.min_language_score} must be in [0, 1]")
    if self.max_paragraph_chars < 0 or self.max_per_prompt < 0:
      raise ValueError("max_paragraph_chars and max_per_prompt must be >= 0")
    language.target_scripts(self.language)
    if self.vocabulary is not None:
      object.__setattr__(self, "vocabulary", frozenset(w.lower() for w in self.vocabulary))


REJECTION_REASONS = ("incorrect", "bad_format", "truncated", "mixed_language", "code_block",
                     "long_paragraph", "duplicate", "over_per_prompt_cap")


def rejection_reason(completion: str, correct: bool, formatted: bool, truncated: bool,
                     cfg: RejectionConfig, prefix: str = "") -> tuple[Optional[str], float]:
  """(first reason to drop the completion or None, its language-consistency score).
  `prefix` is the response text the prompt already wrote ("<think>" for `compact`)."""
  cot = language.chain_of_thought(prefix + completion)
  score = language.language_consistency(cot, cfg.language, cfg.vocabulary)
  if cfg.require_correct and not correct:
    return "incorrect", score
  if cfg.require_format and not formatted:
    return "bad_format", score
  if cfg.drop_truncated and truncated:
    return "truncated", score
  if score < cfg.min_language_score:
    return "mixed_language", score
  if cfg.drop_code_blocks and language.has_code_block(completion):
    return "code_block", score
  if cfg.max_paragraph_chars and language.longest_paragraph(cot) > cfg.max_paragraph_chars:
    return "long_paragraph", score
  return None, score


def _dedup_key(text: str) -> str:
  return re.sub(r"\s+", " ", text).strip()


def select_completions(records: Sequence[dict], cfg: RejectionConfig,
                       prefix: str = "") -> tuple[list[Example], dict[str, int]]:
  """Turns sampled records into SFT examples.

  Args:
    records: one dict per prompt with "prompt" (str) and per-sample lists "completions",
      "correct", "format" and optionally "truncated" (as r1jax.eval.evaluate_policy returns);
      other keys ("question", "gold", "answers") are copied into the examples' meta.
    cfg: the filters. prefix: see `rejection_reason`.

  Returns:
    (examples, counts): kept examples in record order, and counts of "sampled", "kept",
    "prompts_with_kept" and each of REJECTION_REASONS.
  """
  counts = {"sampled": 0, "kept": 0, "prompts_with_kept": 0, **{r: 0 for r in REJECTION_REASONS}}
  out = []
  for rec in records:
    for k in ("prompt", "completions", "correct", "format"):
      if k not in rec:
        raise ValueError(f"rejection record has no {k!r} field (keys: {sorted(rec)})")
    seen, kept_here = set(), 0
    n = len(rec["completions"])
    truncated = rec.get("truncated", [False] * n)
    answers = rec.get("answers", [None] * n)
    for j, completion in enumerate(rec["completions"]):
      counts["sampled"] += 1
      reason, score = rejection_reason(completion, bool(rec["correct"][j]),
                                       bool(rec["format"][j]), bool(truncated[j]), cfg, prefix)
      key = _dedup_key(completion)
      if reason is None and key in seen:
        reason = "duplicate"
      if reason is None and cfg.max_per_prompt and kept_here >= cfg.max_per_prompt:
        reason = "over_per_prompt_cap"
      if reason is not None:
        counts[reason] += 1
        continue
      seen.add(key)
      kept_here += 1
      out.append(Example(rec["prompt"], completion, {
          "question": rec.get("question"), "gold": rec.get("gold"), "answer": answers[j],
          "language_score": round(score, 4), "sample_index": j,
          "source": "rejection_sampling"}))
    counts["kept"] += kept_here
    counts["prompts_with_kept"] += kept_here > 0
  return out, counts
