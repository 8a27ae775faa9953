"""Tests of r1jax.sampling against brute-force decoding, transformers and exact distributions."""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from r1jax import model, sampling
from r1jax.config import get_config
from r1jax.sampling import (SamplingConfig, filter_logits, generate, left_pad, sample_token)

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]]  # different lengths: left padding matters


@pytest.fixture(scope="module")
def tiny():
  config = get_config("tiny")
  # A large init_std makes next-token distributions peaked, so greedy has no near-ties and
  # sampling tests see non-uniform distributions.
  params = model.init_params(config, jax.random.PRNGKey(0), init_std=0.3)
  return config, params


def _full_logits(params, config, tokens, mask):
  """Last-dimension logits [B,T,V] of a cache-free forward over left-padded `tokens`."""
  tokens, mask = jnp.asarray(tokens), jnp.asarray(mask, bool)
  logits, _ = model.forward(params, tokens, config, positions=model.positions_from_mask(mask),
                            kv_mask=mask)
  return np.asarray(logits, np.float64)


def _brute_force_greedy(params, config, prompt, n):
  """Greedy decoding that reruns the whole unpadded sequence through the model at every step.

  The sequence sits at the start of a fixed buffer (one compilation); the slots after it are
  masked, and causal attention keeps them from affecting the positions read.
  """
  forward = jax.jit(lambda t, m: model.forward(params, t, config, kv_mask=m,
                                               positions=model.positions_from_mask(m))[0])
  buf = np.zeros((1, len(prompt) + n), np.int32)
  buf[0, :len(prompt)] = prompt
  for i in range(len(prompt), len(prompt) + n):
    m = np.arange(buf.shape[1])[None] < i
    buf[0, i] = int(np.argmax(np.asarray(forward(buf, m))[0, i - 1]))
  return buf[0, len(prompt):].tolist()


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


# ----------------------------------------------------------------------------------------------
def test_left_pad():
  tokens, mask = left_pad([[1, 2, 3], [4]], pad_id=9)
  np.testing.assert_array_equal(tokens, [[1, 2, 3], [9, 9, 4]])
  np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1]])
  assert tokens.dtype == np.int32 and mask.dtype == bool
  tokens, mask = left_pad([[1, 2]], pad_id=0, max_len=4)
  np.testing.assert_array_equal(tokens, [[0, 0, 1, 2]])
  with pytest.raises(ValueError, match="max_prompt_length"):
    left_pad([[1, 2, 3]], pad_id=0, max_len=2)
  tokens, mask = left_pad([[1, 2, 3]], pad_id=0, max_len=2, truncate=True)
  np.testing.assert_array_equal(tokens, [[2, 3]])
  with pytest.raises(ValueError, match=r"prompts\[1\]"):
    left_pad([[1], []], pad_id=0)


@pytest.mark.parametrize("field, value", [
    ("max_new_tokens", 0), ("temperature", -1.0), ("top_k", -2), ("top_p", 0.0),
    ("top_p", 1.5), ("num_samples", 0), ("pad_id", -1), ("stop_sequences", ((),)),
    ("attention", "flash"),
])
def test_sampling_config_validation(field, value):
  kwargs = {"max_new_tokens": 4, field: value}
  with pytest.raises(ValueError, match=field):
    SamplingConfig(**kwargs)


def test_generate_validation(tiny):
  config, params = tiny
  tokens, mask = left_pad(PROMPTS, 0)
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="pad_id"):
    generate(params, config, tokens, mask, key, SamplingConfig(4, pad_id=config.vocab_size))
  with pytest.raises(ValueError, match="eos_ids"):
    generate(params, config, tokens, mask, key, SamplingConfig(4, eos_ids=(config.vocab_size,)))
  with pytest.raises(ValueError, match="prompt_mask"):
    generate(params, config, tokens, mask[:, 1:], key, SamplingConfig(4))
  # Lists are accepted and the config stays hashable (it is a static jit argument).
  assert hash(SamplingConfig(4, eos_ids=[2], stop_sequences=[[3, 4]]))


