"""Benchmark tasks read from local JSONL files: GSM8K, MATH-500 (through TFDS), AIME 2024, AMC 2023.

GSM8K and MATH-500 are TFDS builders with a manual directory: `download_and_prepare` converts
the user's JSONL into array_record files under a cache `data_dir`, and the problems are then read
by random access through `tfds.data_source`, with no TensorFlow. Found with tfds 4.9.10 and no
TensorFlow installed: preparing works once the builder's `_info` builds `tfds.core.DatasetInfo`
directly (`dataset_info_from_configs` looks for metadata files next to the builder's module) and
`file_format="array_record"` is passed; `tfds.list_builders()` and `tfds.builder("name")` without
the class imported need TensorFlow (GCS lookups), so builders are used through their classes.

The cache is keyed by a hash of the source files' bytes, so pointing `data_dir` at another copy
(e.g. a small test copy) never reads a stale preparation. AIME 2024 (30 problems) and AMC 2023
(40) are read straight from JSONL: array_record buys nothing at that size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Optional, Sequence

import numpy as np
from etils import epath
import tensorflow_datasets as tfds

from r1jax.tasks.base import Problem, check_split

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "r1jax", "tfds")


def source_dir(data_dir: str, subdir: str, files: Sequence[str]) -> str:
  """The directory holding `files`: `data_dir/subdir` if it exists, else `data_dir` itself.

  So `--data_dir` may name the shared root (holding gsm8k/, math500/, ...) or one dataset's
  directory. Raises FileNotFoundError naming the missing path and the `--data_dir` flag.
  """
  if data_dir is None:
    raise FileNotFoundError(f"no data directory given for {subdir}: set --data_dir to a "
                            f"directory holding {subdir}/{files[0]}")
  nested = os.path.join(data_dir, subdir)
  directory = nested if os.path.isdir(nested) else data_dir
  for name in files:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path} not found: set --data_dir to a directory holding "
                              f"{subdir}/{name} (or {name} itself); got --data_dir={data_dir}")
  return directory


def _read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _files_hash(directory: str, files: Sequence[str]) -> str:
  h = hashlib.sha256()
  for name in files:
    with open(os.path.join(directory, name), "rb") as f:
      h.update(name.encode() + b"\0" + f.read())
  return h.hexdigest()[:16]


class _JsonlBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder whose splits are `<split>.jsonl` files in the manual directory.

  Subclasses register under their `name`, which is how `tfds.data_source(name)` finds them.
  """

  VERSION = tfds.core.Version("1.0.0")
  # tfds 4.9.10 otherwise finds this file through `importlib_resources`, a package it imports but
  # does not require on Python >= 3.9 (and TensorFlow is what usually brings it along).
  code_path = epath.Path(__file__)
  SPLITS: tuple[str, ...] = ()
  TEXT_FIELDS: tuple[str, ...] = ()
  INT_FIELDS: tuple[str, ...] = ()

  def _info(self):
    features = {k: tfds.features.Text() for k in self.TEXT_FIELDS}
    features.update({k: tfds.features.Scalar(dtype=np.int64) for k in self.INT_FIELDS})
    features["index"] = tfds.features.Scalar(dtype=np.int64)  # line number: file order
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    return {s: self._generate_examples(os.path.join(dl_manager.manual_dir, f"{s}.jsonl"))
            for s in self.SPLITS}

  def _generate_examples(self, path):
    for i, record in enumerate(_read_jsonl(path)):
      example = {k: str(record[k]) for k in self.TEXT_FIELDS}
      example.update({k: int(record[k]) for k in self.INT_FIELDS})
      yield i, dict(example, index=i)


class Gsm8k(_JsonlBuilder):
  """GSM8K (Cobbe et al., 2021): 7,473 train and 1,319 test grade-school word problems."""

  name = "r1jax_gsm8k"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put train.jsonl and test.jsonl of openai/grade-school-math (grade_school_math/data/) in "
      "the manual directory; fields: question, answer (a worked solution ending in '#### N').")
  SPLITS = ("train", "test")
  TEXT_FIELDS = ("question", "answer")


