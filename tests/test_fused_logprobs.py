"""model.fused_token_log_probs (chunked, recomputing custom VJP) against the plain path.

The reference is `model.token_log_probs` on the materialized [B,T,V] logits, differentiated
by JAX's autodiff: the fused values and the gradients (unembedding weight and hidden states) of
a loss that uses both the log-probs and the entropy must match it in float32, for tied and
untied embeddings, a temperature != 1 and chunks that do not divide the sequence; and so must
the GRPO loss gradient of every parameter through `trainer.completion_log_probs`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import grpo, model, trainer
from r1jax.config import get_config

from param_utils import random_params  # noqa: E402  (tests/ is on sys.path)

B, T = 3, 10  # chunks of 4 positions leave a ragged last one


def _setup(tie_embeddings, **overrides):
  config = get_config("tiny", tie_embeddings=tie_embeddings, attention="xla", **overrides)
  params = random_params(config)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, config.vocab_size, (B, T)))
  mask = jnp.asarray(np.arange(T) >= np.array([0, 3, 5])[:, None])  # left padding
  return config, params, tokens, mask


def _loss(params, hidden, targets, config, fused, chunk_size):
  if fused:
    logp, ent = model.fused_token_log_probs(params, hidden, targets, config, temperature=0.7,
                                            chunk_size=chunk_size)
  else:
    logp, ent = model.token_log_probs(model.unembed(params, hidden, config), targets, 0.7)
  weights = jnp.linspace(-1.0, 1.0, logp.size).reshape(logp.shape)
  return jnp.sum(weights * logp) + 0.5 * jnp.sum(weights[::-1] * ent), (logp, ent)


# Gradients w.r.t. the parameters (embed / lm_head) and the hidden states.
_grad = jax.jit(jax.grad(_loss, argnums=(0, 1), has_aux=True), static_argnums=(3, 4, 5))


def _assert_trees_close(got, want):
  for path, g in jax.tree_util.tree_leaves_with_path(got):
    w = dict(jax.tree_util.tree_leaves_with_path(want))[path]
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(np.abs(w).max()),
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("tie_embeddings", [True, False])
@pytest.mark.parametrize("chunk_size", [4, None])
def test_fused_equals_unfused(tie_embeddings, chunk_size):
  config, params, tokens, _ = _setup(tie_embeddings)
  hidden = jnp.asarray(np.random.default_rng(4).standard_normal((B, T, config.hidden_size)),
                       jnp.float32)
  want_grads, (want_logp, want_ent) = _grad(params, hidden, tokens, config, False, None)
  got_grads, (got_logp, got_ent) = _grad(params, hidden, tokens, config, True, chunk_size)
  np.testing.assert_allclose(got_logp, want_logp, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_ent, want_ent, rtol=1e-5, atol=1e-5)
  assert set(got_grads[0]) == set(want_grads[0])  # lm_head gets its gradient when untied
  assert float(jnp.abs(want_grads[0]["embed" if tie_embeddings else "lm_head"]).max()) > 0
  _assert_trees_close(got_grads, want_grads)


def test_fused_chunk_size():
  rows, length, vocab = 64, 639, 151936
  chunk = model.fused_chunk_size(rows, length, vocab)
  assert 4 * rows * chunk * vocab <= model.FUSED_CHUNK_BYTES
  chunks = -(-length // chunk)
  # As few chunks as the budget allows, spread evenly (less than one chunk row of padding each).
  assert chunks == -(-length // (model.FUSED_CHUNK_BYTES // (4 * rows * vocab)))
  assert chunks * chunk - length < chunks
  assert model.fused_chunk_size(2, 10, 128) == 10  # small: one chunk
  assert model.fused_chunk_size(1024, 10, 10 ** 6) == 1  # never below one position


def test_grpo_gradient_through_completion_log_probs(monkeypatch):
  """The GRPO loss gradient of the trainer's completion log-probs: fused log-probs with the
  cuDNN path's jax.nn.dot_product_attention call (jax's xla implementation on a CPU) against
  the plain path with einsum attention."""
  monkeypatch.setitem(model.DOT_PRODUCT_ATTENTION, "cudnn", "xla")
  config, params, _, _ = _setup(True)
  p, n = 5, 6
  rng = np.random.default_rng(2)
  prompt_tokens = jnp.asarray(rng.integers(0, config.vocab_size, (B, p)))
  prompt_mask = jnp.asarray(np.arange(p) >= np.array([0, 2, 4])[:, None])
  completion_tokens = jnp.asarray(rng.integers(0, config.vocab_size, (B, n)))
  completion_mask = jnp.asarray(np.arange(n) < np.array([6, 4, 1])[:, None])
  loss_cfg = grpo.GRPOConfig(num_generations=B, max_completion_length=n, beta=0.04)
  advantages = jnp.array([1.0, -0.5, -0.5])
  ref_logp = -jnp.ones((B, n))

  @jax.jit
  def losses(params):
    out = []
    for cfg in (config.replace(fused_logprobs=False),
                config.replace(fused_logprobs=True, attention="cudnn")):
      def loss(params, cfg=cfg):
        logp, _ = trainer.completion_log_probs(params, prompt_tokens, prompt_mask,
                                               completion_tokens, completion_mask, cfg,
                                               temperature=0.9, chunk_size=4)
        return grpo.grpo_loss(logp, jax.lax.stop_gradient(logp) - 0.05, ref_logp, advantages,
                              completion_mask, None, loss_cfg)[0]
      out.append(jax.value_and_grad(loss)(params))
    return out

  (want_loss, want_grads), (got_loss, got_grads) = losses(params)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5, atol=1e-6)
  _assert_trees_close(got_grads, want_grads)
