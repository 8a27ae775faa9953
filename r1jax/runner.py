"""The resumable outer loop of a GRPO run: steps, checkpoints, evaluation, logs and plots.

Everything a run writes goes to its workdir:
  metrics.jsonl, eval_metrics.jsonl   one JSON object per step / per evaluation
  tensorboard/                        TensorBoard event files
  checkpoints/<step>/                 orbax checkpoints of the whole train state
  samples/step_<k>.jsonl              held-out completions at each evaluation (and train rollouts)
  accuracy.png, response_length.png, reflection.png   the paper's Figures 2 and 3 in miniature
Running again with the same workdir resumes from the newest checkpoint that restores: one that
does not (a truncated file after a full disk) is moved aside to checkpoints/<step>.corrupt-<n>
with a warning, and its steps are done again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from typing import Any, Callable, Optional, Sequence

from r1jax import checkpoint, logs
from r1jax.trainer import GRPOTrainer, Rollout, State

log = logging.getLogger("r1jax")

# Phrases that mark a completion as reflective: it re-checks a result or tries again (the
# "aha moment" of the R1 paper, §2.2.4). Matched case-insensitively as regular expressions.
REFLECTION_PATTERNS = (
    r"\bwait\b", r"\bnot \d", r"\btry again\b", r"\btry\b", r"\bretry\b", r"\bre-?check",
    r"\bcheck\b", r"\bverify\b", r"\bmistake\b", r"\bwrong\b", r"\blet me re",
    r"\binstead\b", r"\bhmm\b",
)
_REFLECTION_RE = re.compile("|".join(REFLECTION_PATTERNS), re.IGNORECASE)


def reflection_rate(completions: Sequence[str]) -> float:
  """Share of completions containing at least one of REFLECTION_PATTERNS."""
  if not completions:
    return 0.0
  return sum(bool(_REFLECTION_RE.search(c)) for c in completions) / len(completions)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  workdir: str
  save_steps: int = 50
  save_total_limit: int = 3  # TRL's name for the number of checkpoints kept
  eval_steps: int = 0  # 0: evaluate only at the start and the end
  log_samples: int = 8  # train completions written per evaluation
  plot: bool = True


# (params, step) -> (report dict, records list)
EvalFn = Callable[[Any, int], tuple[dict, list]]


def _train_records(ro: Rollout, n: int) -> list[dict]:
  return [{"question": getattr(p, "question", str(p)), "gold": getattr(p, "answer", None),
           "completion": c, "reward": float(r)}
          for p, c, r in list(zip(ro.problems, ro.completions, ro.rewards))[:n]]


def run_grpo(trainer: GRPOTrainer, params, run: RunConfig, *, eval_fn: Optional[EvalFn] = None,
             meta: Optional[dict] = None, max_steps: Optional[int] = None) -> State:
  """Trains until `max_steps` (default the trainer's), resuming from `run.workdir` if it holds
  checkpoints. Returns the final state. `meta` (e.g. the flags) is saved with each checkpoint."""
  os.makedirs(run.workdir, exist_ok=True)
  max_steps = max_steps or trainer.cfg.max_steps
  ckpt = checkpoint.Checkpointer(os.path.join(run.workdir, "checkpoints"), run.save_steps,
                                 run.save_total_limit)
  state = trainer.init_state(params)
  start = 0
  if ckpt.latest_step() is not None:
    state, _ = ckpt.restore(state)
    start = int(state["step"])
    log.info("resumed from %s at step %d", ckpt.directory, start)
  writer = logs.MetricsWriter(run.workdir, resume_step=start)
  eval_writer = logs.MetricsWriter(run.workdir, resume_step=start,
                                   filename="eval_metrics.jsonl", tensorboard=False)
  samples_dir = os.path.join(run.workdir, "samples")

  def evaluate(step, ro=None):
    if eval_fn is None:
      return
    t0 = time.perf_counter()
    report, records = eval_fn(state["params"], step)
    report = dict(report, step=step, eval_time_s=time.perf_counter() - t0)
    eval_writer.write(report)
    writer.write({"step": step, **{f"eval/{k}": v for k, v in report.items()
                                   if isinstance(v, (int, float)) and k != "step"}})
    logs.write_samples(os.path.join(samples_dir, f"step_{step:06d}.jsonl"), records)
    if ro is not None:
      logs.write_samples(os.path.join(samples_dir, f"train_step_{step:06d}.jsonl"),
                         _train_records(ro, run.log_samples))
    log.info("eval step %d: %s", step,
             " ".join(f"{k}={v:.3f}" for k, v in report.items() if isinstance(v, float)))

  stop = checkpoint.StopAtStepBoundary()
  try:
    stop.install()
    # The evaluation due at the starting step, unless an earlier try of this run wrote it (a run
    # stopped after evaluating step 0 but before its first checkpoint), or skipped it (a run
    # that died inside the evaluation after its checkpoint).
    due = start == 0 or (run.eval_steps and start % run.eval_steps == 0 and start < max_steps)
    if due and start not in {r.get("step") for r in logs.read_jsonl(eval_writer.path)}:
      evaluate(start)
    ro = None
    for step in range(start, max_steps):
      stop.check()
      state, metrics, ro = trainer.step(state)
      metrics["reflection_rate"] = reflection_rate(ro.completions)
      writer.write(metrics)
      log.info("step %d/%d reward=%.3f acc=%.3f fmt=%.3f len=%.1f kl=%.4f clip=%.3f "
               "%.2fs (%.0f tok/s)", step + 1, max_steps, metrics["reward_mean"],
               metrics["accuracy"], metrics["format_reward"],
               metrics["completion_length_mean"], metrics["kl"],
               metrics.get("clip_fraction", 0.0), metrics["step_time_s"],
               metrics["sample_tokens_per_s"])
      ckpt.save(step + 1, state, meta=meta)
      if run.eval_steps and (step + 1) % run.eval_steps == 0 and step + 1 < max_steps:
        evaluate(step + 1, ro)
        if run.plot:
          logs.plot_run(run.workdir)
    final = int(state["step"])
    if ckpt.latest_step() != final:
      ckpt.save(final, state, meta=meta, force=True)
    done = logs.read_jsonl(eval_writer.path)
    if eval_fn is not None and (not done or done[-1]["step"] != final):
      evaluate(final, ro)
  except KeyboardInterrupt:
    # Interrupted (Ctrl-C, a scheduler's or a time guard's SIGINT): keep the last finished step,
    # so that a rerun resumes there rather than at the last --save_steps checkpoint.
    checkpoint.save_on_interrupt(ckpt, state, meta)
    raise
  finally:
    stop.uninstall()
    writer.close()
    eval_writer.close()
    ckpt.close()
  if run.plot:
    logs.plot_run(run.workdir)
  return state
