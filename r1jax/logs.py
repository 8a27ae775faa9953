"""What a run writes into its workdir: metrics.jsonl, TensorBoard events, samples, PNG plots."""

from __future__ import annotations

import json
import os
from typing import Iterable, Optional, Sequence


class MetricsWriter:
  """Appends one JSON object per step to `metrics.jsonl` and mirrors scalars to TensorBoard.

  On resume from step k, lines with step > k (written after the last checkpoint by a run that
  then died) are dropped so the file matches an uninterrupted run.
  """

  def __init__(self, workdir: str, resume_step: int = 0, filename: str = "metrics.jsonl",
               tensorboard: bool = True):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, filename)
    kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
    with open(self.path, "w") as f:
      for r in kept:
        f.write(json.dumps(r) + "\n")
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, metrics: dict, prefix: str = ""):
    step = int(metrics["step"])
    with open(self.path, "a") as f:
      f.write(json.dumps({k: _jsonable(v) for k, v in metrics.items()}) + "\n")
    if self._tb is not None:
      for k, v in metrics.items():
        if k != "step" and isinstance(v, (int, float)):
          self._tb.add_scalar(prefix + k, v, step)
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


def _jsonable(v):
  if hasattr(v, "item"):
    return v.item()
  return v


def read_jsonl(path: str) -> list[dict]:
  """The rows of a JSONL log ([] if absent). A last line without its newline is one that a
  running writer has not finished, and is left out; any other bad line raises."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        if line.endswith("\n"):
          raise
  return rows


def write_samples(path: str, records: Iterable[dict]):
  """One JSON object per completion (prompt, completion, reward, answer, ...)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps({k: _jsonable(v) for k, v in r.items()}) + "\n")


def smooth(values: Sequence[float], window: int) -> list[float]:
  """Trailing mean over the last `window` values."""
  out, acc = [], []
  for v in values:
    acc.append(v)
    acc = acc[-window:]
    out.append(sum(acc) / len(acc))
  return out


def plot_run(workdir: str, out_dir: Optional[str] = None, title: str = "") -> list[str]:
  """The analogs of the paper's Figure 2 (accuracy vs step) and Figure 3 (response length vs
  step) from `metrics.jsonl` and `eval_metrics.jsonl`. Returns the PNG paths."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  out_dir = out_dir or workdir
  train = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  evals = read_jsonl(os.path.join(workdir, "eval_metrics.jsonl"))
  paths = []
  if not train and not evals:
    return paths
  window = max(1, len(train) // 20)

  def smoothed(key):  # rows without the key (e.g. the eval-only row of step 0) are skipped
    rows = [r for r in train if key in r]
    return [r["step"] for r in rows], smooth([r[key] for r in rows], window)

  def figure(name, lines, ylabel, default_title, ylim=None):
    """lines: [(xs, ys, label, plot kwargs)] -> <out_dir>/<name>.png."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for xs, ys, label, kw in lines:
      ax.plot(xs, ys, label=label, **kw)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if ylim:
      ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or default_title)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, f"{name}.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

  acc = [(*smoothed("accuracy"), "train accuracy (smoothed)", {"alpha": 0.6})] if train else []
  for key, label in (("pass@1", "held-out pass@1"), ("cons@k", "held-out cons@k")):
    pts = [(r["step"], r[key]) for r in evals if key in r]
    if pts:
      acc.append((*zip(*pts), label, {"marker": "o"}))
  figure("accuracy", acc, "accuracy", "accuracy during RL (cf. R1 paper Fig. 2)", (0, 1))
  length = ([(*smoothed("completion_length_mean"), "mean response length (tokens)", {})]
            if train else [])
  figure("response_length", length, "tokens", "response length during RL (cf. R1 paper Fig. 3)")
  if train and any("reflection_rate" in r for r in train):
    figure("reflection", [(*smoothed("reflection_rate"),
                           "share of completions that re-check or retry", {})],
           "share", "reflection during RL", (0, 1))
  return paths
