"""experiments/r1.py: the four R1 stages run from one flagfile, and a rerun resumes stage by
stage (finished stages are skipped; a stage cut short resumes from its checkpoint)."""

import json
import os
import shutil
import subprocess
import sys

from r1jax import hf, logs, sft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("0_base", "1_cold_start_sft", "2_reasoning_rl", "3_rejection_sft", "4_final_rl")
FLAGS = """
--task=countdown
--task_options=question_style=short,min_count=3,max_count=3,max_number=20,max_target=50,num_train=64,num_test=16
--template=compact
--model_preset=tiny
--cold_start_num_examples=16
--max_prompt_length=40
--max_completion_length=40
--prompts_per_step=2
--num_generations=4
--max_steps=2
--final_rl_max_steps=2
--learning_rate=1e-4
--beta=0.0
--language_weight=0.5
--sft_batch_size=8
--sft_max_steps=3
--rejection_num_prompts=4
--rejection_num_samples=2
--rejection_temperature=0.6
--rejection_top_p=0.95
--rejection_include_cold_start
--eval_num_problems=4
--eval_num_samples=2
--eval_batch_size=4
--save_steps=1
--noplot
"""


def _run(flagfile, workdir):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "r1.py"),
                         f"--flagfile={flagfile}", f"--workdir={workdir}"],
                        capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stdout + proc.stderr


def _train_rows(stage_dir):
  """Rows of a GRPO stage's metrics.jsonl written by training steps (not evaluations)."""
  return [r for r in logs.read_jsonl(str(stage_dir / "metrics.jsonl")) if "loss" in r]


def _snapshot(workdir):
  """Path -> mtime of every file the pipeline wrote."""
  out = {}
  for root, _, files in os.walk(workdir):
    for f in files:
      out[os.path.join(root, f)] = os.path.getmtime(os.path.join(root, f))
  return out


def test_r1_pipeline_runs_all_stages_and_resumes(tmp_path):
  flagfile = tmp_path / "r1.flags"
  flagfile.write_text(FLAGS)
  workdir = tmp_path / "run"
  out = _run(flagfile, workdir)
  for stage in STAGES:
    assert f"stage {stage}: running" in out
    done = json.loads((workdir / stage / "DONE.json").read_text())
    assert "pass@1" in done["eval"] and "language_consistency" in done["eval"]
    if stage != "0_base":
      config, _ = hf.load_hf_checkpoint(str(workdir / stage / "policy"))
      assert config.num_layers == 2
  # Stage 1 trained on long correct traces, stage 3 on its samples that passed the filters.
  cold = sft.load_examples(str(workdir / "1_cold_start_sft" / "sft_data.jsonl"))
  assert len(cold) == 16 and all("Check:" in e.completion for e in cold)
  stats = json.loads((workdir / "3_rejection_sft" / "rejection_stats.json").read_text())
  assert stats["sampled"] == 4 * 2 and stats["kept"] + sum(
      stats[r] for r in sft.REJECTION_REASONS) == stats["sampled"]
  for stage in ("1_cold_start_sft", "3_rejection_sft"):
    assert [r["step"] for r in logs.read_jsonl(str(workdir / stage / "metrics.jsonl"))] == [
        1, 2, 3]
  rl = _train_rows(workdir / "2_reasoning_rl")
  assert [r["step"] for r in rl] == [1, 2]
  assert any(k.startswith("reward_language_consistency") for k in rl[0])
  summary = (workdir / "summary.md").read_text()
  assert all(f"| {s} |" in summary for s in STAGES)

  # Stage 4 "died" after its last checkpoint, before exporting: a rerun skips stages 0-3
  # (no file of theirs is touched), and stage 4 resumes at step 2 without training again.
  shutil.rmtree(workdir / "4_final_rl" / "policy")
  os.remove(workdir / "4_final_rl" / "DONE.json")
  before = _snapshot(workdir)
  out = _run(flagfile, workdir)
  for stage in STAGES[:4]:
    assert f"stage {stage}: done, skipped" in out
  assert "stage 4_final_rl: running" in out and "resumed from" in out
  after = _snapshot(workdir)
  changed = {p for p in after if before.get(p) != after[p]}
  assert all("4_final_rl" in p or p.endswith("summary.json") or p.endswith("summary.md")
             for p in changed), sorted(changed)
  assert [r["step"] for r in _train_rows(workdir / "4_final_rl")] == [1, 2]
  assert (workdir / "4_final_rl" / "policy" / "config.json").exists()

  # Everything done: a third run does no work at all.
  before = _snapshot(workdir)
  out = _run(flagfile, workdir)
  assert all(f"stage {s}: done, skipped" in out for s in STAGES)
  after = _snapshot(workdir)
  assert {p for p in after if before.get(p) != after[p]} <= {
      str(workdir / "summary.json"), str(workdir / "summary.md")}


