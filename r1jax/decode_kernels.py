"""Pallas (Triton) kernels for the memory-bound matmuls of `model.decode_step` at small batch.

One decode step runs, per layer, four weight matmuls over R rows (R = batch, one token each):
qkv (after the attention RMSNorm), the output projection, gate/up (after the MLP RMSNorm) and
down. At small R each reads its weight once and is bound by memory bandwidth; XLA runs each as a
cuBLAS GEMM plus small elementwise fusions (the norm, the bias, silu(gate) * up, the residual
add). The kernels here fold those into the matmul:

  norm_matmul      rms_norm(x) * norm_w -> @ w (+ bias)          qkv
  norm_gate_up     rms_norm(x) * norm_w -> @ w_gate_up -> silu(gate) * up
  matmul_residual  residual + a @ w   (split-K over the contraction)  down (and wo)

Numerics follow `model.rms_norm` and `decode_step`: the norm in float32 (x * rsqrt(mean(x^2) +
eps), rounded to x's dtype, times the float32 norm weight), its result cast to the weight dtype
(the compute dtype) before the matmul, float32 accumulation. The epilogues (bias, silu * up, the
residual add) run in float32 and round once, where XLA rounds the matmul output to the compute
dtype first: the two differ by about one bf16 ulp of the output.

Each kernel is a `pl.pallas_call` over a grid of (row block, column block[, K split]); every
program loops over the contraction in chunks of `block_k` with `jax.lax.fori_loop` (static trip
count, so Triton can software-pipeline it with `num_stages`). The norm's sum of squares is
computed by each program over its whole row block (a first loop over the chunks of x; x is R x D,
small next to the weight, and stays in L2), so there is no separate norm kernel.

A block larger than its dimension is cut to the dimension; every shape must then be a multiple
of its block: a ValueError names the argument otherwise. Triton
needs power-of-2 blocks, and dots of at least 16 along each dimension.

`interpret=None` (the default) runs the kernels in Pallas' interpreter off the GPU
(`jax.default_backend() != "gpu"`), e.g. for the CPU tests.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
import jax.numpy as jnp


def _interpret(interpret: bool | None) -> bool:
  return jax.default_backend() != "gpu" if interpret is None else interpret


def _require(name: str, size: int, block: int, what: str):
  if block <= 0 or size % block:
    raise ValueError(f"{name}: {what} {size} is not a multiple of its block size {block}")


def _check_rank(name: str, a, rank: int = 2):
  if a.ndim != rank:
    raise ValueError(f"{name}: expected a rank-{rank} array, got shape {a.shape}")


def _norm_blocks(x, norm_w, w_name: str, n: int, block_r: int, block_n: int, block_k: int):
  """The checks and cut blocks shared by the two norm kernels: x [R, D], norm_w [D], a weight
  `w_name` of N columns over D. Returns (r, d, block_r, block_n, block_k)."""
  r, d = x.shape
  if norm_w.shape != (d,):
    raise ValueError(f"norm_w: shape {norm_w.shape} != ({d},)")
  block_r, block_n, block_k = min(block_r, r), min(block_n, n), min(block_k, d)
  _require("x", r, block_r, "rows")
  _require(w_name, n, block_n, "columns")
  _require(w_name, d, block_k, "contraction dim D")
  return r, d, block_r, block_n, block_k


def _params(num_warps, num_stages):
  return plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def _row_rstd(x_ref, *, d: int, block_k: int, eps: float):
  """[block_r] float32 1 / sqrt(mean(x^2) + eps) over the full rows of the x block."""
  def body(kk, acc):
    xk = x_ref[:, pl.ds(kk * block_k, block_k)].astype(jnp.float32)
    return acc + xk * xk

  acc = jax.lax.fori_loop(0, d // block_k, body,
                          jnp.zeros((x_ref.shape[0], block_k), jnp.float32))
  return jax.lax.rsqrt(jnp.sum(acc, axis=1) / d + eps)


def _normed_chunk(x_ref, nw_ref, rstd, kk, *, block_k: int, dtype):
  """Chunk kk of rms_norm(x) * norm_w, as model.rms_norm computes it, in the matmul's dtype."""
  sl = pl.ds(kk * block_k, block_k)
  xk = x_ref[:, sl].astype(jnp.float32) * rstd[:, None]
  xk = xk.astype(x_ref.dtype).astype(jnp.float32)  # model.rms_norm rounds to x's dtype first
  return (nw_ref[:, sl].astype(jnp.float32) * xk).astype(dtype)


