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
    """Restores the state at `step` (default latest) into the structure of `abstract_state`
    (a pytree of arrays or jax.ShapeDtypeStruct with the target shardings)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    _check_shapes(self.directory, step, self.manager, target)
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                      meta=ocp.args.JsonRestore()))
    return restored["state"], dict(restored.get("meta") or {})

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


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
