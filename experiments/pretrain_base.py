r"""Pretrains the base model of R1-Zero in miniature on the procedural corpus (r1jax.corpus).

  python experiments/pretrain_base.py --output_dir=checkpoints/countdown_base_tiny \
      --model_preset=small --max_steps=600 --seed=0 ...    (see the output dir's README.md)

Plain next-token cross-entropy over whole documents (question and completion, as pretraining
does), AdamW with warm-up and cosine decay, the policy's own model code. Deterministic from
--seed on CPU. Writes an HF-format checkpoint (save_hf_checkpoint) to --output_dir with
pretrain_metrics.jsonl, loss.png, samples.jsonl and a README.md recording the command, the seed
and the held-out pass@1 (r1jax.eval.evaluate_policy, the RL run's evaluation settings).

Resumable: stopped by --time_limit_s or a signal, a run checkpoints its state in
<output_dir>/pretrain_checkpoints and writes a partial base whose README says so; the same
command continues it to the weights of an uninterrupted run (other training flags are refused);
a finished run removes the checkpoints.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import shlex
import shutil
import sys
import time

from absl import app, flags

import common  # noqa: F401  (shared flags: task, template, model, optimizer, eval)

# pylint: disable=wrong-import-position
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from r1jax import checkpoint, corpus, hf, model, rewards, tasks  # noqa: E402
from r1jax import eval as r1eval  # noqa: E402
from r1jax.config import get_config  # noqa: E402
from r1jax.tokenizer import CharTokenizer  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "", "Where the HF-format base checkpoint is written.")
flags.DEFINE_list("model_overrides", [], "ModelConfig fields over --model_preset, key=value.")
flags.DEFINE_integer("batch_size", 32, "Documents per optimizer step.")
flags.DEFINE_integer("max_length", 512, "Longest document in tokens (longer ones are an error).")
flags.DEFINE_bool("loss_on_prompt", True, "Score the question tokens too (plain pretraining).")
flags.DEFINE_float("mix_single", 0.4, "Corpus share: one unchecked attempt.")
flags.DEFINE_float("mix_search", 0.35, "Corpus share: checked attempts until a hit or budget.")
flags.DEFINE_float("mix_give_up", 0.1, "Corpus share: checked misses, then giving up.")
flags.DEFINE_float("mix_malformed", 0.05, "Corpus share: damaged tags.")
flags.DEFINE_float("mix_drill", 0.1, "Corpus share: arithmetic and comparison practice.")
flags.DEFINE_float("continue_prob", 0.5, "Search: chance of another attempt after a miss.")
flags.DEFINE_integer("max_attempts", 8, "Search: attempts at most.")
flags.DEFINE_float("hit_bias", 0.0, "Search: chance that an attempt is a good guess.")
flags.DEFINE_enum("search_order", "random", ["random", "systematic"],
                  "Search: distinct random attempts, or every attempt in a fixed order after a "
                  "random first pair (r1jax.corpus.systematic_attempts).")
flags.DEFINE_integer("drill_warmup_steps", 0, "First steps on drill documents only.")
flags.DEFINE_integer("pad_multiple", 64, "Batches are padded to a multiple of this many tokens "
                     "(fewer distinct shapes, fewer compilations).")
flags.DEFINE_integer("log_every", 10, "Log the loss every this many steps.")
flags.DEFINE_float("time_limit_s", 0, "Stop pretraining after this many seconds (0: none): the "
                   "state is checkpointed, a partial base is written (its README says so) and the "
                   "same command run again continues from the checkpoint. A guard for time-boxed "
                   "GPU calls.")
flags.DEFINE_integer("stop_after_steps", 0, "Stop after this many steps as --time_limit_s would "
                     "(0: never); for tests of the resume.")

# Pretraining wants a far larger step than GRPO's 1e-6 default in common.py.
FLAGS.set_default("learning_rate", 2e-3)
FLAGS.set_default("warmup_steps", 50)
FLAGS.set_default("lr_scheduler_type", "cosine")
FLAGS.set_default("weight_decay", 0.01)
FLAGS.set_default("adam_beta2", 0.98)
FLAGS.set_default("max_steps", 600)
FLAGS.set_default("model_preset", "small")
FLAGS.set_default("stop_strings", ["</answer>"])
FLAGS.set_default("save_steps", 1000)
FLAGS.set_default("save_total_limit", 1)


# Flags that do not change the weights a pretraining run ends with: a resumed run may differ in
# them (every other flag must match the checkpoint's run).
RESUME_FREE_FLAGS = ("output_dir", "time_limit_s", "stop_after_steps", "log_every", "save_steps",
                     "save_total_limit")


def training_flags() -> dict:
  """The flags of this program (not absl's own: logging, flagfile) that shape the training."""
  return {k: v for k, v in common.flag_values(program_only=True).items()
          if k not in RESUME_FREE_FLAGS and not k.startswith("eval_")}


def lm_loss(params, batch, config):
  """Mean next-token cross-entropy over `loss_mask` targets. batch: tokens/mask/loss_mask [B,T]."""
  logp, _ = model.sequence_log_probs(params, batch["tokens"], batch["mask"], config)
  w = batch["loss_mask"][:, 1:].astype(jnp.float32)  # entry t of logp scores token t+1
  return -(logp * w).sum() / jnp.maximum(w.sum(), 1.0)


def make_step(config, optimizer):
  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(lm_loss)(params, batch, config)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads)
  return jax.jit(step, donate_argnums=(0, 1))


