r"""Evaluates a checkpoint the way the DeepSeek-R1 paper reports results.

  python experiments/evaluate.py --init_checkpoint=/path/to/hf_dir \
      --task=gsm8k,math500,aime24,amc23 --data_dir=../shared/data --template=r1_zero \
      --eval_num_samples=16 --max_completion_length=4096 --report=/tmp/report.json

For each task: k = --eval_num_samples samples per problem at temperature 0.6 and top-p 0.95
(the paper's setting, --eval_temperature / --eval_top_p), pass@1 averaged over the k samples,
cons@k (majority vote over the extracted answers) and the unbiased pass@j estimator for each j
of --pass_ks. Writes a JSON report (and, with --records, every completion as JSONL) and prints
a table. --init_checkpoint is an r1jax HF-format directory or a local Hugging Face directory
(its tokenizer.json is used when present, else the character tokenizer); without it a random
--model_preset policy is evaluated (a smoke test).
"""

from __future__ import annotations

import json
import logging
import os
import time

from absl import app, flags

import common  # noqa: F401  (defines the shared flags; adds the repo to sys.path)

# pylint: disable=wrong-import-position
import jax  # noqa: E402

from r1jax import eval as r1eval  # noqa: E402
from r1jax import logs, rewards, tasks  # noqa: E402

flags.DEFINE_string("split", "test", "Split to evaluate.")
flags.DEFINE_integer("num_problems", 0, "Problems per task (0: the whole split).")
flags.DEFINE_list("pass_ks", [], "j of the pass@j estimates (default: 1 and k).")
flags.DEFINE_string("report", "", "Where the JSON report goes (default: "
                    "<workdir>/eval_report.json, or ./eval_report.json without --workdir).")
flags.DEFINE_string("records", "", "Optional JSONL of every problem's completions.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
FLAGS = flags.FLAGS


def extract_fn(reward_kind: str):
  """The answer that votes in cons@k: numbers canonicalized (18, 18.0 and $18 agree)."""
  if reward_kind == "math":
    return lambda c: rewards.extract_answer(c, boxed_fallback=True)
  if reward_kind == "numeric":
    def numeric(c):
      value = rewards.parse_number(rewards.extract_answer(c) or "")
      return None if value is None else str(value)
    return numeric
  return rewards.extract_answer


def auto_prompt_length(tokenizer, prompts, add_bos: bool, multiple: int = 16) -> int:
  """The longest tokenized prompt, rounded up (fewer shapes, so fewer compilations)."""
  longest = max(len(tokenizer.encode(p, add_bos=add_bos)) for p in prompts)
  return -(-longest // multiple) * multiple


def evaluate_task(name, model_config, params, tokenizer, key):
  """(report, records) of one task."""
  task = tasks.get_task(name, data_dir=FLAGS.data_dir or None,
                        **common.parse_task_options(FLAGS.task_options))
  problems = task.split(FLAGS.split, FLAGS.seed)
  if FLAGS.num_problems:
    problems = problems[:FLAGS.num_problems]
  fmt = common.prompt_formatter(task.reward_kind)
  add_bos = common.prompt_add_bos(tokenizer)
  prompt_len = FLAGS.max_prompt_length
  if not FLAGS["max_prompt_length"].present:
    prompt_len = auto_prompt_length(tokenizer, [fmt(p) for p in problems], add_bos)
  k = FLAGS.eval_num_samples
  ks = sorted({int(j) for j in FLAGS.pass_ks} or {1, k})
  bad = [j for j in ks if not 1 <= j <= k]
  if bad:
    raise ValueError(f"--pass_ks={bad} must lie in [1, --eval_num_samples={k}]")
  score_fn = lambda texts, rows: rewards.score_completions(  # noqa: E731
      texts, rows, task.reward_kind, rewards.RewardConfig(timeout_s=FLAGS.reward_timeout_s),
      prefix=common.completion_prefix())
  t0 = time.perf_counter()
  report, records = r1eval.evaluate_policy(
      params, model_config, tokenizer, problems, format_prompt=fmt, score_fn=score_fn,
      extract_fn=extract_fn(task.reward_kind), num_samples=k, key=key,
      temperature=FLAGS.eval_temperature, top_p=FLAGS.eval_top_p, top_k=FLAGS.top_k,
      max_prompt_length=prompt_len, max_new_tokens=FLAGS.max_completion_length,
      batch_size=min(FLAGS.eval_batch_size, len(problems)),
      stop_strings=FLAGS.stop_strings, add_bos=add_bos,
      ks=ks, progress=FLAGS.progress)
  seconds = time.perf_counter() - t0
  report.update(task=name, split=FLAGS.split, eval_time_s=seconds,
                completions_per_s=len(problems) * k / max(seconds, 1e-9),
                max_prompt_length=prompt_len)
  return report, records


def format_table(reports) -> str:
  """A fixed-width table: one row per task."""
  cols = ["task", "problems", "k", "pass@1", "pass@1_stderr", "cons@k"]
  extra = sorted({c for r in reports for c in r if c.startswith("pass@") and c[5:].isdigit()
                  and c != "pass@1"}, key=lambda c: int(c[5:]))
  cols += extra + ["format_rate", "completion_length_mean"]
  names = {"problems": "num_problems", "k": "samples_per_problem"}
  short = {"completion_length_mean": "mean_len", "pass@1_stderr": "se"}
  rows = [[short.get(c, c) for c in cols]]
  for r in reports:
    row = []
    for c in cols:
      v = r.get(names.get(c, c), "")
      row.append(f"{v:.3f}" if isinstance(v, float) and c != "completion_length_mean"
                 else f"{v:.1f}" if isinstance(v, float) else str(v))
    rows.append(row)
  widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
  return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows)


def main(argv):
  del argv
  logging.getLogger("r1jax").setLevel(logging.INFO)
  names = [t.strip() for t in FLAGS.task.split(",") if t.strip()]
  if not names:
    raise app.UsageError("--task is empty")
  model_config, params, tokenizer = common.load_policy()
  report_path = FLAGS.report or os.path.join(FLAGS.workdir or ".", "eval_report.json")
  key = jax.random.PRNGKey(FLAGS.seed)
  reports, all_records = [], []
  for i, name in enumerate(names):
    report, records = evaluate_task(name, model_config, params, tokenizer,
                                    jax.random.fold_in(key, i))
    reports.append(report)
    all_records += [dict(r, task=name) for r in records]
  out = {"checkpoint": FLAGS.init_checkpoint or f"random:{FLAGS.model_preset}",
         "template": FLAGS.template, "system_prompt": FLAGS.system_prompt,
         "chat_instruction": FLAGS.chat_instruction,
         "chat_response_prefix": FLAGS.chat_response_prefix,
         "temperature": FLAGS.eval_temperature,
         "top_p": FLAGS.eval_top_p, "samples_per_problem": FLAGS.eval_num_samples,
         "max_new_tokens": FLAGS.max_completion_length, "seed": FLAGS.seed,
         "tasks": {r["task"]: r for r in reports}}
  os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
  with open(report_path, "w") as f:
    json.dump(out, f, indent=2)
  if FLAGS.records:
    logs.write_samples(FLAGS.records, all_records)
  print(format_table(reports))
  print(f"report: {report_path}")


if __name__ == "__main__":
  app.run(main)
