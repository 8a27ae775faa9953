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
CONFIGS = sorted(os.path.relpath(p, REPO)
                 for p in glob.glob(os.path.join(REPO, "experiments", "configs", "*.flags")))
PARSE = """
import importlib, sys
sys.path[:0] = [{repo!r}, {experiments!r}]
from absl import flags
importlib.import_module({script!r})
for flagfile in sys.argv[1:]:
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["x", "--flagfile=" + flagfile])
  print("parsed", flagfile)
"""


def _script_of(rel: str):
  """The script that `rel`'s header runs it with (`python experiments/<script>.py
  --flagfile=<rel>`), or None."""
  with open(os.path.join(REPO, rel)) as f:
    found = re.search(r"experiments/(\w+)\.py --flagfile=" + re.escape(rel), f.read())
  return found.group(1) if found else None


def _by_script() -> dict:
  by = collections.defaultdict(list)
  for rel in CONFIGS:
    by[_script_of(rel)].append(rel)
  return by


def _parse(script: str, flagfiles):
  code = PARSE.format(repo=REPO, experiments=os.path.join(REPO, "experiments"), script=script)
  return subprocess.run([sys.executable, "-c", code, *flagfiles], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_every_config_names_its_script():
  assert len(CONFIGS) >= 9
  assert None not in _by_script(), _by_script().get(None)


@pytest.mark.parametrize("script", ["compare_distill_rl", "r1", "r1_zero"])
def test_configs_parse_with_their_script(script):
  flagfiles = _by_script()[script]
  assert flagfiles, f"no config names experiments/{script}.py"
  result = _parse(script, flagfiles)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.count("parsed") == len(flagfiles)


def test_a_misspelt_flag_fails_to_parse(tmp_path):
  bad = tmp_path / "bad.flags"
  bad.write_text("--flagfile=experiments/configs/r1_tiny.flags\n--cold_start_epoch=6\n")
  result = _parse("r1", [str(bad)])
  assert result.returncode != 0 and "cold_start_epoch" in result.stderr
