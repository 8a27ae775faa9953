"""Random model parameters for tests, from NumPy (no jitted init to compile)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import model


def random_params(config, seed=0, std=0.3):
  """Random parameters of `config`: normal(0, std) float32, norms at 1."""
  rng = np.random.default_rng(seed)

  def leaf(path, shape):
    if "norm" in jax.tree_util.keystr(path):
      return jnp.ones(shape, jnp.float32)
    return jnp.asarray(std * rng.standard_normal(shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(leaf, model.param_shapes(config),
                                          is_leaf=lambda x: isinstance(x, tuple))