_TEACHER_COLD_START = r"""
import json, sys
sys.path.insert(0, sys.argv[1] + "/experiments")
import r1
from absl import flags
from r1jax import corpus, sft
flags.FLAGS(["r1", "--flagfile=" + sys.argv[2], "--cold_start_teacher=/teacher",
             "--max_completion_length=" + sys.argv[3]])
policy, _ = r1.load_base_policy()
task, train, _ = r1.build_task()
short = {p.question: c for p, (_, c) in zip(train[:8], corpus.correct_traces(
    train[:8], 0, style="short", search_order="systematic", max_misses=100))}
size = lambda p: len(policy.tokenizer.encode(corpus.readable_trace(p, short[p.question])))
p0, p1 = train[:2]
p2 = next(p for p in train[2:8] if size(p) != size(p0))  # traces of two lengths
calls = []
def fake_rejection_sample(stage_dir, teacher, params, problems, score_fn, rcfg, n, t, **kw):
  calls.append((stage_dir, [p.question for p in problems], n, t, rcfg.max_per_prompt))
  ex = lambda p, c: sft.Example(p.question + "\n<think>", c, {"question": p.question})
  bad = short[p1.question].replace(": no.", ": yes.", 1)
  return [ex(p0, short[p0.question]), ex(p0, short[p0.question] + " "),  # a second one of p0
          ex(p1, bad), ex(p2, short[p2.question])], {"kept": 4}
r1.rejection_sample = fake_rejection_sample
r1.load_policy_dir = lambda path, like, flag: (like, None)
out = r1.cold_start_examples(train, policy, task, sys.argv[4])
print(json.dumps({"calls": calls, "questions": [e.meta["question"] for e in out],
                  "completions": [e.completion for e in out],
                  "tokens": [len(policy.tokenizer.encode(e.completion)) for e in out],
                  "expected": [corpus.readable_trace(p, short[p.question]) for p in (p0, p2)],
                  "stats": json.load(open(sys.argv[4] + "/teacher/cold_start_stats.json"))}))
"""


def test_cold_start_from_a_teacher_keeps_one_rewritten_trace_per_problem(tmp_path):
  """--cold_start_teacher: the teacher's right completions (faked here: a random tiny teacher
  answers nothing right) become one readable trace per problem; a completion whose checks are
  wrong is not rewritten, and one over --max_completion_length tokens is dropped."""
  flagfile = tmp_path / "r1.flags"
  flagfile.write_text(FLAGS.replace("--cold_start_num_examples=16", "--cold_start_num_examples=8"))
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")

  def run(max_len):
    stage = tmp_path / f"stage{max_len}"
    proc = subprocess.run([sys.executable, "-c", _TEACHER_COLD_START, ROOT, str(flagfile),
                           str(max_len), str(stage)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])

  out = run(4000)
  (stage_dir, questions, n, temperature, cap), = out["calls"]
  assert stage_dir.endswith("teacher") and len(questions) == 8 and (n, temperature, cap) == (4, 0.6, 0)
  assert out["questions"][0] == questions[0] and len(out["questions"]) == 2
  assert out["completions"] == out["expected"]
  assert out["stats"]["traces"] == 2 and out["stats"]["not_rewritten"] == 1
  out = run(min(out["tokens"]))  # the longer trace is now over the limit
  assert len(out["completions"]) == 1 and out["stats"]["too_long"] == 1