# ----------------------------------------------------------------------------------------------
# "ragged": attention over each row's filled slots only (a Pallas kernel, interpreted on CPU).
@pytest.mark.parametrize("attention", ["xla", "ragged"])
def test_greedy_matches_brute_force(tiny, attention):
  config, params = tiny
  n, g = 8, 2
  tokens, mask = left_pad(PROMPTS, pad_id=0)
  out = generate(params, config, tokens, mask, jax.random.PRNGKey(1),
                 SamplingConfig(max_new_tokens=n, temperature=0.0, num_samples=g,
                                attention=attention))
  assert out.tokens.shape == (len(PROMPTS) * g, n) and out.tokens.dtype == jnp.int32
  np.testing.assert_array_equal(out.prompt_tokens, np.repeat(tokens, g, axis=0))
  np.testing.assert_array_equal(out.prompt_mask, np.repeat(mask, g, axis=0))
  for b, prompt in enumerate(PROMPTS):
    expected = _brute_force_greedy(params, config, prompt, n)
    for s in range(g):
      np.testing.assert_array_equal(out.tokens[b * g + s], expected, err_msg=f"prompt {b}")
  assert np.all(out.mask) and np.all(out.lengths == n) and np.all(out.truncated)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_greedy_matches_transformers(tmp_path, family):
  from r1jax.hf import load_hf_checkpoint  # pylint: disable=import-outside-toplevel
  from tests.hf_utils import make_tiny_hf_model  # pylint: disable=import-outside-toplevel
  torch_model, path = make_tiny_hf_model(tmp_path, family, seed=0)
  config, params = load_hf_checkpoint(path)
  config = config.replace(dtype="float32", param_dtype="float32")
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), params)
  n = 8
  prompts = [[p % config.vocab_size for p in prompt] for prompt in PROMPTS]
  tokens, mask = left_pad(prompts, pad_id=0)
  out = generate(params, config, tokens, mask, jax.random.PRNGKey(0),
                 SamplingConfig(max_new_tokens=n, temperature=0.0))
  # No EOS on the transformers side, so both run all n steps (ours has eos_ids=()).
  torch_model.generation_config.eos_token_id = None
  for b, prompt in enumerate(prompts):
    # One prompt at a time, unpadded: transformers' own padding handling is not under test.
    with torch.no_grad():
      hf = torch_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                dtype=torch.long), do_sample=False, max_new_tokens=n,
                                pad_token_id=0)
    hf = hf[0, len(prompt):].tolist()
    assert len(hf) == n
    np.testing.assert_array_equal(np.asarray(out.tokens[b]), hf, err_msg=f"prompt {b}")


@pytest.mark.parametrize("attention", ["xla", "ragged"])
def test_log_probs_match_full_forward(tiny, attention):
  config, params = tiny
  n, g, temperature = 10, 2, 0.7
  tokens, mask = left_pad(PROMPTS, pad_id=0)
  sampling = SamplingConfig(max_new_tokens=n, temperature=temperature, top_k=20, top_p=0.9,
                            num_samples=g, attention=attention)
  # EOS: a token that row 0 samples halfway, so that it stops there (same key, same samples
  # until then) while rows without that token go on.
  eos = int(generate(params, config, tokens, mask, jax.random.PRNGKey(3), sampling).tokens[0, 4])
  sampling = dataclasses.replace(sampling, eos_ids=(eos,))
  out = generate(params, config, tokens, mask, jax.random.PRNGKey(3), sampling)
  full_tokens = np.concatenate([out.prompt_tokens, out.tokens], axis=1)
  full_mask = np.concatenate([out.prompt_mask, out.mask], axis=1)
  logits = _full_logits(params, config, full_tokens, full_mask)
  p = tokens.shape[1]
  # Logits at slot p-1+t predict generated token t; scored over the full vocabulary.
  logp = _log_softmax(logits[:, p - 1:-1] / temperature)
  expected = np.take_along_axis(logp, np.asarray(out.tokens)[..., None], -1)[..., 0]
  m = np.asarray(out.mask)
  assert out.log_probs.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out.log_probs)[m], expected[m], atol=1e-5, rtol=0)
  assert np.all(np.asarray(out.log_probs)[~m] == 0)
  assert np.all(np.asarray(out.tokens)[~m] == sampling.pad_id)
  # Some rows stopped at EOS while others went on (ragged: a finished row's attention reads
  # only its first slot from then on; the rows still going must not notice).
  assert 0 < np.sum(~np.asarray(out.truncated)) < len(out.truncated), out.lengths
  # The G samples of one prompt differ (sampling, not copies).
  assert not np.array_equal(out.tokens[0], out.tokens[1])


