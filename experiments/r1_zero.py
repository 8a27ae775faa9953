r"""R1-Zero: GRPO with rule-based rewards straight from a base model (DeepSeek-R1 §2.2).

  python experiments/r1_zero.py --flagfile=experiments/configs/countdown_tiny.flags

Every hyperparameter is a flag (see experiments/common.py; names follow TRL's GRPOConfig).
Writes metrics.jsonl, TensorBoard events, orbax checkpoints, samples and PNG plots into
--workdir; running again with the same --workdir resumes.
"""

from __future__ import annotations

import functools
import os

from absl import app, flags, logging

import common  # noqa: F401  (defines the shared flags; adds the repo to sys.path)

# pylint: disable=wrong-import-position
import jax  # noqa: E402

from r1jax import eval as r1eval  # noqa: E402
from r1jax import language  # noqa: E402,F401  (registers language_consistency)
from r1jax import checkpoint, rewards, runner, tasks, trainer  # noqa: E402

flags.DEFINE_bool("export_policy", True, "At the end, write the final policy as a Hugging Face "
                  "directory (config.json, safetensors, tokenizer files) into <workdir>/policy, "
                  "for experiments/evaluate.py, distillation (--teacher_checkpoint) or "
                  "transformers.")

FLAGS = flags.FLAGS


def build_task():
  """(task, train problems, held-out problems, prompt formatter)."""
  task = tasks.get_task(FLAGS.task, data_dir=FLAGS.data_dir or None,
                        **common.parse_task_options(FLAGS.task_options))
  train = task.split("train", FLAGS.seed)
  test = task.split("test", FLAGS.eval_seed)
  if FLAGS.num_train_problems:
    train = train[:FLAGS.num_train_problems]
  test = test[:FLAGS.eval_num_problems]
  return task, train, test, common.prompt_formatter(task.reward_kind)


def build_reward_fn(task):
  extra = (("language_consistency", FLAGS.language_weight),) if FLAGS.language_weight else ()
  cfg = rewards.RewardConfig(format_weight=FLAGS.format_weight,
                             accuracy_weight=FLAGS.accuracy_weight, extra=extra,
                             timeout_s=FLAGS.reward_timeout_s)
  prefix = common.completion_prefix()
  return functools.partial(rewards.score_completions, reward_kind=task.reward_kind, config=cfg,
                           prefix=prefix)


def main(argv):
  del argv
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  common.setup_logging()
  mesh = common.make_mesh()  # first: jax.distributed must start before any other JAX call
  model_config, params, tokenizer = common.load_policy()
  task, train, test, fmt = build_task()
  reward_fn = build_reward_fn(task)
  cfg = common.train_config()
  add_bos = common.prompt_add_bos(tokenizer)
  grpo_trainer = trainer.GRPOTrainer(model_config, cfg, common.grpo_config(), tokenizer, train,
                                     fmt, reward_fn, add_bos=add_bos, mesh=mesh)

  def eval_fn(params, step):
    return r1eval.evaluate_policy(
        params, model_config, tokenizer, test, format_prompt=fmt, score_fn=reward_fn,
        extract_fn=rewards.extract_answer, num_samples=FLAGS.eval_num_samples,
        key=jax.random.fold_in(jax.random.PRNGKey(FLAGS.seed + 1), step),
        temperature=FLAGS.eval_temperature, top_p=FLAGS.eval_top_p,
        max_prompt_length=FLAGS.max_prompt_length,
        max_new_tokens=FLAGS.max_completion_length, batch_size=FLAGS.eval_batch_size,
        stop_strings=cfg.stop_strings, add_bos=add_bos,
        ks=(1, FLAGS.eval_num_samples))

  run = runner.RunConfig(workdir=FLAGS.workdir, save_steps=FLAGS.save_steps,
                         save_total_limit=FLAGS.save_total_limit, eval_steps=FLAGS.eval_steps,
                         plot=FLAGS.plot)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  state = runner.run_grpo(grpo_trainer, params, run, eval_fn=eval_fn, meta=common.flag_values())
  if FLAGS.export_policy:
    path = os.path.join(FLAGS.workdir, "policy")
    common.export_policy(path, model_config, state["params"], common.tokenizer_dir())
    logging.info("exported the final policy (step %d) to %s", int(state["step"]), path)


if __name__ == "__main__":
  checkpoint.run_app(main)
