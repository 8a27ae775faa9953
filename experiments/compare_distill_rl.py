r"""Distillation vs. RL on the small model (DeepSeek-R1 §4.1, Table 6, in miniature).

  python experiments/compare_distill_rl.py --flagfile=experiments/configs/distill_tiny.flags \
      --workdir=/tmp/distill_vs_rl --update_docs=docs/distillation.md

The student base is --init_checkpoint (or --model_preset). With the same task, held-out
problems and budget of --budget_completions training completions seen by the student:

  (a) distill/    the teacher's filtered traces, then student SFT for
                  budget / --sft_batch_size steps                        (experiments/distill.py)
  (b) rl_zero/    R1-Zero GRPO on the student base for
                  budget / (--prompts_per_step * --num_generations) steps (experiments/r1_zero.py)

The teacher is --teacher_checkpoint; without it, 0_teacher/ trains one: --teacher_init_checkpoint
(a larger base) fine-tuned on --teacher_num_traces correct long traces of r1jax.corpus (so it is
an SFT-on-correct-traces model, not an RL-trained one: the table says which). Every policy is
evaluated with the same --eval_num_samples samples per held-out problem at --eval_temperature /
--eval_top_p; the table (pass@1 averaged over k, cons@k) goes to <workdir>/table.md and, with
--update_docs, between the table markers of that Markdown file.
"""

from __future__ import annotations

import json
import logging
import os

from absl import app, flags

import distill  # noqa: F401  (defines r1.py's and distill.py's flags)
import r1

# pylint: disable=wrong-import-position
import jax  # noqa: E402

from r1jax import checkpoint, hf, logs, model, sft  # noqa: E402
from r1jax.config import get_config  # noqa: E402

FLAGS = flags.FLAGS
log = logging.getLogger("r1jax")

flags.DEFINE_integer("budget_completions", 4096, "Training completions the student sees in "
                     "each arm (RL rollouts or SFT examples).")
flags.DEFINE_string("teacher_init_checkpoint", "", "Base the teacher is fine-tuned from when "
                    "no --teacher_checkpoint is given.")
flags.DEFINE_string("teacher_preset", "small", "Preset of a randomly initialized teacher base "
                    "when neither --teacher_checkpoint nor --teacher_init_checkpoint is given.")
flags.DEFINE_integer("teacher_num_traces", 2048, "Correct traces the teacher is trained on.")
flags.DEFINE_float("teacher_sft_epochs", 2.0, "Epochs of teacher SFT.")
flags.DEFINE_string("update_docs", "", "Markdown file whose table block is replaced.")

TABLE_START, TABLE_END = "<!-- distill-vs-rl table:start -->", "<!-- distill-vs-rl table:end -->"


def train_teacher(stage_dir, student: r1.Policy, task, train, test, meta):
  """0_teacher: SFT of the teacher base on correct long traces; returns its policy dir."""
  if FLAGS.teacher_init_checkpoint:
    config, params = hf.load_hf_checkpoint(FLAGS.teacher_init_checkpoint)
    config = config.replace(dtype=FLAGS.dtype, param_dtype=FLAGS.param_dtype)
  else:
    config = get_config(FLAGS.teacher_preset, dtype=FLAGS.dtype, param_dtype=FLAGS.param_dtype)
    params = model.init_params(config, jax.random.PRNGKey(FLAGS.seed + 5))
  teacher = r1.Policy(config, student.tokenizer, student.tokenizer_dir)
  if r1.stage_done(stage_dir) is None:
    from r1jax import corpus  # pylint: disable=import-outside-toplevel
    problems = train[-FLAGS.teacher_num_traces:]  # not the first ones, which distill.py asks
    pairs = corpus.correct_traces(problems, FLAGS.seed + 5, style=FLAGS.cold_start_style,
                                  max_misses=FLAGS.cold_start_max_misses,
                                  template=FLAGS.template,
                                  search_order=FLAGS.cold_start_search_order)
    examples = [sft.Example(p, c, {"source": "corpus.correct_traces"}) for p, c in pairs]
    eval_fn = r1.make_eval_fn(teacher, test, r1.reward_fn(task))
    r1.run_sft_stage(stage_dir, teacher, jax.device_get(params), examples,
                     FLAGS.teacher_sft_epochs, eval_fn, meta)
  return os.path.join(stage_dir, "policy")


def evaluate_once(path, policy: r1.Policy, params, eval_fn) -> dict:
  """The held-out report of `params`, cached in `path`."""
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  report, records = eval_fn(params, 0)
  logs.write_samples(path.replace(".json", "_samples.jsonl"), records)
  checkpoint.save_json(path, report)
  return report


