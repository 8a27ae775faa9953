"""r1jax.decode_kernels in Pallas' interpreter (CPU) against jnp references at tiny shapes.

Tolerances. With float32 weights (so a float32 matmul and output) the kernels must match a
float32 reference to 1e-5 of the reference's largest entry: only the summation order differs.
With bf16 weights the kernel rounds its output to bf16 once (relative error <= 2^-9 per entry)
and the normalized activations h to bf16 as the reference does; a different float32 summation
order for sum(x^2) can move an entry of h by one bf16 ulp. The bound is therefore 1e-2 of the
reference's largest entry (about 2.5 bf16 ulps of it); a wrong block index or mask gives errors
of order 1. Against the exact decode_step expressions (bf16 einsum output, bias / silu / residual
added in bf16, i.e. one or two more roundings) the bound is 2e-2.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import decode_kernels as dk
from r1jax import model

EPS = 1e-6
R, D, F, N = 16, 64, 128, 96  # N: 3 column blocks of 32
BLOCKS = dict(block_r=16, block_n=32, block_k=32)
BF16_TOL, DECODE_STEP_TOL, F32_TOL = 1e-2, 2e-2, 1e-5


def _inputs(x_dtype, w_dtype, seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 8)
  x = (3 * jax.random.normal(k[0], (R, D))).astype(x_dtype)
  norm_w = 1 + 0.1 * jax.random.normal(k[1], (D,))
  w = (jax.random.normal(k[2], (D, N)) / D ** 0.5).astype(w_dtype)
  b = jax.random.normal(k[3], (N,)).astype(w_dtype)
  wgu = (jax.random.normal(k[4], (D, 2, F)) / D ** 0.5).astype(w_dtype)
  a = jax.random.normal(k[5], (R, F)).astype(w_dtype)
  wd = (jax.random.normal(k[6], (F, D)) / F ** 0.5).astype(w_dtype)
  return x, norm_w, w, b, wgu, a, wd


def _err(got, want):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  assert got.shape == want.shape
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def _f32(a):
  return a.astype(jnp.float32)


def _normed(x, norm_w, dtype):
  """The matmul input of decode_step: rms_norm(x) in the compute dtype."""
  return model.rms_norm(x, norm_w, EPS).astype(dtype)


def test_rms_norm_formula_in_plain_jnp():
  """The float32 reference the kernels follow is model.rms_norm (checked here in plain jnp, so a
  change of model.rms_norm's formula shows up)."""
  x = _inputs(jnp.float32, jnp.float32)[0]
  norm_w = _inputs(jnp.float32, jnp.float32)[1]
  want = norm_w * x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + EPS)
  np.testing.assert_allclose(model.rms_norm(x, norm_w, EPS), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("x_dtype", [jnp.float32, jnp.bfloat16])
def test_norm_matmul(x_dtype):
  x, norm_w, w, b, *_ = _inputs(x_dtype, jnp.bfloat16)
  h = _f32(_normed(x, norm_w, jnp.bfloat16))
  got = dk.norm_matmul(x, norm_w, w, EPS, bias=b, **BLOCKS)
  assert got.shape == (R, N) and got.dtype == jnp.bfloat16
  assert _err(got, h @ _f32(w) + _f32(b)) < BF16_TOL
  nobias = dk.norm_matmul(x, norm_w, w, EPS, **BLOCKS)
  assert _err(nobias, h @ _f32(w)) < BF16_TOL


def test_norm_matmul_float32_exact():
  x, norm_w, w, b, *_ = _inputs(jnp.float32, jnp.float32)
  want = model.rms_norm(x, norm_w, EPS) @ w + b
  got = dk.norm_matmul(x, norm_w, w, EPS, bias=b, block_r=16, block_n=32, block_k=16)
  assert got.dtype == jnp.float32
  assert _err(got, want) < F32_TOL


def test_norm_matmul_as_decode_step_qkv():
  """x @ w_qkv [D, N, G+2, K] + b_qkv exactly as decode_step writes it (bf16 stream)."""
  nkv, g, k = 2, 2, 16  # N*(G+2)*K = 128
  x, norm_w, *_ = _inputs(jnp.bfloat16, jnp.bfloat16)
  keys = jax.random.split(jax.random.PRNGKey(1), 2)
  w_qkv = (jax.random.normal(keys[0], (D, nkv, g + 2, k)) / D ** 0.5).astype(jnp.bfloat16)
  b_qkv = jax.random.normal(keys[1], (nkv, g + 2, k)).astype(jnp.bfloat16)
  h = _normed(x[:, None], norm_w, jnp.bfloat16)
  want = jnp.einsum("btd,dngk->btngk", h, w_qkv) + b_qkv  # [R,1,N,G+2,K]
  got = dk.norm_matmul(x, norm_w, w_qkv.reshape(D, -1), EPS, bias=b_qkv.reshape(-1), **BLOCKS)
  assert _err(got.reshape(want.shape), want) < DECODE_STEP_TOL


@pytest.mark.parametrize("x_dtype", [jnp.float32, jnp.bfloat16])
def test_norm_gate_up(x_dtype):
  x, norm_w, _, _, wgu, *_ = _inputs(x_dtype, jnp.bfloat16)
  gu = jnp.einsum("rd,dcf->rcf", _f32(_normed(x, norm_w, jnp.bfloat16)), _f32(wgu))
  want = jax.nn.silu(gu[:, 0]) * gu[:, 1]
  got = dk.norm_gate_up(x, norm_w, wgu, EPS, **BLOCKS)
  assert got.shape == (R, F) and got.dtype == jnp.bfloat16
  assert _err(got, want) < BF16_TOL
  # As decode_step writes it, in bf16.
  h = _normed(x[:, None], norm_w, jnp.bfloat16)
  gate_up = jnp.einsum("btd,dcf->btcf", h, wgu)
  step = (jax.nn.silu(gate_up[:, :, 0]) * gate_up[:, :, 1])[:, 0]
  assert _err(got, step) < DECODE_STEP_TOL


def test_norm_gate_up_float32_exact():
  x, norm_w, _, _, wgu, *_ = _inputs(jnp.float32, jnp.float32)
  gu = jnp.einsum("rd,dcf->rcf", model.rms_norm(x, norm_w, EPS), wgu)
  want = jax.nn.silu(gu[:, 0]) * gu[:, 1]
  got = dk.norm_gate_up(x, norm_w, wgu, EPS, block_r=16, block_n=64, block_k=16)
  assert _err(got, want) < F32_TOL


# (k_splits, block_k): one kernel; even splits; uneven splits (F/16 = 8 chunks in 3 splits of
# 3, 3, 2); more splits than a ceil division fills (8 chunks in 5 splits of 2: the 5th empty).
@pytest.mark.parametrize("k_splits,block_k", [(1, 32), (4, 32), (3, 16), (5, 16)])
@pytest.mark.parametrize("res_dtype", [jnp.float32, jnp.bfloat16])
def test_matmul_residual(k_splits, block_k, res_dtype):
  x, *_, a, wd = _inputs(res_dtype, jnp.bfloat16)
  got = dk.matmul_residual(a, wd, x, block_r=16, block_n=32, block_k=block_k, k_splits=k_splits)
  assert got.shape == (R, D) and got.dtype == res_dtype
  want = _f32(x) + _f32(a) @ _f32(wd)
  assert _err(got, want) < (BF16_TOL if res_dtype == jnp.bfloat16 else 1e-4)
  step = (x[:, None] + jnp.einsum("btf,fd->btd", a[:, None], wd))[:, 0]  # as decode_step
  assert _err(got, step) < DECODE_STEP_TOL


@pytest.mark.parametrize("k_splits", [1, 3])
def test_matmul_residual_float32_exact(k_splits):
  x, *_, a, wd = _inputs(jnp.float32, jnp.float32)
  got = dk.matmul_residual(a, wd, x, block_r=16, block_n=32, block_k=16, k_splits=k_splits)
  assert _err(got, x + a @ wd) < F32_TOL


def test_shape_errors_name_the_argument():
  x, norm_w, w, b, wgu, a, wd = _inputs(jnp.bfloat16, jnp.bfloat16)
  with pytest.raises(ValueError, match="^w: columns 96"):
    dk.norm_matmul(x, norm_w, w, EPS, block_n=64)
  with pytest.raises(ValueError, match="^w: contraction dim D 64"):
    dk.norm_matmul(x, norm_w, w, EPS, block_n=32, block_k=48)
  with pytest.raises(ValueError, match="^x: rows 16"):
    dk.norm_matmul(x, norm_w, w, EPS, block_r=12, block_n=32)
  with pytest.raises(ValueError, match="^bias"):
    dk.norm_matmul(x, norm_w, w, EPS, bias=b[:32], block_n=32)
  with pytest.raises(ValueError, match="^norm_w"):
    dk.norm_gate_up(x, norm_w[:32], wgu, EPS)
  with pytest.raises(ValueError, match="^w_gate_up: columns 128"):
    dk.norm_gate_up(x, norm_w, wgu, EPS, block_n=48)
  with pytest.raises(ValueError, match="^residual"):
    dk.matmul_residual(a, wd, x[:, :32])
  with pytest.raises(ValueError, match="^k_splits"):
    dk.matmul_residual(a, wd, x, block_n=32, block_k=64, k_splits=3)


def test_kernels_lower_to_triton_at_the_qwen_shapes():
  """Cross-lowering for CUDA on this machine runs the Pallas -> Triton IR lowering (not the
  Triton compiler): catches unsupported ops and non-power-of-2 loads at the Qwen2.5-0.5B shapes
  (D = 896, qkv N = 1152, F = 4864), including the masked loads of uneven K splits."""
  r, d, n, f = 64, 896, 1152, 4864
  s, bf = jax.ShapeDtypeStruct, jnp.bfloat16
  x, nw = s((r, d), bf), s((d,), jnp.float32)
  cases = [
      (functools.partial(dk.norm_matmul, eps=EPS, interpret=False),
       (x, nw, s((d, n), bf), s((n,), bf))),
      (functools.partial(dk.norm_gate_up, eps=EPS, interpret=False), (x, nw, s((d, 2, f), bf))),
      (functools.partial(dk.matmul_residual, k_splits=1, interpret=False),
       (s((r, f), bf), s((f, d), bf), x)),
      (functools.partial(dk.matmul_residual, k_splits=8, interpret=False),  # 38 chunks: uneven
       (s((r, f), bf), s((f, d), bf), x)),
  ]
  for fn, args in cases:
    if fn.func is dk.norm_matmul:
      fn = functools.partial(lambda x, nw, w, b, fn=fn: fn(x, nw, w, bias=b))
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert "triton" in text
