"""What every task hands the trainer: `Problem`s, in deterministic, disjoint train/test splits."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Protocol, Sequence, runtime_checkable

REWARD_KINDS = ("countdown", "numeric", "math", "code")


@dataclasses.dataclass(frozen=True)
class Problem:
  """One question and its gold answer.

  `answer` is always a string: a reference equation (Countdown), an integer (arithmetic, GSM8K)
  or LaTeX (MATH-500). `meta` holds what the verifier needs beyond it (Countdown: `numbers`,
  `target`) and provenance (`index` in the source file, `subject`, ...).
  """

  question: str
  answer: str
  meta: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)


@runtime_checkable
class Task(Protocol):
  """A named source of problems and the kind of rule-based reward that checks them."""

  name: str
  reward_kind: str  # one of REWARD_KINDS

  def split(self, name: str, seed: int = 0) -> list[Problem]:
    """The problems of split `name` ("train" or "test"); the same list for the same seed."""
    ...


def check_split(name: str, available: Sequence[str], task: str) -> None:
  if name not in available:
    raise ValueError(f"split={name!r} not available for task {task!r}; expected one of "
                     f"{list(available)}")


def in_test_partition(key: str, test_fraction: float, salt: str) -> bool:
  """Assigns a procedural problem to the test side by a hash of its canonical `key`.

  The partition depends only on the problem (not on the seed), so train and test are disjoint
  for every pair of seeds, and a test set never leaks into any training run.
  """
  digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
  return int.from_bytes(digest, "little") / 2.0**64 < test_fraction


def split_seed(seed: int, split: str, salt: str) -> int:
  """An RNG seed per (seed, split, task), stable across Python runs (unlike `hash`)."""
  digest = hashlib.blake2b(f"{salt}:{split}:{seed}".encode(), digest_size=8).digest()
  return int.from_bytes(digest, "little")


class ProceduralTask:
  """Shared split logic for generated tasks: subclasses implement `_sample(rng) -> (key, Problem)`.

  `num_train` / `num_test` problems are drawn from `random.Random(split_seed(...))`, keeping
  those whose key falls on the split's side of `in_test_partition`. Test problems are distinct;
  training problems may repeat, as samples from a distribution do.
  """

  name: str = ""
  reward_kind: str = ""
  num_train: int = 0
  num_test: int = 0
  test_fraction: float = 0.1

  def _sample(self, rng) -> tuple[str, Problem]:
    raise NotImplementedError

  def split(self, name: str, seed: int = 0) -> list[Problem]:
    import random  # pylint: disable=import-outside-toplevel
    check_split(name, ("train", "test"), self.name)
    want_test = name == "test"
    size = self.num_test if want_test else self.num_train
    rng = random.Random(split_seed(seed, name, self.name))
    out, seen = [], set()
    # Bounded: the test side holds `test_fraction` of all problems, so ~size/test_fraction draws.
    max_draws = 20 * max(size, 1) / min(self.test_fraction, 1 - self.test_fraction) + 10_000
    draws = 0
    while len(out) < size:
      draws += 1
      if draws > max_draws:
        raise ValueError(f"task {self.name!r}: could only make {len(out)} distinct {name} "
                         f"problems of num_{name}={size}; widen the ranges or lower num_{name}")
      key, problem = self._sample(rng)
      if in_test_partition(key, self.test_fraction, self.name) != want_test:
        continue
      if want_test:
        if key in seen:
          continue
        seen.add(key)
      out.append(problem)
    return out

  def train(self, seed: int = 0) -> list[Problem]:
    return self.split("train", seed)

  def test(self, seed: int = 0) -> list[Problem]:
    return self.split("test", seed)
