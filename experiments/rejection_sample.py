r"""Rejection sampling (DeepSeek-R1 §2.3.3) from any checkpoint into SFT data.

  python experiments/rejection_sample.py --init_checkpoint=/tmp/r1_tiny/2_reasoning_rl/policy \
      --flagfile=experiments/configs/r1_tiny.flags --workdir=/tmp/rs \
      --rejection_num_prompts=1024 --rejection_num_samples=8

Samples --rejection_num_samples completions for each of --rejection_num_prompts training
prompts (--rejection_temperature / --rejection_top_p) and keeps those that are correct, well
formatted, not truncated, readable (language consistency >= --rejection_min_language_score; the
miniature's vocabulary is that of the long corpus traces when --language_vocabulary resolves to
cold_start), free of code blocks and distinct (at most --rejection_max_per_prompt per prompt).
Writes <workdir>/rejection.jsonl (prompt, completion, question, gold, answer, language_score,
sample_index, source) and <workdir>/rejection_stats.json (counts per drop reason); an existing
rejection_stats.json in --workdir is reused.
"""

from __future__ import annotations

import logging

from absl import app, flags

import distill  # noqa: F401  (defines r1.py's flags; readable_vocabulary)
import r1

# pylint: disable=wrong-import-position

from r1jax import sft  # noqa: E402

FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required (rejection.jsonl is written there)")
  logging.getLogger("r1jax").setLevel(logging.INFO)
  policy, params = r1.load_base_policy()
  task, train, _ = r1.build_task()
  vocab = distill.readable_vocabulary(policy, train)
  prompts, rcfg = r1.rejection_setup(train, vocab)
  examples, stats = r1.rejection_sample(FLAGS.workdir, policy, params, prompts,
                                        r1.reward_fn(task), rcfg, FLAGS.rejection_num_samples,
                                        FLAGS.rejection_temperature, FLAGS.rejection_top_p)
  print(f"kept {len(examples)} of {stats['sampled']} samples from {stats['prompts']} prompts "
        f"({stats['prompts_with_kept']} prompts with at least one); dropped: "
        + ", ".join(f"{k}={stats[k]}" for k in sft.REJECTION_REASONS if stats[k]))


if __name__ == "__main__":
  app.run(main)
