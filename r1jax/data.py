"""A deterministic, resumable stream of training problems.

Item i of the stream is problem perm_e[i mod n] where e = i // n is the epoch and perm_e a
permutation drawn from (seed, e). The stream's whole state is one integer, `position`, which the
train state carries and orbax saves, so a resumed run sees exactly the problems it would have.
"""

from __future__ import annotations

from typing import Generic, Sequence, TypeVar

import numpy as np

T = TypeVar("T")


class ProblemStream(Generic[T]):
  """Epoch-shuffled, position-addressed view of a list of problems."""

  def __init__(self, items: Sequence[T], seed: int):
    if not items:
      raise ValueError("the training split is empty")
    self.items = list(items)
    self.seed = seed
    self._perms: dict[int, np.ndarray] = {}

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      rng = np.random.default_rng([self.seed, epoch])
      self._perms = {epoch: rng.permutation(len(self.items))}  # keep one epoch in memory
    return self._perms[epoch]

  def get(self, position: int, count: int) -> list[T]:
    """The `count` problems starting at stream position `position`."""
    n = len(self.items)
    return [self.items[self._perm(i // n)[i % n]] for i in range(position, position + count)]
