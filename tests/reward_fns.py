"""Misbehaving reward functions for test_rewards' batch-scoring tests.

They live in this module, which imports nothing heavy, because a process-pool worker imports
the module of each function it is sent: test_rewards itself takes ~2.5 s to import (JAX,
pytest), longer than the scoring deadline of those tests (~2.3 s without progress), so a pool
whose workers had not imported it yet timed every item out (the tests then passed only after
an earlier test had warmed the pool: not alone, nor under pytest-xdist).
"""

import os
import time


def raising_reward(response, problem):
  if "boom" in response:
    raise RuntimeError("boom")
  return 0.5


def sleeping_reward(response, problem):
  if "sleep" in response:
    time.sleep(30)
  return 1.0


def crashing_reward(response, problem):
  if "crash" in response:
    os._exit(1)  # a dead worker: its result never comes back
  return 1.0