# ----------------------------------------------------------------------------------------------
def _reference_filtered_probs(logits, temperature, top_k, top_p):
  """Float64 NumPy truncated, renormalized distribution (top-k, then top-p as HF)."""
  z = np.asarray(logits, np.float64) / temperature
  order = np.argsort(-z)
  keep = np.zeros(z.shape, bool)
  k = top_k if top_k > 0 else len(z)
  candidates = order[:k]
  pc = np.exp(z[candidates] - z[candidates].max())
  pc /= pc.sum()
  mass_before = np.cumsum(pc) - pc
  keep[candidates[mass_before < top_p]] = True
  probs = np.where(keep, np.exp(z - z.max()), 0.0)
  return probs / probs.sum()


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, 0, 1.0), (1.0, 5, 1.0), (0.8, 0, 0.7), (1.3, 6, 0.8),
])
def test_sample_token_frequencies(temperature, top_k, top_p):
  v, n = 16, 40_000
  logits = jnp.asarray(np.random.default_rng(0).normal(0, 1.5, v), jnp.float32)
  ref = _reference_filtered_probs(logits, temperature, top_k, top_p)
  rows = jnp.broadcast_to(logits, (n, v))
  tokens, logp = jax.jit(sample_token, static_argnums=(2, 3, 4))(
      jax.random.PRNGKey(7), rows, temperature, top_k, top_p)
  freq = np.bincount(np.asarray(tokens), minlength=v) / n
  assert np.all(freq[ref == 0] == 0), "a token outside the truncated set was sampled"
  # Each frequency is a mean of n Bernoulli(p) draws: 5 standard errors.
  tol = 5 * np.sqrt(ref * (1 - ref) / n) + 1e-12
  np.testing.assert_array_less(np.abs(freq - ref), tol + 1e-9)
  # Log-probs are under the full, untruncated softmax(logits / T).
  full = _log_softmax(np.asarray(logits, np.float64) / temperature)
  np.testing.assert_allclose(np.asarray(logp), full[np.asarray(tokens)], atol=1e-6)


@pytest.mark.parametrize("top_k, top_p", [(7, 1.0), (0, 0.6), (10, 0.85), (0, 0.05)])
def test_filter_logits_matches_transformers(top_k, top_p):
  from transformers.generation.logits_process import (  # pylint: disable=import-outside-toplevel
      TopKLogitsWarper, TopPLogitsWarper)
  logits = np.random.default_rng(1).normal(0, 2.0, (6, 50)).astype(np.float32)
  ref = torch.from_numpy(logits)
  if top_k:
    ref = TopKLogitsWarper(top_k)(None, ref)
  if top_p < 1:
    ref = TopPLogitsWarper(top_p)(None, ref)
  ours = np.asarray(filter_logits(jnp.asarray(logits), top_k, top_p))
  np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref.numpy()))
  np.testing.assert_array_equal(ours[np.isfinite(ours)], logits[np.isfinite(ours)])


def test_greedy_sample_token_is_argmax():
  logits = jnp.asarray(np.random.default_rng(2).normal(size=(5, 30)), jnp.float32)
  tokens, logp = sample_token(jax.random.PRNGKey(0), logits, 0.0, top_k=3, top_p=0.5)
  np.testing.assert_array_equal(tokens, np.argmax(np.asarray(logits), -1))
  full = _log_softmax(np.asarray(logits, np.float64))
  np.testing.assert_allclose(logp, full[np.arange(5), np.asarray(tokens)], atol=1e-6)


