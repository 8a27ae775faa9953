"""Orbax checkpoints of the whole train state, and restore-or-init for resumable runs."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

log = logging.getLogger("r1jax")


class CheckpointShapeError(ValueError):
  """A checkpoint's arrays do not match the model the flags describe."""


class Checkpointer:
  """An orbax CheckpointManager over `<workdir>/checkpoints`: save every `save_steps` steps
  (and on demand), keep the newest `max_to_keep`, restore the latest."""

  def __init__(self, directory: str, save_steps: int, max_to_keep: int = 3):
    if save_steps < 1:
      raise ValueError(f"--save_steps must be >= 1, got {save_steps}")
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(save_interval_steps=save_steps,
                                             max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, *, meta: Optional[dict] = None, force: bool = False):
    """Saves `state` at `step` when the interval says so (or `force`); waits for the write so
    that nothing is lost if the process dies right after."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              meta=ocp.args.JsonSave(meta or {}))
    saved = self.manager.save(step, args=args, force=force)
    self.manager.wait_until_finished()
    return saved

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> tuple[Any, dict]:
    """Restores the state at `step` into the structure of `abstract_state` (a pytree of arrays
    or jax.ShapeDtypeStruct with the target shardings).

    Without `step`: the newest checkpoint that restores. One that fails to read (a truncated
    array file after a full disk or a cut-short copy) is skipped with a warning, and once an
    older one has restored, each skipped directory is moved aside to `<step>.corrupt-<n>`, so
    that the run saves that step again instead of finding it taken. If none restores, raises
    RuntimeError listing each checkpoint and its error, and moves nothing. A checkpoint of
    another model (CheckpointShapeError) stops the search at once: older ones are of the same
    run and would not fit either."""
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    if step is not None:
      return self._restore_step(step, target)
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    failed = []
    for s in steps:
      try:
        restored = self._restore_step(s, target)
      except CheckpointShapeError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        failed.append((s, e))
        log.warning("checkpoint %s does not restore (%s): trying the one before it",
                    self._step_dir(s), _first_line(e))
        continue
      for bad, e in failed:
        aside = self._move_aside(bad)
        log.warning("resuming from step %d: moved checkpoint %s, which does not restore (%s), to "
                    "%s; delete that once you no longer need it", s, self._step_dir(bad),
                    _first_line(e), aside)
      if failed:
        self.manager.reload()
      return restored
    listing = "\n".join(f"  {self._step_dir(s)}: {_first_line(e)}" for s, e in failed)
    raise RuntimeError(
        f"no checkpoint in {self.directory} restores:\n{listing}\nDelete the broken ones (or "
        "the whole directory, to start the run again), or start the run in another directory")

  def _restore_step(self, step: int, target: Any) -> tuple[Any, dict]:
    _check_shapes(self.directory, step, self.manager, target)
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                      meta=ocp.args.JsonRestore()))
    return restored["state"], dict(restored.get("meta") or {})

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _move_aside(self, step: int) -> str:
    """Renames checkpoint `step`'s directory to `<step>.corrupt-<n>` (the first free n), a name
    orbax does not read as a step. Returns the new path."""
    n = 0
    while os.path.exists(f"{self._step_dir(step)}.corrupt-{n}"):
      n += 1
    aside = f"{self._step_dir(step)}.corrupt-{n}"
    if jax.process_index() == 0:
      os.rename(self._step_dir(step), aside)
    return aside

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def _first_line(e: BaseException) -> str:
  """An exception's type and first line: orbax's read errors carry a long tensorstore spec."""
  line = (str(e).strip().splitlines() or [""])[0].split(" [tensorstore_spec")[0]
  return f"{type(e).__name__}: {line[:500]}"


def _check_shapes(directory, step, manager, target):
  """Compares the saved array shapes with the target's; raises naming the first mismatch."""
  try:
    meta = manager.item_metadata(step)
    saved = meta["state"] if meta is not None else None
  except Exception:  # pylint: disable=broad-except
    return  # no metadata to compare: orbax itself will complain if shapes differ.
  if saved is None:
    return
  saved_flat = {_norm(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(
      saved, is_leaf=lambda x: hasattr(x, "shape"))[0]}
  for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
    s = saved_flat.get(_norm(path))
    if s is None:
      raise CheckpointShapeError(
          f"checkpoint {directory}/{step} has no entry {jax.tree_util.keystr(path)}: it was "
          "written by a run with another model or loss configuration")
    if hasattr(s, "shape") and tuple(s.shape) != tuple(leaf.shape):
      raise CheckpointShapeError(
          f"checkpoint {directory}/{step}: {jax.tree_util.keystr(path)} has shape "
          f"{tuple(s.shape)} but the model flags give {tuple(leaf.shape)}; use another "
          "--workdir or the flags of the run that wrote it")


def _norm(path) -> tuple[str, ...]:
  """A key path as plain strings: orbax's metadata turns named tuples into dicts and lists."""
  out = []
  for k in path:
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
  return tuple(out)


def save_json(path: str, obj: dict):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


def save_on_interrupt(ckpt: Checkpointer, state: Any, meta: Optional[dict] = None):
  """Called on KeyboardInterrupt (Ctrl-C, a scheduler's or a time guard's SIGINT): saves the last
  finished step, so that a rerun resumes there rather than at the last interval checkpoint."""
  if any(getattr(x, "is_deleted", lambda: False)() for x in jax.tree.leaves(state)):
    # Interrupted inside the update, whose jitted step had taken the buffers (donation).
    log.warning("interrupted inside a step: nothing newer than checkpoint %s to save",
                ckpt.latest_step())
    return
  step = int(state["step"])
  if step > 0 and ckpt.latest_step() != step:
    ckpt.save(step, state, meta=meta, force=True)
    log.warning("interrupted: saved the state of step %d", step)


class StopAtStepBoundary:
  """Within a training loop: the first SIGINT (Ctrl-C, a time guard's `timeout -s INT`) lets the
  step in progress finish, and `check()` at the next step boundary raises KeyboardInterrupt, so
  the loop's handler saves a whole, just-finished step (an interrupt inside a jitted update whose
  buffers were donated has nothing to save). A second SIGINT interrupts at once. Before
  `install()`, after `uninstall()`, and off the main thread (where handlers cannot be set),
  SIGINT acts as usual."""

  def __init__(self):
    self.requested = False
    self._old = None

  def _handler(self, signum, frame):
    del frame
    if self.requested:
      raise KeyboardInterrupt()
    self.requested = True
    log.warning("signal %d: stopping after the step in progress (again to stop at once)",
                signum)

  def install(self):
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGINT, self._handler)

  def check(self):
    if self.requested:
      raise KeyboardInterrupt("stopped at a step boundary")

  def uninstall(self):
    if self._old is not None:
      signal.signal(signal.SIGINT, self._old)
      self._old = None


def run_app(main) -> None:
  """absl's `app.run(main)` for the scripts whose loops save their state on KeyboardInterrupt
  (`StopAtStepBoundary`, `save_on_interrupt`): an interrupt (Ctrl-C, a time guard's SIGINT) then
  ends the script with one log line and exit status 130, not a traceback."""
  from absl import app  # pylint: disable=import-outside-toplevel
  try:
    app.run(main)
  except KeyboardInterrupt as e:
    detail = f" ({e})" if str(e) else ""
    log.warning("interrupted%s: the same command resumes from the saved state", detail)
    sys.exit(130)