def train_seconds(stage_dir) -> float:
  return sum(r.get("step_time_s", 0.0) for r in logs.read_jsonl(
      os.path.join(stage_dir, "metrics.jsonl")))


def table(rows) -> str:
  k = FLAGS.eval_num_samples
  head = (f"| model | parameters | training of the student | pass@1 | cons@{k} | format | "
          "mean length | student train time |")
  lines = [head, "|---|---:|---|---:|---:|---:|---:|---:|"]
  for name, n_params, how, ev, secs in rows:
    lines.append(f"| {name} | {n_params:,} | {how} | {ev['pass@1']:.3f} | {ev['cons@k']:.3f} | "
                 f"{ev['format_rate']:.3f} | {ev['completion_length_mean']:.1f} | "
                 + (f"{secs:.0f} s |" if secs else "- |"))
  return "\n".join(lines)


def update_docs(path: str, text: str):
  with open(path) as f:
    doc = f.read()
  if TABLE_START not in doc or TABLE_END not in doc:
    raise ValueError(f"--update_docs={path}: no {TABLE_START} ... {TABLE_END} block")
  head, rest = doc.split(TABLE_START, 1)
  _, tail = rest.split(TABLE_END, 1)
  with open(path, "w") as f:
    f.write(f"{head}{TABLE_START}\n{text}\n{TABLE_END}{tail}")


def main(argv):
  del argv
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  logging.getLogger("r1jax").setLevel(logging.INFO)
  meta = r1.common.flag_values()
  student, student_params = r1.load_base_policy()
  student_params = jax.device_get(student_params)
  task, train, test = r1.build_task()
  teacher_source = "given (--teacher_checkpoint)"
  if not FLAGS.teacher_checkpoint:
    FLAGS.teacher_checkpoint = train_teacher(os.path.join(FLAGS.workdir, "0_teacher"), student,
                                             task, train, test, meta)
    teacher_source = (f"SFT of {FLAGS.teacher_init_checkpoint or FLAGS.teacher_preset} on "
                      f"{FLAGS.teacher_num_traces} correct corpus traces (no RL)")
  rollouts = FLAGS.prompts_per_step * FLAGS.num_generations
  rl_steps = max(1, FLAGS.budget_completions // rollouts)
  FLAGS.distill_sft_steps = max(1, FLAGS.budget_completions // FLAGS.sft_batch_size)

  dist_dir = os.path.join(FLAGS.workdir, "distill")
  infos = distill.distill(dist_dir, student, student_params, task, train, test, meta)
  rl_dir = os.path.join(FLAGS.workdir, "rl_zero")
  eval_fn = r1.make_eval_fn(student, test, r1.reward_fn(task))
  rl_info = r1.stage_done(rl_dir) or r1.run_rl_stage(
      rl_dir, student, student_params, train, r1.reward_fn(task), eval_fn, rl_steps,
      FLAGS.learning_rate, meta)

  teacher, teacher_params = distill.load_teacher(student)
  teacher_eval = evaluate_once(os.path.join(FLAGS.workdir, "eval_teacher.json"), teacher,
                               teacher_params, r1.make_eval_fn(teacher, test, r1.reward_fn(task)))
  base_eval = evaluate_once(os.path.join(FLAGS.workdir, "eval_student_base.json"), student,
                            student_params, eval_fn)
  n_student = student.model_config.num_params()
  kept = infos["1_teacher_traces"].get("num_examples", 0)
  rows = [
      ("teacher", teacher.model_config.num_params(), teacher_source, teacher_eval, 0.0),
      ("student base", n_student, "none", base_eval, 0.0),
      ("student, distilled", n_student,
       f"SFT on {kept} teacher traces, {FLAGS.distill_sft_steps} steps x {FLAGS.sft_batch_size}",
       infos["2_student_sft"]["eval"], train_seconds(os.path.join(dist_dir, "2_student_sft"))),
      ("student, R1-Zero RL", n_student,
       f"GRPO, {rl_steps} steps x {FLAGS.prompts_per_step} prompts x "
       f"{FLAGS.num_generations} samples", rl_info["eval"], train_seconds(rl_dir)),
  ]
  text = table(rows)
  with open(os.path.join(FLAGS.workdir, "table.md"), "w") as f:
    f.write(text + "\n")
  if FLAGS.update_docs:
    update_docs(FLAGS.update_docs, text)
  print(text)


if __name__ == "__main__":
  checkpoint.run_app(main)
