"""Benchmark tasks read from JSONL files: GSM8K, MATH-500 (through TFDS), AIME 2024, AMC 2023.

GSM8K and MATH-500 are TFDS builders. Given a directory (--data_dir, the manual directory), they
read the user's JSONL from it, offline; without one, they download the files from their public
sources (`URLS`), which TFDS checks against the sizes and sha256 sums in `checksums.tsv` next to
this file. Either way `download_and_prepare` converts the JSONL into array_record files under a
cache `data_dir`, and the problems are then read by random access through `tfds.data_source`, with
no TensorFlow. Found with tfds 4.9.10 and no
TensorFlow installed: preparing works once the builder's `_info` builds `tfds.core.DatasetInfo`
directly (`dataset_info_from_configs` looks for metadata files next to the builder's module) and
`file_format="array_record"` is passed; `tfds.list_builders()` and `tfds.builder("name")` without
the class imported need TensorFlow (GCS lookups), so builders are used through their classes.

The cache is keyed by a hash of the source files' bytes (of the registered checksums, for
downloads), so pointing `data_dir` at another copy (e.g. a small test copy) never reads a stale
preparation. AIME 2024 (30 problems) and AMC 2023
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
# TFDS's checksum file (url, size, sha256, filename; tab-separated), read by the builders below.
CHECKSUMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checksums.tsv")


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
  URLS: dict[str, str] = {}  # split -> public source; size and sha256 in checksums.tsv
  TEXT_FIELDS: tuple[str, ...] = ()
  INT_FIELDS: tuple[str, ...] = ()

  def _info(self):
    features = {k: tfds.features.Text() for k in self.TEXT_FIELDS}
    features.update({k: tfds.features.Scalar(dtype=np.int64) for k in self.INT_FIELDS})
    features["index"] = tfds.features.Scalar(dtype=np.int64)  # line number: file order
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    """`<split>.jsonl` of the manual directory when one is given, else the downloads."""
    try:
      directory = dl_manager.manual_dir  # AssertionError: none given, or it is empty
      paths = {s: os.path.join(directory, f"{s}.jsonl") for s in self.SPLITS}
    except AssertionError:
      paths = dl_manager.download({s: self.URLS[s] for s in self.SPLITS})
    return {s: self._generate_examples(paths[s]) for s in self.SPLITS}

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
  URLS = {s: "https://raw.githubusercontent.com/openai/grade-school-math/master/"
             f"grade_school_math/data/{s}.jsonl" for s in SPLITS}
  TEXT_FIELDS = ("question", "answer")


class Math500(_JsonlBuilder):
  """MATH-500 (Lightman et al., 2023): 500 test problems of MATH with LaTeX answers."""

  name = "r1jax_math500"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put test.jsonl of the MATH-500 split (openai/prm800k) in the manual directory; fields: "
      "problem, solution, answer, subject, level, unique_id.")
  SPLITS = ("test",)
  # The repository keeps the file in Git LFS: raw.githubusercontent.com serves the 131-byte
  # pointer, media.githubusercontent.com the file it points at (sha256 35dc4108..., 446,564 B).
  URLS = {"test": "https://media.githubusercontent.com/media/openai/prm800k/main/prm800k/"
                  "math_splits/test.jsonl"}
  TEXT_FIELDS = ("problem", "solution", "answer", "subject", "unique_id")
  INT_FIELDS = ("level",)


def _registered(builder_cls) -> dict:
  """{url: UrlInfo} of the builder's URLS, from checksums.tsv; raises naming a missing one."""
  infos = builder_cls.url_infos or {}
  missing = [u for u in builder_cls.URLS.values() if u not in infos]
  if missing:
    raise FileNotFoundError(f"no checksum for {missing} in {CHECKSUMS}")
  return {u: infos[u] for u in builder_cls.URLS.values()}


def load_tfds_split(builder_cls, split: str, manual_dir: Optional[str],
                    cache_dir: Optional[str] = None) -> list[dict]:
  """Prepares `builder_cls` into the cache (once) and reads `split` in file order through
  `tfds.data_source` (array_record, random access, no TensorFlow). The source is `manual_dir`'s
  `<split>.jsonl` files, or, when `manual_dir` is None, the builder's URLS, downloaded into the
  cache and checked against checksums.tsv (a mismatch raises)."""
  if manual_dir is not None:
    key = _files_hash(manual_dir, [f"{s}.jsonl" for s in builder_cls.SPLITS])
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  else:
    sums = sorted((u, i.checksum) for u, i in _registered(builder_cls).items())
    key = "download-" + hashlib.sha256(json.dumps(sums).encode()).hexdigest()[:16]
    config = tfds.download.DownloadConfig(force_checksums_validation=True)
  data_dir = os.path.join(cache_dir or DEFAULT_CACHE_DIR, f"{builder_cls.name}-{key}")
  try:
    source = tfds.data_source(
        builder_cls.name, split=split, data_dir=data_dir,
        builder_kwargs={"file_format": "array_record"},
        download_and_prepare_kwargs={"download_config": config})
  except Exception as e:  # pylint: disable=broad-except
    if manual_dir is not None:
      raise
    raise OSError(
        f"downloading {builder_cls.name} from {sorted(builder_cls.URLS.values())} failed "
        f"({type(e).__name__}: {str(e)[:2000]}). Offline, or to use another copy, set --data_dir "
        f"to a directory holding {', '.join(s + '.jsonl' for s in builder_cls.SPLITS)}") from e
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
  seed (the trainer's iterator shuffles); `data_dir` is what users pass as --data_dir. Without
  one, GSM8K and MATH-500 are downloaded from their public sources (checksums checked)."""

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
    directory = None if self.data_dir is None else source_dir(
        self.data_dir, "gsm8k", [f"{s}.jsonl" for s in Gsm8k.SPLITS])
    return [Problem(r["question"], gsm8k_gold(r["answer"]),
                    {"index": r["index"], "solution": r["answer"]})
            for r in load_tfds_split(Gsm8k, split, directory, self.cache_dir)]


@dataclasses.dataclass
class Math500Task(_FileTask):
  name: str = "math500"
  splits = ("test",)

  def _load(self, split):
    directory = None if self.data_dir is None else source_dir(
        self.data_dir, "math500", ["test.jsonl"])
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