def make_optimizer():
  total = FLAGS.max_steps
  warm = min(FLAGS.warmup_steps, total - 1)
  after = (optax.cosine_decay_schedule(FLAGS.learning_rate, max(total - warm, 1), alpha=0.1)
           if FLAGS.lr_scheduler_type == "cosine" else
           optax.linear_schedule(FLAGS.learning_rate, 0.1 * FLAGS.learning_rate,
                                 max(total - warm, 1))
           if FLAGS.lr_scheduler_type == "linear" else optax.constant_schedule(FLAGS.learning_rate))
  schedule = (optax.join_schedules([optax.linear_schedule(0.0, FLAGS.learning_rate, warm), after],
                                   [warm]) if warm > 0 else after)
  return optax.chain(
      optax.clip_by_global_norm(FLAGS.max_grad_norm),
      optax.adamw(schedule, b1=FLAGS.adam_beta1, b2=FLAGS.adam_beta2,
                  weight_decay=FLAGS.weight_decay)), schedule


def corpus_config() -> corpus.CorpusConfig:
  return corpus.CorpusConfig(single=FLAGS.mix_single, search=FLAGS.mix_search,
                             give_up=FLAGS.mix_give_up, malformed=FLAGS.mix_malformed,
                             drill=FLAGS.mix_drill,
                             continue_prob=FLAGS.continue_prob, max_attempts=FLAGS.max_attempts,
                             hit_bias=FLAGS.hit_bias, search_order=FLAGS.search_order,
                             template=FLAGS.template)


def evaluate(params, config, tokenizer, task, num_problems):
  test = task.split("test", FLAGS.eval_seed)[:num_problems]
  fmt = functools.partial(tasks.format_problem, template=FLAGS.template)
  score = functools.partial(rewards.score_completions, reward_kind=task.reward_kind,
                            config=rewards.RewardConfig(executor="inline"),
                            prefix=tasks.completion_prefix(FLAGS.template))
  return r1eval.evaluate_policy(
      params, config, tokenizer, test, format_prompt=fmt, score_fn=score,
      extract_fn=rewards.extract_answer, num_samples=FLAGS.eval_num_samples,
      key=jax.random.PRNGKey(FLAGS.seed + 1), temperature=FLAGS.eval_temperature,
      top_p=FLAGS.eval_top_p, max_prompt_length=FLAGS.max_prompt_length,
      max_new_tokens=FLAGS.max_completion_length, batch_size=FLAGS.eval_batch_size,
      stop_strings=FLAGS.stop_strings, ks=(1, FLAGS.eval_num_samples))


