"""Every committed flagfile parses with the script that its own header names (a misspelt or
removed flag fails here, not after a device machine has started)."""

import collections
import glob
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "experiments", "configs", "*.flags")))


def _script_of(path: str) -> str:
  rel = os.path.relpath(path, REPO)
  with open(path) as f:
    found = re.search(r"experiments/(\w+)\.py --flagfile=" + re.escape(rel), f.read())
  assert found, f"{rel}: its header names no `python experiments/<script>.py --flagfile={rel}`"
  return found.group(1)


BY_SCRIPT = collections.defaultdict(list)
for _path in CONFIGS:
  BY_SCRIPT[_script_of(_path)].append(os.path.relpath(_path, REPO))

PARSE = """
import sys
sys.path[:0] = [{repo!r}, {experiments!r}]
import importlib
from absl import flags
importlib.import_module({script!r})
for flagfile in sys.argv[1:]:
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["x", "--flagfile=" + flagfile])
  print("parsed", flagfile)
"""


def test_every_config_is_checked():
  assert sum(map(len, BY_SCRIPT.values())) == len(CONFIGS) >= 9


@pytest.mark.parametrize("script", sorted(BY_SCRIPT))
def test_configs_parse_with_their_script(script):
  code = PARSE.format(repo=REPO, experiments=os.path.join(REPO, "experiments"), script=script)
  result = subprocess.run([sys.executable, "-c", code, *BY_SCRIPT[script]], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.count("parsed") == len(BY_SCRIPT[script])


def test_a_misspelt_flag_fails_to_parse(tmp_path):
  bad = tmp_path / "bad.flags"
  bad.write_text("--flagfile=experiments/configs/r1_tiny.flags\n--cold_start_epoch=6\n")
  code = PARSE.format(repo=REPO, experiments=os.path.join(REPO, "experiments"), script="r1")
  result = subprocess.run([sys.executable, "-c", code, str(bad)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and "cold_start_epoch" in result.stderr
