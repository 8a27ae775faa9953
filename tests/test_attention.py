"""The attention implementations of the full-sequence forward against today's `model.attend`.

cuDNN itself needs a GPU (benchmarks/train_step.py --check compares it there). On a CPU the
tests run the exact jax.nn.dot_product_attention call of the cuDNN path with jax's "xla"
implementation, so the arguments it builds (GQA layout, is_causal, padding mask, causal_only)
are checked against the einsum reference, outputs and gradients, float32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import hf, model
from r1jax.config import get_config

from param_utils import random_params  # noqa: E402  (tests/ is on sys.path)

B, T, H, N, K = 3, 9, 4, 2, 8  # GQA: 2 query heads per kv head


def _qkv(seed=0):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.standard_normal(shape), jnp.float32)
               for shape in ((B, T, H, K), (B, T, N, K), (B, T, N, K), (B, T, H, K)))


def _left_padded():  # prompts left-padded, completions right-padded: a span per row
  slots = np.arange(T)
  start, end = np.array([0, 3, 5])[:, None], np.array([9, 8, 7])[:, None]
  return jnp.asarray((slots >= start) & (slots < end))


def _right_padded():  # valid tokens a prefix: what causal_only assumes
  return jnp.asarray(np.arange(T) < np.array([9, 6, 2])[:, None])


def _reference(q, k, v, kv_mask):
  return model.attend(q, k, v, model.attention_mask(kv_mask, jnp.arange(T)))


def _out_and_grads(fn, q, k, v, ct, kv_mask):
  """Outputs and d(sum(ct * out over valid queries))/d(q, k, v), padded queries zeroed."""

  @jax.jit
  def run(q, k, v, ct, kv_mask):
    valid = kv_mask[:, :, None, None]
    out, vjp = jax.vjp(lambda *a: fn(*a, kv_mask), q, k, v)
    grads = vjp(jnp.where(valid, ct, 0.0))
    return jnp.where(valid, out, 0.0), grads

  return run(q, k, v, ct, kv_mask)


CASES = {
    "xla, left padding": (lambda q, k, v, m: model.self_attention(
        q, k, v, m, implementation="xla"), _left_padded),
    "dot_product_attention, left padding": (lambda q, k, v, m: model.dot_product_attention(
        q, k, v, m, implementation="xla"), _left_padded),
    "dot_product_attention causal_only, right padding": (
        lambda q, k, v, m: model.dot_product_attention(q, k, v, m, implementation="xla",
                                                       causal_only=True), _right_padded),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_attention_paths_equal_attend(case):
  fn, make_mask = CASES[case]
  q, k, v, ct = _qkv()
  kv_mask = make_mask()
  want_out, want_grads = _out_and_grads(_reference, q, k, v, ct, kv_mask)
  got_out, got_grads = _out_and_grads(fn, q, k, v, ct, kv_mask)
  np.testing.assert_allclose(got_out, want_out, rtol=1e-5, atol=1e-5)
  for name, got, want in zip("qkv", got_grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"d{name}")


def test_causal_only_is_wrong_for_left_padding():
  """The inputs above do exercise the padding: the causal mask alone differs under left
  padding, so a path that dropped the key mask would fail the test above."""
  q, k, v, ct = _qkv()
  kv_mask = _left_padded()
  want, _ = _out_and_grads(_reference, q, k, v, ct, kv_mask)
  got, _ = _out_and_grads(lambda *a: model.dot_product_attention(
      *a, implementation="xla", causal_only=True), q, k, v, ct, kv_mask)
  assert float(jnp.abs(got - want).max()) > 1e-2


def _valid_loss(config, params, tokens, mask, causal_only):
  logp, ent = model.sequence_log_probs(params, tokens, mask, config, temperature=0.8,
                                       causal_only=causal_only)
  w = mask[:, 1:] & mask[:, :-1]  # entries whose position and target are both valid
  weights = jnp.linspace(-1.0, 1.0, logp.size).reshape(logp.shape)
  return jnp.sum(jnp.where(w, weights * logp + 0.1 * ent, 0.0)), jnp.where(w, logp, 0.0)


def test_model_forward_causal_only(monkeypatch):
  """config.attention="cudnn" (run by jax's xla implementation here) with causal_only on
  right-padded rows against "xla" under the full mask: the same log-probs and parameter
  gradients at valid positions. (The left-padded, masked case through the whole model is
  tests/test_fused_logprobs.py::test_grpo_gradient_through_completion_log_probs.)"""
  monkeypatch.setitem(model.DOT_PRODUCT_ATTENTION, "cudnn", "xla")
  config = get_config("tiny", attention="xla")  # 4 query heads, 2 kv heads
  params = random_params(config)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, config.vocab_size, (B, T)))
  mask = _right_padded()
  grad = jax.jit(jax.grad(_valid_loss, argnums=1, has_aux=True), static_argnums=(0, 4))
  want_grads, want_logp = grad(config, params, tokens, mask, False)
  got_grads, got_logp = grad(config.replace(attention="cudnn"), params, tokens, mask, True)
  np.testing.assert_allclose(got_logp, want_logp, rtol=1e-5, atol=1e-5)
  for path, got in jax.tree_util.tree_leaves_with_path(got_grads):
    want = dict(jax.tree_util.tree_leaves_with_path(want_grads))[path]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()),
                               err_msg=jax.tree_util.keystr(path))


def test_attention_setting():
  config = get_config("tiny")
  # CPU: auto falls back to xla; cuDNN only where asked for or on a CUDA GPU.
  assert model.attention_implementation(config.replace(attention="auto"), T, False) == "xla"
  assert model.attention_implementation(config.replace(attention="cudnn"), T, True) == "cudnn"
  with pytest.raises(ValueError, match="R1JAX_ATTENTION"):
    config.replace(attention="flash")
  with pytest.raises(ValueError, match="causal_only"):
    model.forward({}, jnp.zeros((1, 2), jnp.int32), config, positions=jnp.zeros((1, 2), int),
                  kv_mask=jnp.ones((1, 2), bool), cache=model.init_cache(config, 1, 2),
                  causal_only=True)
  # Implementation choices never reach the exported config.json.
  exported = hf.config_to_hf(config.replace(attention="cudnn", fused_logprobs=False))
  assert not {"attention", "fused_logprobs"} & set(exported)
