r"""Distillation (DeepSeek-R1 §2.4): a teacher's correct traces teach a smaller student by SFT.

  python experiments/distill.py --flagfile=experiments/configs/distill_tiny.flags \
      --teacher_checkpoint=<HF dir> --init_checkpoint=<student base HF dir> --workdir=...

  1_teacher_traces   the teacher samples --distill_num_samples completions for each of
                     --distill_num_prompts training prompts; the correct, well-formed, readable,
                     distinct ones are kept (the rejection filter of r1jax.sft)
  2_student_sft      the student (--init_checkpoint or --model_preset) is fine-tuned on them;
                     no RL stage, as in the paper ("we apply only SFT")

Same layout and resumability as experiments/r1.py (DONE.json per stage, exported policies).
The student and the teacher must share the tokenizer.
"""

from __future__ import annotations

import logging
import os

from absl import app, flags

import r1  # noqa: F401  (the shared and R1 pipeline flags, and the stage helpers)

# pylint: disable=wrong-import-position
import jax  # noqa: E402
import numpy as np  # noqa: E402

from r1jax import checkpoint, sft  # noqa: E402

FLAGS = flags.FLAGS
log = logging.getLogger("r1jax")

flags.DEFINE_string("teacher_checkpoint", "", "HF directory of the teacher policy.")
flags.DEFINE_string("distill_data", "", "Existing JSONL of (prompt, completion) traces: skips "
                    "the teacher's sampling.")
flags.DEFINE_integer("distill_num_prompts", 512, "Training prompts the teacher answers.")
flags.DEFINE_integer("distill_num_samples", 4, "Teacher samples per prompt.")
flags.DEFINE_float("distill_temperature", 0.7, "Teacher sampling temperature.")
flags.DEFINE_float("distill_top_p", 0.95, "Teacher sampling top-p.")
flags.DEFINE_integer("distill_max_per_prompt", 2, "Distinct traces kept per prompt.")
flags.DEFINE_float("distill_epochs", 2.0, "Epochs of student SFT.")
flags.DEFINE_integer("distill_sft_steps", 0, "Student SFT steps (0: from --distill_epochs); "
                     "compare_distill_rl.py sets it from the compute budget.")


def load_teacher(student: r1.Policy):
  """(teacher Policy, params): the teacher keeps its own shapes, shares the tokenizer."""
  if not FLAGS.teacher_checkpoint:
    raise app.UsageError("--teacher_checkpoint is required (or pass --distill_data)")
  return r1.load_policy_dir(FLAGS.teacher_checkpoint, student, "teacher_checkpoint")


def teacher_traces(stage_dir, student: r1.Policy, train, score_fn, vocab):
  """Stage 1: the teacher's filtered traces (cached in the stage directory)."""
  if FLAGS.distill_data:
    examples = sft.load_examples(FLAGS.distill_data)
    return r1.mark_done(stage_dir, {"num_examples": len(examples), "source":
                                    FLAGS.distill_data}), examples
  teacher, params = load_teacher(student)
  order = np.random.default_rng(FLAGS.seed + 11).permutation(len(train))
  prompts = [train[i] for i in order[:FLAGS.distill_num_prompts]]
  rcfg = sft.RejectionConfig(min_language_score=FLAGS.rejection_min_language_score,
                             language=FLAGS.language, vocabulary=vocab,
                             max_per_prompt=FLAGS.distill_max_per_prompt)
  examples, stats = r1.rejection_sample(stage_dir, teacher, params, prompts, score_fn, rcfg,
                                        FLAGS.distill_num_samples, FLAGS.distill_temperature,
                                        FLAGS.distill_top_p, seed_offset=11)
  return r1.mark_done(stage_dir, {"teacher": FLAGS.teacher_checkpoint, "rejection": stats,
                                  "num_examples": len(examples)}), examples


def readable_vocabulary(student: r1.Policy, train):
  """The miniature's target-language words: those of the long readable traces (r1.py's
  cold-start data), when --language_vocabulary resolves to cold_start."""
  if FLAGS.language_vocabulary_data:
    return r1.language_vocabulary(student, [])
  from r1jax import corpus  # pylint: disable=import-outside-toplevel
  pairs = corpus.correct_traces(train[:FLAGS.cold_start_num_examples], FLAGS.seed,
                                style=FLAGS.cold_start_style, template=FLAGS.template)
  return r1.language_vocabulary(student, [sft.Example(p, c) for p, c in pairs])


def distill(workdir: str, student: r1.Policy, student_params, task, train, test,
            meta=None) -> dict:
  """Runs (or resumes) both stages under `workdir`; returns {stage: DONE info}."""
  vocab = readable_vocabulary(student, train)
  score_fn = r1.reward_fn(task)
  eval_fn = r1.make_eval_fn(student, test, score_fn, vocab)
  dirs = {s: os.path.join(workdir, s) for s in ("1_teacher_traces", "2_student_sft")}
  infos = {}
  done = r1.stage_done(dirs["1_teacher_traces"])
  data_path = os.path.join(dirs["1_teacher_traces"], "rejection.jsonl")
  if done is not None and os.path.exists(data_path):
    examples = sft.load_examples(data_path) if done.get("num_examples") else []
  elif done is not None and FLAGS.distill_data:
    examples = sft.load_examples(FLAGS.distill_data)
  else:
    done, examples = teacher_traces(dirs["1_teacher_traces"], student, train, score_fn, vocab)
  infos["1_teacher_traces"] = done
  done = r1.stage_done(dirs["2_student_sft"])
  if done is None:
    done = r1.run_sft_stage(dirs["2_student_sft"], student, student_params, examples,
                            FLAGS.distill_epochs, eval_fn, meta, steps=FLAGS.distill_sft_steps)
  infos["2_student_sft"] = done
  return infos


def main(argv):
  del argv
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  logging.getLogger("r1jax").setLevel(logging.INFO)
  student, params = r1.load_base_policy()
  task, train, test = r1.build_task()
  infos = distill(FLAGS.workdir, student, jax.device_get(params), task, train, test,
                  r1.common.flag_values())
  print(r1.write_summary(FLAGS.workdir, infos))


if __name__ == "__main__":
  checkpoint.run_app(main)