class Math500(_JsonlBuilder):
  """MATH-500 (Lightman et al., 2023): 500 test problems of MATH with LaTeX answers."""

  name = "r1jax_math500"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put test.jsonl of the MATH-500 split (openai/prm800k) in the manual directory; fields: "
      "problem, solution, answer, subject, level, unique_id.")
  SPLITS = ("test",)
  TEXT_FIELDS = ("problem", "solution", "answer", "subject", "unique_id")
  INT_FIELDS = ("level",)


def load_tfds_split(builder_cls, split: str, manual_dir: str,
                    cache_dir: Optional[str] = None) -> list[dict]:
  """Prepares `builder_cls` from `manual_dir` into the cache (once) and reads `split` in file
  order through `tfds.data_source` (array_record, random access, no TensorFlow)."""
  files = [f"{s}.jsonl" for s in builder_cls.SPLITS]
  data_dir = os.path.join(cache_dir or DEFAULT_CACHE_DIR,
                          f"{builder_cls.name}-{_files_hash(manual_dir, files)}")
  source = tfds.data_source(
      builder_cls.name, split=split, data_dir=data_dir,
      builder_kwargs={"file_format": "array_record"},
      download_and_prepare_kwargs={
          "download_config": tfds.download.DownloadConfig(manual_dir=manual_dir)})
  records = source.__getitems__(list(range(len(source))))
  decoded = [{k: v.decode("utf-8") if isinstance(v, bytes) else int(v) for k, v in r.items()}
             for r in records]  # Text features come back as bytes, Scalars as numpy ints
  return sorted(decoded, key=lambda r: r["index"])


def gsm8k_gold(solution: str) -> str:
  """The number after '####' in a GSM8K solution, without thousands separators."""
  if "####" not in solution:
    raise ValueError(f"GSM8K answer has no '####': {solution[-80:]!r}")
  return solution.rsplit("####", 1)[1].strip().replace(",", "")


@dataclasses.dataclass
class _FileTask:
  """Problems of a fixed benchmark. The splits are the files' own, in file order whatever the
  seed (the trainer's iterator shuffles); `data_dir` is what users pass as --data_dir."""

  data_dir: Optional[str] = None
  cache_dir: Optional[str] = None  # TFDS data_dir for the prepared array_record files
  name: str = ""
  reward_kind: str = "math"

  def split(self, name: str, seed: int = 0) -> list[Problem]:
    del seed
    check_split(name, self.splits, self.name)
    return self._load(name)

  def test(self, seed: int = 0) -> list[Problem]:
    return self.split("test", seed)


@dataclasses.dataclass
class Gsm8kTask(_FileTask):
  name: str = "gsm8k"
  reward_kind: str = "numeric"
  splits = ("train", "test")

  def train(self, seed: int = 0) -> list[Problem]:
    return self.split("train", seed)

  def _load(self, split):
    directory = source_dir(self.data_dir, "gsm8k", [f"{s}.jsonl" for s in Gsm8k.SPLITS])
    return [Problem(r["question"], gsm8k_gold(r["answer"]),
                    {"index": r["index"], "solution": r["answer"]})
            for r in load_tfds_split(Gsm8k, split, directory, self.cache_dir)]


@dataclasses.dataclass
class Math500Task(_FileTask):
  name: str = "math500"
  splits = ("test",)

  def _load(self, split):
    directory = source_dir(self.data_dir, "math500", ["test.jsonl"])
    return [Problem(r["problem"], r["answer"],
                    {k: r[k] for k in ("index", "subject", "level", "unique_id", "solution")})
            for r in load_tfds_split(Math500, split, directory, self.cache_dir)]


def _integer_text(answer) -> str:
  """AIME '025' -> '25', AMC 27.0 -> '27'; anything else unchanged."""
  if isinstance(answer, float) and answer.is_integer():
    return str(int(answer))
  text = str(answer).strip()
  return str(int(text)) if text.isdigit() else text


@dataclasses.dataclass
class CompetitionTask(_FileTask):
  """AIME 2024 (`subdir="aime24"`) or AMC 2023 (`"amc23"`): `test.jsonl` with problem, answer."""

  subdir: str = "aime24"
  splits = ("test",)

  def _load(self, split):
    directory = source_dir(self.data_dir, self.subdir, ["test.jsonl"])
    records = _read_jsonl(os.path.join(directory, "test.jsonl"))
    return [Problem(r["problem"], _integer_text(r["answer"]),
                    {"index": i, "id": r.get("id"), "url": r.get("url")})
            for i, r in enumerate(records)]