# ----------------------------------------------------------------------------------------------
def _expected_stop(row, eos_ids, stop_sequences):
  """Number of tokens up to and including the first EOS or completed stop sequence, or None."""
  for t in range(len(row)):
    if row[t] in eos_ids:
      return t + 1
    for seq in stop_sequences:
      if t + 1 >= len(seq) and tuple(row[t + 1 - len(seq):t + 1]) == tuple(seq):
        return t + 1
  return None


def test_eos_and_stop_sequences(tiny):
  config, params = tiny
  n, g = 12, 3
  tokens, mask = left_pad(PROMPTS, pad_id=0)
  key = jax.random.PRNGKey(11)
  base = SamplingConfig(max_new_tokens=n, temperature=1.0, num_samples=g, pad_id=1)
  free = np.asarray(generate(params, config, tokens, mask, key, base).tokens)
  # Step t samples with fold_in(key, t) whatever the stopping rule, so the stopped run must equal
  # the free-running one up to the stop. Pick an EOS and a stop sequence that occur in it.
  eos = int(free[0, 4])
  stop_seq = tuple(int(x) for x in free[2, 5:7])
  stopped_cfg = SamplingConfig(max_new_tokens=n, temperature=1.0, num_samples=g, pad_id=1,
                               eos_ids=(eos,), stop_sequences=(stop_seq, (127, 126, 125)))
  out = generate(params, config, tokens, mask, key, stopped_cfg)
  for r in range(free.shape[0]):
    stop = _expected_stop(list(free[r]), (eos,), stopped_cfg.stop_sequences)
    length = n if stop is None else stop
    assert int(out.lengths[r]) == length, f"row {r}"
    assert bool(out.truncated[r]) == (stop is None), f"row {r}"
    np.testing.assert_array_equal(out.tokens[r, :length], free[r, :length])
    assert np.all(np.asarray(out.tokens[r, length:]) == 1)
    np.testing.assert_array_equal(out.mask[r], np.arange(n) < length)
    assert np.all(np.asarray(out.log_probs[r, length:]) == 0)
  assert int(out.lengths[0]) <= 5 and int(out.lengths[2]) <= 7
  assert np.any(np.asarray(out.lengths) < n)


def test_all_rows_stop_early(tiny):
  """Every row stops at its first token: the loop exits early and the outputs are well formed."""
  config, params = tiny
  tokens, mask = left_pad(PROMPTS, pad_id=0)
  n = 6
  greedy = SamplingConfig(max_new_tokens=n, temperature=0.0)
  first = np.asarray(generate(params, config, tokens, mask, jax.random.PRNGKey(0), greedy).tokens)
  out = generate(params, config, tokens, mask, jax.random.PRNGKey(0),
                 SamplingConfig(max_new_tokens=n, temperature=0.0,
                                eos_ids=tuple(sorted(set(first[:, 0].tolist())))))
  np.testing.assert_array_equal(out.tokens[:, 0], first[:, 0])
  np.testing.assert_array_equal(out.lengths, 1)
  assert not np.any(out.truncated)
  assert np.all(np.asarray(out.tokens[:, 1:]) == 0)


def test_determinism(tiny):
  config, params = tiny
  tokens, mask = left_pad(PROMPTS, pad_id=0)
  sampling = SamplingConfig(max_new_tokens=8, temperature=1.0, num_samples=2)
  a = generate(params, config, tokens, mask, jax.random.PRNGKey(5), sampling)
  b = generate(params, config, tokens, mask, jax.random.PRNGKey(5), sampling)
  c = generate(params, config, tokens, mask, jax.random.PRNGKey(6), sampling)
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  assert not np.array_equal(a.tokens, c.tokens)