def plot_loss(path, log):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(5, 3.2))
  ax.plot([r["step"] for r in log], [r["loss"] for r in log])
  ax.set_xlabel("step")
  ax.set_ylabel("next-token loss (nats)")
  ax.set_title("base model pretraining")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def write_readme(path, info):
  lines = [
      "# Countdown base model (R1-Zero in miniature)", "",
      "A character-level Llama-style decoder pretrained by `experiments/pretrain_base.py` on the",
      "procedural corpus of `r1jax/corpus.py` (Countdown attempts of mixed quality; no curated",
      "correct-only traces). The starting point of `experiments/configs/countdown_*.flags`.", "",
      "Reproduce (deterministic on CPU):", "", "```bash", info["command"], "```", "",
      "| | |", "|---|---|",
  ]
  lines += [f"| {k} | {v} |" for k, v in info.items() if k != "command"]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def main(argv):
  del argv
  if not FLAGS.output_dir:
    raise app.UsageError("--output_dir is required")
  if FLAGS.task != "countdown":
    raise app.UsageError(f"--task={FLAGS.task!r}: the pretraining corpus is Countdown only")
  if FLAGS.tokenizer not in ("", "char"):
    raise app.UsageError(f"--tokenizer={FLAGS.tokenizer!r}: the base model is character-level")
  logging.getLogger("r1jax").setLevel(logging.INFO)
  t_start = time.time()
  tokenizer = CharTokenizer()
  overrides = common.parse_task_options(FLAGS.model_overrides)
  config = get_config(FLAGS.model_preset, dtype=FLAGS.dtype, param_dtype=FLAGS.param_dtype,
                      bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                      pad_token_id=tokenizer.pad_id, **overrides)
  options = common.parse_task_options(FLAGS.task_options)
  task = tasks.get_task("countdown", **options)
  if not 0 <= FLAGS.drill_warmup_steps < FLAGS.max_steps:
    raise app.UsageError(f"--drill_warmup_steps={FLAGS.drill_warmup_steps} must be in "
                         f"[0, --max_steps={FLAGS.max_steps})")
  warm = FLAGS.drill_warmup_steps
  n_docs = (FLAGS.max_steps - warm) * FLAGS.batch_size
  problems = tasks.get_task("countdown", **{**options, "num_train": n_docs}).split(
      "train", FLAGS.seed)
  cfg = corpus_config()
  docs = corpus.corpus_documents(n_docs, FLAGS.seed, cfg, problems=problems)
  # Curriculum: the first --drill_warmup_steps steps see only drills (arithmetic and
  # comparisons), so that checking a result against the target is learned before the task.
  drill_rng = random.Random(FLAGS.seed + 1)
  drills = [corpus.drill_document(cfg, drill_rng) for _ in range(warm * FLAGS.batch_size)]
  encoded = corpus.encode_documents(drills + docs, tokenizer, max_length=FLAGS.max_length)
  lengths = [len(e[0]) for e in encoded]
  n = len(drills)
  batches = (list(corpus.length_grouped_batches(lengths[:n], FLAGS.batch_size, FLAGS.seed + 1))
             + [b + n for b in corpus.length_grouped_batches(lengths[n:], FLAGS.batch_size,
                                                             FLAGS.seed)])
  doc_acc = float(np.mean([d.correct for d in docs if d.problem is not None]))
  tokens_total = sum(len(e[0]) for e in encoded)
  logging.info("corpus: %d documents, %d tokens, %.1f%% solve their problem (%s)", n_docs,
               tokens_total, 100 * doc_acc, cfg.mix)

  params = model.init_params(config, jax.random.PRNGKey(FLAGS.seed))
  optimizer, schedule = make_optimizer()
  opt_state = optimizer.init(params)
  step_fn = make_step(config, optimizer)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  # Resumable: the state of a run stopped by --time_limit_s (or SIGINT) is checkpointed here,
  # and the same command continues it; the batches are a pure function of the flags.
  ckpt = checkpoint.Checkpointer(os.path.join(FLAGS.output_dir, "pretrain_checkpoints"),
                                 FLAGS.save_steps, FLAGS.save_total_limit)
  start, log, train_before = 0, [], 0.0
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore({"params": params, "opt_state": opt_state})
    saved = meta.get("flags", {})
    differ = {k: (saved.get(k), v) for k, v in training_flags().items()
              if json.loads(json.dumps(v)) != saved.get(k)}
    if differ:
      ckpt.close()
      raise app.UsageError(
          f"{ckpt.directory} holds an unfinished pretraining run with other flags "
          f"({', '.join(f'--{k}: {a!r} there, {b!r} now' for k, (a, b) in sorted(differ.items()))}"
          f"); continue it with its flags, or delete that directory to start over")
    params, opt_state, start = state["params"], state["opt_state"], ckpt.latest_step()
    log, train_before = list(meta.get("log", [])), float(meta.get("train_s", 0.0))
    logging.info("resumed from %s at step %d of %d", ckpt.directory, start, len(batches))
  t0, seen, step = time.time(), 0, start
  stopped_early = False
  stop = checkpoint.StopAtStepBoundary()
  stop.install()
  try:
    for step, idx in enumerate(batches[start:], start=start + 1):
      batch = corpus.pad_batch(encoded, idx, tokenizer.pad_id, FLAGS.loss_on_prompt,
                               FLAGS.pad_multiple)
      params, opt_state, loss, gnorm = step_fn(params, opt_state, batch)
      seen += int(batch["mask"].sum())
      stopped_early = ((FLAGS.time_limit_s > 0 and time.time() - t0 > FLAGS.time_limit_s)
                       or step == FLAGS.stop_after_steps or stop.requested)
      if step % FLAGS.log_every == 0 or step == len(batches) or stopped_early:
        loss = float(loss)
        if not np.isfinite(loss):
          raise FloatingPointError(f"non-finite loss at step {step}; lower --learning_rate")
        log.append({"step": step, "loss": loss, "grad_norm": float(gnorm),
                    "learning_rate": float(schedule(step - 1)),
                    "tokens_per_s": seen / (time.time() - t0)})
        logging.info("step %d/%d loss=%.4f lr=%.2e %.0f tok/s", step, len(batches), loss,
                     log[-1]["learning_rate"], log[-1]["tokens_per_s"])
      if stopped_early or step % FLAGS.save_steps == 0:
        ckpt.save(step, {"params": params, "opt_state": opt_state}, force=True,
                  meta={"log": log, "train_s": train_before + time.time() - t0,
                        "flags": training_flags()})
      if stopped_early:
        logging.warning("stopping at step %d of %d (%s); the same command continues from %s",
                        step, len(batches), "signal" if stop.requested else "time limit",
                        ckpt.directory)
        break
  finally:
    stop.uninstall()
    ckpt.close()
  if not stopped_early:  # finished: the checkpoints were only for continuing
    shutil.rmtree(ckpt.directory, ignore_errors=True)
  train_s = train_before + time.time() - t0
  params = jax.device_get(params)

  hf.save_hf_checkpoint(FLAGS.output_dir, config, params)
  with open(os.path.join(FLAGS.output_dir, "pretrain_metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in log)
  plot_loss(os.path.join(FLAGS.output_dir, "loss.png"), log)

  report, records = evaluate(params, config, tokenizer, task, FLAGS.eval_num_problems)
  with open(os.path.join(FLAGS.output_dir, "samples.jsonl"), "w") as f:
    f.writelines(json.dumps({k: r[k] for k in ("question", "prompt", "completions", "correct")})
                 + "\n" for r in records)
  command = "python experiments/pretrain_base.py " + " ".join(shlex.quote(a)
                                                              for a in sys.argv[1:])
  info = {
      "command": command, "seed": FLAGS.seed,
      "model": f"{FLAGS.model_preset} {overrides or ''} ({config.num_params():,} parameters)",
      "corpus": f"{warm * FLAGS.batch_size} drill documents, then {n_docs} documents "
                f"({tokens_total} tokens in all); {100 * doc_acc:.1f}% of the task documents "
                f"solve their problem",
      "steps": f"{step} of {len(batches)} (batch {FLAGS.batch_size})"
               + (" - stopped early (time limit or signal); the same command continues it"
                  if stopped_early else "")
               + (f" (resumed at step {start})" if start else ""),
      "final loss": f"{log[-1]['loss']:.4f}" if log else "-",
      "held-out pass@1": f"{report['pass@1']:.3f} ({report['num_problems']} test problems x "
                         f"{report['samples_per_problem']} samples, T={FLAGS.eval_temperature}, "
                         f"top-p {FLAGS.eval_top_p}, {FLAGS.max_completion_length} new tokens)",
      f"cons@{FLAGS.eval_num_samples}": f"{report['cons@k']:.3f}",
      "format rate": f"{report['format_rate']:.3f}",
      "mean completion length": f"{report['completion_length_mean']:.1f} tokens",
      "pretraining time": f"{train_s:.0f} s on {jax.devices()[0].device_kind} "
                          f"({jax.device_count()} device(s))",
      "total time": f"{time.time() - t_start:.0f} s",
  }
  write_readme(os.path.join(FLAGS.output_dir, "README.md"), info)
  print(json.dumps({"pass@1": report["pass@1"], "cons@k": report["cons@k"],
                    "format_rate": report["format_rate"],
                    "completion_length_mean": report["completion_length_mean"],
                    "final_loss": log[-1]["loss"] if log else None, "train_s": train_s,
                    "steps": step, "finished": step == len(batches),
                    "output_dir": FLAGS.output_dir}))


if __name__ == "__main__":
  checkpoint.run_app(main)
