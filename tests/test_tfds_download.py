"""GSM8K and MATH-500 without --data_dir: TFDS downloads them from their public sources and checks
them against checksums.tsv. The network is faked at TFDS's lowest layer (downloader._open_url)
with the shared local copies, so everything above it (DownloadManager, checksum validation, the
download cache, preparation) is TFDS's own code."""

import contextlib
import hashlib
import json
import os
import sys

import pytest
from tensorflow_datasets.core.download import checksums, downloader

from conftest import SHARED_DATA
from r1jax.tasks import get_task
from r1jax.tasks import datasets

# Each source URL -> its copy under SHARED_DATA (byte-identical: same sha256 as upstream's).
LOCAL = {**{url: os.path.join("gsm8k", f"{split}.jsonl")
            for split, url in datasets.Gsm8k.URLS.items()},
         datasets.Math500.URLS["test"]: os.path.join("math500", "test.jsonl")}


class _Response:
  def __init__(self, url, size):
    self.url, self.headers = url, {"Content-length": str(size)}


def fake_network(monkeypatch, serve):
  """Routes TFDS's downloads to serve(url) -> bytes (or raises, as a dead network does); returns
  the list of URLs asked for."""
  asked = []

  @contextlib.contextmanager
  def open_url(url, **kwargs):
    del kwargs
    asked.append(url)
    data = serve(url)
    yield _Response(url, len(data)), iter([data[i:i + 65536] for i in range(0, len(data), 65536)])

  monkeypatch.setattr(downloader, "_open_url", open_url)
  return asked


def local_copy(url):
  with open(os.path.join(SHARED_DATA, LOCAL[url]), "rb") as f:
    return f.read()


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_checksums_file_lists_every_source_with_the_local_copies_sums():
  """checksums.tsv, read by TFDS's own parser: one line per URL, with the size and sha256 of the
  shared copies."""
  infos = checksums.load_url_infos(datasets.CHECKSUMS)
  assert set(infos) == set(LOCAL)
  for url in LOCAL:
    data = local_copy(url)
    assert infos[url].checksum == hashlib.sha256(data).hexdigest(), url
    assert int(infos[url].size) == len(data), url


def test_math500_downloads_checks_and_caches(tmp_path, monkeypatch):
  asked = fake_network(monkeypatch, local_copy)
  cache = str(tmp_path / "cache")
  problems = get_task("math500", data_dir=None, cache_dir=cache).split("test")
  raw = _jsonl(os.path.join(SHARED_DATA, "math500", "test.jsonl"))
  assert asked == [datasets.Math500.URLS["test"]]
  assert [(p.question, p.answer) for p in problems] == [(r["problem"], r["answer"]) for r in raw]
  assert "tensorflow" not in sys.modules
  # Prepared once: a second read, with the network gone, comes from the cache.
  fake_network(monkeypatch, lambda url: (_ for _ in ()).throw(ConnectionError("offline")))
  again = get_task("math500", cache_dir=cache).split("test")
  assert [p.answer for p in again] == [p.answer for p in problems]


def test_gsm8k_downloads_both_splits(tmp_path, monkeypatch):
  asked = fake_network(monkeypatch, local_copy)
  test = get_task("gsm8k", cache_dir=str(tmp_path)).split("test")
  raw = _jsonl(os.path.join(SHARED_DATA, "gsm8k", "test.jsonl"))
  assert sorted(asked) == sorted(datasets.Gsm8k.URLS.values())
  assert [p.question for p in test] == [r["question"] for r in raw] and test[0].answer == "18"


def test_a_changed_download_is_refused(tmp_path, monkeypatch):
  fake_network(monkeypatch, lambda url: local_copy(url).replace(b"\\frac", b"\\dfrac", 1))
  with pytest.raises(OSError, match="(?s)r1jax_math500.*wrong checksum.*--data_dir"):
    get_task("math500", cache_dir=str(tmp_path)).split("test")


def test_offline_without_data_dir_names_the_flag(tmp_path, monkeypatch):
  def dead(url):
    raise ConnectionError(f"cannot reach {url}")

  fake_network(monkeypatch, dead)
  with pytest.raises(OSError, match=r"(?s)cannot reach.*--data_dir.*test\.jsonl"):
    get_task("math500", cache_dir=str(tmp_path)).split("test")


def test_a_data_dir_never_downloads(tmp_path, monkeypatch):
  asked = fake_network(monkeypatch, local_copy)
  problems = get_task("math500", data_dir=SHARED_DATA, cache_dir=str(tmp_path)).split("test")
  assert len(problems) == 500 and asked == []