def test_generate_inside_jit(tiny):
  """generate is usable inside a caller's jit (the GRPO rollout step) and is a pytree."""
  config, params = tiny
  tokens, mask = left_pad(PROMPTS, pad_id=0)
  sampling = SamplingConfig(max_new_tokens=4, temperature=0.0)
  outer = jax.jit(lambda p, t, m, k: generate(p, config, t, m, k, sampling))
  a = outer(params, tokens, mask, jax.random.PRNGKey(0))
  b = generate(params, config, tokens, mask, jax.random.PRNGKey(0), sampling)
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_bfloat16_compute_over_float32_weights(tiny):
  """The usual RL setting (float32 master weights, bf16 compute): the decode loop runs on the
  bf16 copies `decode_weights` makes once, and agrees with the cache-free bf16 forward."""
  config, params = tiny
  config = config.replace(dtype="bfloat16")
  assert jax.tree.leaves(params)[0].dtype == jnp.float32
  n, g, temperature = 8, 2, 0.7
  tokens, mask = left_pad(PROMPTS, pad_id=0)
  out = generate(params, config, tokens, mask, jax.random.PRNGKey(1),
                 SamplingConfig(max_new_tokens=n, temperature=0.0, num_samples=g))
  for b, prompt in enumerate(PROMPTS):
    expected = _brute_force_greedy(params, config, prompt, n)
    np.testing.assert_array_equal(out.tokens[b * g], expected, err_msg=f"prompt {b}")
  out = generate(params, config, tokens, mask, jax.random.PRNGKey(3),
                 SamplingConfig(max_new_tokens=n, temperature=temperature, num_samples=g))
  full_tokens = np.concatenate([out.prompt_tokens, out.tokens], axis=1)
  full_mask = np.concatenate([out.prompt_mask, out.mask], axis=1)
  logits = _full_logits(params, config, full_tokens, full_mask)
  p = tokens.shape[1]
  logp = _log_softmax(logits[:, p - 1:-1] / temperature)
  expected = np.take_along_axis(logp, np.asarray(out.tokens)[..., None], -1)[..., 0]
  # bf16 rounding of activations (8 bits of mantissa): the same up to a few hundredths.
  np.testing.assert_allclose(np.asarray(out.log_probs), expected, atol=0.05, rtol=0)


def _generate_in_subprocess(show: str, **env):
  """A fresh process (the sampler reads its settings at import) that samples 4 tokens of the
  tiny model with SamplingConfig s and prints `show` and the tokens' shape."""
  code = ("import jax, jax.numpy as jnp; from r1jax import sampling, model; "
          "from r1jax.config import get_config; c = get_config('tiny'); "
          "p = model.init_params(c, jax.random.PRNGKey(0)); s = sampling.SamplingConfig(4); "
          "o = sampling.generate(p, c, jnp.ones((1, 3), jnp.int32), jnp.ones((1, 3), bool), "
          f"jax.random.PRNGKey(1), s); print({show}, o.tokens.shape)")
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, **env))


def test_sampler_compiler_options_parse_and_come_from_the_environment():
  assert sampling.parse_compiler_options("") == {}
  assert sampling.parse_compiler_options(
      "xla_gpu_autotune_level=4, xla_gpu_enable_triton_gemm=false") == {
          "xla_gpu_autotune_level": 4, "xla_gpu_enable_triton_gemm": False}
  with pytest.raises(ValueError, match="R1JAX_SAMPLER_XLA_OPTIONS: 'level' is not name=value"):
    sampling.parse_compiler_options("level")
  # The default turns GPU autotuning and Triton GEMMs off; the variable replaces it, and the
  # sampler still runs.
  assert sampling.COMPILER_OPTIONS == {"xla_gpu_autotune_level": 0,
                                       "xla_gpu_enable_triton_gemm": False} or \
      "R1JAX_SAMPLER_XLA_OPTIONS" in os.environ
  out = _generate_in_subprocess("sampling.COMPILER_OPTIONS", R1JAX_SAMPLER_XLA_OPTIONS="")
  assert out.returncode == 0, out.stderr
  assert out.stdout.split("\n")[0] == "{} (1, 4)"


def test_sampler_attention_default_comes_from_the_environment():
  out = _generate_in_subprocess("s.attention", R1JAX_SAMPLER_ATTENTION="ragged")
  assert out.returncode == 0, out.stderr
  assert out.stdout.split("\n")[0] == "ragged (1, 4)"
  bad = subprocess.run([sys.executable, "-c", "from r1jax import sampling; "
                        "sampling.SamplingConfig(4)"], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, R1JAX_SAMPLER_ATTENTION="flash"))
  assert bad.returncode != 0 and "R1JAX_SAMPLER_ATTENTION" in bad.stderr


