"""notebooks/r1_zero.ipynb runs top to bottom (shortened: two GRPO steps of a small batch, no
installation) and shows the curves, the evaluation table and completions before and after RL."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "r1_zero.ipynb")


def test_notebook_first_cell_installs_and_is_colab_ready():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  first = next(c for c in nb.cells if c.cell_type == "code")
  assert "pip" in first.source and "install" in first.source and '"-e"' in first.source
  assert "git" in first.source and "R1JAX_NOTEBOOK_CI" in first.source
  assert nb.metadata["kernelspec"]["name"] == "python3"
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "clear outputs"


@pytest.mark.slow
def test_notebook_runs_shortened(tmp_path, monkeypatch):
  monkeypatch.setenv("R1JAX_NOTEBOOK_CI", "1")
  monkeypatch.setenv("R1JAX_NOTEBOOK_STEPS", "2")
  monkeypatch.setenv("R1JAX_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
  monkeypatch.setenv("R1JAX_NOTEBOOK_FLAGS", " ".join([
      "--prompts_per_step=2", "--num_generations=2", "--max_completion_length=24",
      "--eval_num_problems=4", "--eval_num_samples=2", "--eval_batch_size=4", "--eval_steps=1",
      "--save_steps=1"]))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", "")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs if o.output_type == "stream")
  assert "step 2/2" in text and "pass@1" in text
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert len(images) == 3  # accuracy, response length, reflection
  assert "before" in text and "after (2 steps)" in text
  assert os.path.exists(tmp_path / "run" / "eval_metrics.jsonl")