# ------------------------------------------------------------------------------------------------
# rms_norm + matmul (+ bias): the qkv projection


def _norm_matmul_kernel(x_ref, nw_ref, w_ref, *rest, d: int, block_k: int, eps: float,
                        has_bias: bool):
  if has_bias:
    b_ref, o_ref = rest
  else:
    (o_ref,) = rest
  rstd = _row_rstd(x_ref, d=d, block_k=block_k, eps=eps)

  def body(kk, acc):
    h = _normed_chunk(x_ref, nw_ref, rstd, kk, block_k=block_k, dtype=w_ref.dtype)
    wk = w_ref[pl.ds(kk * block_k, block_k), :]
    return acc + jnp.dot(h, wk, preferred_element_type=jnp.float32)

  acc = jax.lax.fori_loop(0, d // block_k, body,
                          jnp.zeros((x_ref.shape[0], w_ref.shape[1]), jnp.float32))
  if has_bias:
    acc = acc + b_ref[...].astype(jnp.float32)
  o_ref[...] = acc.astype(o_ref.dtype)


def norm_matmul(x, norm_w, w, eps: float, *, bias=None, block_r: int = 64, block_n: int = 64,
                block_k: int = 128, num_warps: int = 4, num_stages: int = 3,
                interpret: bool | None = None):
  """(rms_norm(x) * norm_w).astype(w.dtype) @ w (+ bias), accumulated in float32.

  x: [R, D] (the residual stream, float32 or bf16); norm_w: [D] (float32); w: [D, N] (bf16);
  bias: optional [N]. Returns [R, N] in w's dtype. Grid (R / block_r, N / block_n); each program
  reads its x rows whole (sum of squares), then loops over D in chunks of block_k.
  """
  _check_rank("x", x)
  _check_rank("w", w)
  if w.shape[0] != x.shape[1]:
    raise ValueError(f"w: leading dim {w.shape[0]} != x's last dim {x.shape[1]}")
  n = w.shape[1]
  r, d, block_r, block_n, block_k = _norm_blocks(x, norm_w, "w", n, block_r, block_n, block_k)
  in_specs = [
      pl.BlockSpec((block_r, d), lambda i, j: (i, 0)),
      pl.BlockSpec((1, d), lambda i, j: (0, 0)),
      pl.BlockSpec((d, block_n), lambda i, j: (0, j)),
  ]
  args = [x, norm_w.reshape(1, d), w]
  if bias is not None:
    if bias.shape != (n,):
      raise ValueError(f"bias: shape {bias.shape} != ({n},)")
    in_specs.append(pl.BlockSpec((1, block_n), lambda i, j: (0, j)))
    args.append(bias.reshape(1, n))
  kernel = functools.partial(_norm_matmul_kernel, d=d, block_k=block_k, eps=float(eps),
                             has_bias=bias is not None)
  return pl.pallas_call(
      kernel,
      grid=(r // block_r, n // block_n),
      in_specs=in_specs,
      out_specs=pl.BlockSpec((block_r, block_n), lambda i, j: (i, j)),
      out_shape=jax.ShapeDtypeStruct((r, n), w.dtype),
      compiler_params=_params(num_warps, num_stages),
      interpret=_interpret(interpret),
      name=f"norm_matmul_r{block_r}_n{block_n}_k{block_k}",
  )(*args)


# ------------------------------------------------------------------------------------------------
# rms_norm + gate/up matmul + silu(gate) * up: the MLP's first half


def _norm_gate_up_kernel(x_ref, nw_ref, wg_ref, wu_ref, o_ref, *, d: int, block_k: int,
                         eps: float):
  rstd = _row_rstd(x_ref, d=d, block_k=block_k, eps=eps)

  def body(kk, accs):
    acc_g, acc_u = accs
    h = _normed_chunk(x_ref, nw_ref, rstd, kk, block_k=block_k, dtype=wg_ref.dtype)
    sl = pl.ds(kk * block_k, block_k)
    acc_g = acc_g + jnp.dot(h, wg_ref[sl, :], preferred_element_type=jnp.float32)
    acc_u = acc_u + jnp.dot(h, wu_ref[sl, :], preferred_element_type=jnp.float32)
    return acc_g, acc_u

  zeros = jnp.zeros((x_ref.shape[0], wg_ref.shape[1]), jnp.float32)
  gate, up = jax.lax.fori_loop(0, d // block_k, body, (zeros, zeros))
  o_ref[...] = (gate / (1.0 + jnp.exp(-gate)) * up).astype(o_ref.dtype)


def norm_gate_up(x, norm_w, w_gate_up, eps: float, *, block_r: int = 64, block_n: int = 64,
                 block_k: int = 128, num_warps: int = 4, num_stages: int = 3,
                 interpret: bool | None = None):
  """silu(gate) * up with [gate, up] = (rms_norm(x) * norm_w).astype(w.dtype) @ w_gate_up.

  x: [R, D]; norm_w: [D]; w_gate_up: [D, 2, F] (decode_weights' layout: gate, then up).
  Returns [R, F] in w_gate_up's dtype. Grid (R / block_r, F / block_n): each program computes
  the same column block of gate and of up, so the activation is its epilogue.
  """
  _check_rank("x", x)
  _check_rank("w_gate_up", w_gate_up, rank=3)
  if w_gate_up.shape[:2] != (x.shape[1], 2):
    raise ValueError(f"w_gate_up: shape {w_gate_up.shape} is not [{x.shape[1]}, 2, F]")
  f = w_gate_up.shape[2]
  r, d, block_r, block_n, block_k = _norm_blocks(x, norm_w, "w_gate_up", f, block_r, block_n,
                                                 block_k)
  # [D, 2, F] -> [D, 2F] is free (row-major); gate block j is column block j, up block j is
  # column block F / block_n + j.
  w2 = w_gate_up.reshape(d, 2 * f)
  up_offset = f // block_n
  kernel = functools.partial(_norm_gate_up_kernel, d=d, block_k=block_k, eps=float(eps))
  return pl.pallas_call(
      kernel,
      grid=(r // block_r, f // block_n),
      in_specs=[
          pl.BlockSpec((block_r, d), lambda i, j: (i, 0)),
          pl.BlockSpec((1, d), lambda i, j: (0, 0)),
          pl.BlockSpec((d, block_n), lambda i, j: (0, j)),
          pl.BlockSpec((d, block_n), lambda i, j: (0, j + up_offset)),
      ],
      out_specs=pl.BlockSpec((block_r, block_n), lambda i, j: (i, j)),
      out_shape=jax.ShapeDtypeStruct((r, f), w_gate_up.dtype),
      compiler_params=_params(num_warps, num_stages),
      interpret=_interpret(interpret),
      name=f"norm_gate_up_r{block_r}_n{block_n}_k{block_k}",
  )(x, norm_w.reshape(1, d), w2, w2)


# ------------------------------------------------------------------------------------------------
# matmul + residual add, split over K: the down projection (and the attention output projection)


def _matmul_residual_kernel(a_ref, w_ref, *rest, nk: int, per_split: int, block_k: int,
                            k_splits: int):
  """One (row block, column block, K split) program: chunks [s * per_split, (s + 1) *
  per_split) of the nk chunks of K. With k_splits == 1, adds the residual and writes the
  result; otherwise writes its float32 partial."""
  if k_splits == 1:
    res_ref, o_ref = rest
  else:
    (o_ref,) = rest
  s = pl.program_id(2)
  even = nk % k_splits == 0  # every split has per_split whole chunks: no masks

  def body(i, acc):
    c = s * per_split + i
    if even:
      ak = a_ref[:, pl.ds(c * block_k, block_k)]
      wk = w_ref[pl.ds(c * block_k, block_k), :]
    else:
      # The last split has fewer chunks: its extra iterations load nothing (masked, at a
      # clamped in-bounds address) and add zeros.
      valid = c < nk
      start = jnp.minimum(c, nk - 1) * block_k
      ak = plgpu.load(a_ref.at[:, pl.ds(start, block_k)],
                      mask=jnp.full((a_ref.shape[0], block_k), valid), other=0.0)
      wk = plgpu.load(w_ref.at[pl.ds(start, block_k), :],
                      mask=jnp.full((block_k, w_ref.shape[1]), valid), other=0.0)
    return acc + jnp.dot(ak, wk, preferred_element_type=jnp.float32)

  acc = jax.lax.fori_loop(0, per_split, body,
                          jnp.zeros((a_ref.shape[0], w_ref.shape[1]), jnp.float32))
  if k_splits == 1:
    acc = acc + res_ref[...].astype(jnp.float32)
  o_ref[...] = acc.astype(o_ref.dtype)


def matmul_residual(a, w, residual, *, block_r: int = 64, block_n: int = 64, block_k: int = 128,
                    k_splits: int = 1, num_warps: int = 4, num_stages: int = 3,
                    interpret: bool | None = None):
  """residual + a @ w, accumulated in float32, returned in residual's dtype.

  a: [R, F] (bf16); w: [F, N] (bf16); residual: [R, N] (the residual stream's dtype).
  Grid (R / block_r, N / block_n, k_splits). k_splits == 1: one kernel, the residual added in its
  epilogue. k_splits > 1 (more programs when N is small, e.g. N = D = 896 for the down
  projection): split s covers chunks [s * ceil(nk / k_splits), ...) of the nk = F / block_k
  chunks and writes its float32 partial to a [k_splits, R, N] buffer; a jnp epilogue (one small
  XLA fusion) sums the partials and the residual. (Chosen over atomic adds: deterministic, no
  zero-initialised float32 buffer, and the output still needs a cast to residual's dtype.)
  """
  _check_rank("a", a)
  _check_rank("w", w)
  _check_rank("residual", residual)
  r, f = a.shape
  if w.shape[0] != f:
    raise ValueError(f"w: leading dim {w.shape[0]} != a's last dim {f}")
  n = w.shape[1]
  if residual.shape != (r, n):
    raise ValueError(f"residual: shape {residual.shape} != ({r}, {n})")
  block_r, block_n, block_k = min(block_r, r), min(block_n, n), min(block_k, f)
  _require("a", r, block_r, "rows")
  _require("w", n, block_n, "columns")
  _require("w", f, block_k, "contraction dim")
  nk = f // block_k
  if not 1 <= k_splits <= nk:
    raise ValueError(f"k_splits: {k_splits} not in [1, {nk}] (contraction chunks of {block_k})")
  per_split = -(-nk // k_splits)  # the last split(s) may have fewer chunks, or none
  kernel = functools.partial(_matmul_residual_kernel, nk=nk, per_split=per_split,
                             block_k=block_k, k_splits=k_splits)
  in_specs = [
      pl.BlockSpec((block_r, f), lambda i, j, s: (i, 0)),
      pl.BlockSpec((f, block_n), lambda i, j, s: (0, j)),
  ]
  common = dict(grid=(r // block_r, n // block_n, k_splits),
                compiler_params=_params(num_warps, num_stages),
                interpret=_interpret(interpret),
                name=f"matmul_residual_r{block_r}_n{block_n}_k{block_k}_s{k_splits}")
  if k_splits == 1:
    return pl.pallas_call(
        kernel,
        in_specs=in_specs + [pl.BlockSpec((block_r, block_n), lambda i, j, s: (i, j))],
        out_specs=pl.BlockSpec((block_r, block_n), lambda i, j, s: (i, j)),
        out_shape=jax.ShapeDtypeStruct((r, n), residual.dtype),
        **common,
    )(a, w, residual)
  partials = pl.pallas_call(
      kernel,
      in_specs=in_specs,
      out_specs=pl.BlockSpec((None, block_r, block_n), lambda i, j, s: (s, i, j)),
      out_shape=jax.ShapeDtypeStruct((k_splits, r, n), jnp.float32),
      **common,
  )(a, w)
  return (residual.astype(jnp.float32) + jnp.sum(partials, axis=0)).astype(residual.dtype)


# ------------------------------------------------------------------------------------------------
# The choice of kernel per op, for model.decode_step


@dataclasses.dataclass(frozen=True)
class Blocks:
  """One kernel's launch configuration (the keyword arguments of the kernels above)."""

  block_r: int = 64
  block_n: int = 64
  block_k: int = 128
  num_warps: int = 4
  num_stages: int = 3
  k_splits: int = 1  # matmul_residual only

  def kwargs(self, split: bool = False) -> dict:
    kw = dict(block_r=self.block_r, block_n=self.block_n, block_k=self.block_k,
              num_warps=self.num_warps, num_stages=self.num_stages)
    if split:
      kw["k_splits"] = self.k_splits
    return kw


@dataclasses.dataclass(frozen=True)
class LayerKernels:
  """Which of a decode layer's four matmuls run as a Pallas kernel here, and with what blocks;
  None: as XLA writes them (model.decode_step's einsums). Hashable (a static argument)."""

  qkv: Optional[Blocks] = None      # norm_matmul
  wo: Optional[Blocks] = None       # matmul_residual
  gate_up: Optional[Blocks] = None  # norm_gate_up
  down: Optional[Blocks] = None     # matmul_residual


# The kernels that made the whole sampler faster, with each op's fastest blocks from
# `python benchmarks/decode_gemm.py` (Qwen2.5-0.5B shape, H200), {rows: LayerKernels}. Measured
# end to end (`benchmarks/sampler.py --attention ragged --kernels pallas`, BENCHMARKS.md "The
# fused Pallas matmuls in the sampler"): at 64 rows wo + down in Pallas took 1.210 ms per decode
# step against XLA's 1.283; wo alone 1.293, wo + qkv 1.331, all four 1.430 (cuBLAS
# reads gate_up's 17 MB at ~2.3 TB/s, the Pallas kernel at ~0.9). At 256 rows no combination
# measured beat XLA, so every op stays with it there.
TUNED = {
    64: LayerKernels(wo=Blocks(64, 64, 64, 8, 3, 8), down=Blocks(64, 64, 128, 8, 4, 8)),
    256: LayerKernels(),
}


def _fits(b: Blocks, rows: int, n: int, k: int) -> Optional[Blocks]:
  """b with its blocks cut to the shapes (as the kernels cut them), or None where a shape is not
  a multiple of its block or a block is below Triton's 16 (that op then stays with XLA)."""
  cut = dataclasses.replace(b, block_r=min(b.block_r, rows), block_n=min(b.block_n, n),
                            block_k=min(b.block_k, k))
  for size, block in ((rows, cut.block_r), (n, cut.block_n), (k, cut.block_k)):
    if block < 16 or size % block:
      return None
  if cut.k_splits > k // cut.block_k:
    cut = dataclasses.replace(cut, k_splits=k // cut.block_k)
  return cut


def tuned(rows: int, config) -> LayerKernels:
  """The TUNED entry for `rows` (the nearest measured row count at or above it, else the
  largest), each op's blocks fitted to the layer shapes of `config` (a ModelConfig). An op whose
  shapes its blocks do not divide stays with XLA."""
  t = TUNED[min((r for r in TUNED if r >= rows), default=max(TUNED))]
  d, f = config.hidden_size, config.intermediate_size
  hk = config.num_heads * config.head_dim  # the attention output's width
  qkv = hk + 2 * config.num_kv_heads * config.head_dim

  def fit(b, n, k):
    return None if b is None else _fits(b, rows, n, k)

  return LayerKernels(qkv=fit(t.qkv, qkv, d), wo=fit(t.wo, d, hk), gate_up=fit(t.gate_up, f, d),
                      down=fit(t.down, d, f))