def test_pallas_decode_kernels_match_brute_force_and_full_forward(monkeypatch):
  """SamplingConfig(kernels="pallas"): the decode step's four matmuls as the Pallas kernels of
  r1jax.decode_kernels (interpreted on CPU) at shapes every block fits (16 rows, Qwen2-style
  bias), with the tokens of brute-force greedy decoding and log-probs of a full forward pass."""
  from r1jax import decode_kernels  # pylint: disable=import-outside-toplevel
  config = get_config("tiny").replace(intermediate_size=128, qkv_bias=True, family="qwen2")
  params = model.init_params(config, jax.random.PRNGKey(0), init_std=0.3)
  prompts = [[5 + i, 6, 7 + 2 * i][: 1 + i % 3] for i in range(8)]  # 8 x 2 samples = 16 rows
  tokens, mask = left_pad(prompts, pad_id=0)
  b = decode_kernels.Blocks
  monkeypatch.setattr(decode_kernels, "TUNED", {64: decode_kernels.LayerKernels(
      qkv=b(16, 64, 128), wo=b(64, 64, 32, k_splits=2), gate_up=b(64, 64, 128),
      down=b(64, 64, 64, k_splits=2))})  # all four kernels, two of them split over K
  fused = decode_kernels.tuned(16, config)
  assert None not in (fused.qkv, fused.wo, fused.gate_up, fused.down), fused  # all four run
  assert fused.wo.k_splits == 2 and fused.down.k_splits == 2
  n, g = 6, 2
  greedy = generate(params, config, tokens, mask, jax.random.PRNGKey(1),
                    SamplingConfig(max_new_tokens=n, temperature=0.0, num_samples=g,
                                   kernels="pallas"))
  for b, prompt in enumerate(prompts):
    expected = _brute_force_greedy(params, config, prompt, n)
    np.testing.assert_array_equal(greedy.tokens[b * g], expected, err_msg=f"prompt {b}")
  out = generate(params, config, tokens, mask, jax.random.PRNGKey(3),
                 SamplingConfig(max_new_tokens=n, temperature=0.8, num_samples=g,
                                kernels="pallas", attention="ragged"))
  logits = _full_logits(params, config, np.concatenate([out.prompt_tokens, out.tokens], 1),
                        np.concatenate([out.prompt_mask, out.mask], 1))
  p = tokens.shape[1]
  logp = _log_softmax(logits[:, p - 1:-1] / 0.8)
  expected = np.take_along_axis(logp, np.asarray(out.tokens)[..., None], -1)[..., 0]
  # 5e-5, not 1e-5: the kernels sum the contraction in chunks, in another order than XLA's dot
  # (float32 rounding of logits of scale ~10); a wrong kernel is off by ~1.
  np.testing.assert_allclose(np.asarray(out.log_probs), expected, atol=5e-5, rtol=0)


def test_pallas_kernels_fall_back_where_blocks_do_not_fit():
  """decode_kernels.tuned leaves an op with XLA where its shapes are not multiples of blocks of
  at least 16 (the tiny preset's 6 rows), and cuts k_splits to the contraction's chunks."""
  from r1jax import decode_kernels  # pylint: disable=import-outside-toplevel
  config = get_config("tiny").replace(intermediate_size=128)  # D 64, H*K 64, F 128
  assert decode_kernels.tuned(6, config) == decode_kernels.LayerKernels()
  t = decode_kernels.tuned(32, config)
  assert t.wo.block_r == 32 and t.wo.block_k == 64 and t.wo.k_splits == 1
  assert t.down.block_k == 128 and t.down.k_splits == 1
  assert decode_kernels.tuned(256, config) == decode_kernels.LayerKernels()  # XLA was faster
  with pytest.raises(ValueError, match="kernels"):
    SamplingConfig(4, kernels="triton")
