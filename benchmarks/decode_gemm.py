"""The decode step's weight matmuls: XLA (as model.decode_step writes them) against the Pallas
kernels of r1jax.decode_kernels, over a grid of block configurations.

Per layer, at R rows (one token each), decode_step runs four matmuls with their elementwise
neighbours. Each op here is timed both ways:

  qkv      rms_norm(x) @ w_qkv [D,N,G+2,K] + b_qkv    vs  decode_kernels.norm_matmul
  wo       x + attn [R,H,K] @ wo [H,K,D]               vs  decode_kernels.matmul_residual
  gate_up  silu(gate) * up of rms_norm(x) @ w_gate_up  vs  decode_kernels.norm_gate_up
  down     x + act [R,F] @ w_down [F,D]                vs  decode_kernels.matmul_residual

Timing. One timed call runs the op over --copies distinct copies of its weights (python-unrolled
in one jit, as decode_step unrolls its layers), so that the weights come from HBM and not from
L2 (the default picks enough copies for >= --working_set_mb of weights, at least the preset's
layer count), and the launch cost of the call is spread over them. --calls calls are issued
back to back and the last one waited for; the median over --repeats of that time, divided by
calls x copies, is the op's time (us). GB/s: the op's compulsory bytes (weights, bias and norm
weight, activations read, output written; not the split-K partials) over that time. Both paths
compile with the sampler's XLA options (r1jax.sampling.COMPILER_OPTIONS).

Configs: every combination of --block_r, --block_n, --block_k, --num_warps, --num_stages (and
--k_splits for wo/down). A config whose blocks do not divide the shapes is skipped (counted);
one that fails to lower or compile is skipped and reported. Every compiled config's output (on
the first copy) is checked against the XLA path's: max |diff| / max |xla| above 2e-2 marks it
WRONG and leaves it out of the best (the exit status is then 1).

  python benchmarks/decode_gemm.py                      # qwen2.5-0.5b, rows 64,256, H200
  python benchmarks/decode_gemm.py --ops down --rows 64 --top 0
  python benchmarks/decode_gemm.py --small              # CPU, interpret mode, tiny shapes
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import itertools
import math
import sys
import time

from timing import comma_list
from timing import median_seconds as _median_seconds

OPS = ("qkv", "wo", "gate_up", "down")
CHECK_BOUND = 2e-2  # max |pallas - xla| / max |xla|: bf16 rounding ~1e-2; a wrong kernel ~1


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", default="qwen2.5-0.5b")
  parser.add_argument("--rows", default="64,256", help="comma-separated rows R")
  parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, of {OPS}")
  parser.add_argument("--residual_dtype", default="bfloat16",
                      help="dtype of the residual stream x (decode_step: the compute dtype)")
  parser.add_argument("--block_r", default="16,64,256",
                      help="rows per program (cut to R); small blocks give more programs")
  parser.add_argument("--block_n", default="32,64,128")
  parser.add_argument("--block_k", default="64,128,256")
  parser.add_argument("--num_warps", default="4,8")
  parser.add_argument("--num_stages", default="2,3,4")
  parser.add_argument("--k_splits", default="1,2,4,8", help="wo and down only")
  parser.add_argument("--copies", type=int, default=0,
                      help="weight copies per timed call (0: auto, see --working_set_mb)")
  parser.add_argument("--working_set_mb", type=float, default=128.0,
                      help="auto copies: at least this many MB of weights per call (> L2)")
  parser.add_argument("--max_copies", type=int, default=96)
  parser.add_argument("--calls", type=int, default=3, help="back-to-back calls per timing")
  parser.add_argument("--repeats", type=int, default=5, help="timings; the median is kept")
  parser.add_argument("--compile_threads", type=int, default=16,
                      help="configs lowered and compiled concurrently")
  parser.add_argument("--top", type=int, default=10,
                      help="configs printed per (op, rows), fastest first (0: all, grid order)")
  parser.add_argument("--small", action="store_true",
                      help="CPU smoke run: tiny shapes, interpret mode, 2 configs per op")
  args = parser.parse_args(argv)
  if args.small:
    args.rows, args.block_r, args.block_n, args.block_k = "16,32", "16", "32", "32,64"
    args.num_warps, args.num_stages, args.k_splits = "4", "2", "1,2"
    args.copies, args.calls, args.repeats, args.compile_threads = 2, 1, 2, 2
  for name in ("rows", "block_r", "block_n", "block_k", "num_warps", "num_stages", "k_splits"):
    setattr(args, name, comma_list(int, getattr(args, name), name))
  args.ops = [op for op in args.ops.split(",") if op]
  bad = [op for op in args.ops if op not in OPS]
  if bad:
    parser.error(f"--ops: unknown {bad}; expected some of {OPS}")
  return args


@dataclasses.dataclass(frozen=True)
class Shapes:
  d: int
  f: int
  n: int  # kv heads
  g: int  # query heads per kv head
  k: int  # head dim
  eps: float
  qkv_bias: bool
  layers: int

  @property
  def nq(self) -> int:  # qkv columns
    return self.n * (self.g + 2) * self.k

  @property
  def hk(self) -> int:  # attention output width H*K
    return self.n * self.g * self.k


def shapes_of(args) -> Shapes:
  if args.small:  # multiples of every --small block (the tiny preset's F=172 is not)
    return Shapes(d=64, f=128, n=2, g=2, k=16, eps=1e-6, qkv_bias=True, layers=2)
  from r1jax.config import get_config  # pylint: disable=import-outside-toplevel
  c = get_config(args.preset)
  return Shapes(d=c.hidden_size, f=c.intermediate_size, n=c.num_kv_heads,
                g=c.num_heads // c.num_kv_heads, k=c.head_dim, eps=c.rms_norm_eps,
                qkv_bias=c.qkv_bias, layers=c.num_layers)


# ------------------------------------------------------------------------------------------------
# The ops: weights, inputs, the XLA path (decode_step's expressions) and the Pallas path.


def make_op(op: str, s: Shapes, rows: int, xdtype, seed: int = 0):
  """(weights: dict of one copy, inputs: tuple, xla(inputs, weights), pallas(inputs, weights,
  **config), compulsory bytes). Random normal weights, scaled so outputs stay O(1)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from r1jax import decode_kernels as dk  # pylint: disable=import-outside-toplevel
  from r1jax import model  # pylint: disable=import-outside-toplevel

  bf = jnp.bfloat16
  key = iter(jax.random.split(jax.random.PRNGKey(seed), 8))
  normal = lambda shape, scale=1.0: scale * jax.random.normal(next(key), shape, jnp.float32)  # noqa: E731
  x = normal((rows, s.d)).astype(xdtype)
  xb = jnp.dtype(xdtype).itemsize
  norm_w = 1 + 0.1 * normal((s.d,))
  if op == "qkv":
    w = {"norm": norm_w, "w": normal((s.d, s.n, s.g + 2, s.k), s.d ** -0.5).astype(bf)}
    if s.qkv_bias:
      w["b"] = normal((s.n, s.g + 2, s.k)).astype(bf)

    def xla(inputs, w):
      (x,) = inputs
      h = model.rms_norm(x[:, None], w["norm"], s.eps).astype(bf)
      qkv = jnp.einsum("btd,dngk->btngk", h, w["w"])
      if "b" in w:
        qkv = qkv + w["b"]
      return qkv.reshape(rows, s.nq)

    def pallas(inputs, w, **cfg):
      (x,) = inputs
      b = w["b"].reshape(s.nq) if "b" in w else None
      return dk.norm_matmul(x, w["norm"], w["w"].reshape(s.d, s.nq), s.eps, bias=b, **cfg)

    nbytes = rows * s.d * xb + s.d * 4 + s.d * s.nq * 2 + s.qkv_bias * s.nq * 2 + rows * s.nq * 2
    return w, (x,), xla, pallas, nbytes
  if op == "gate_up":
    w = {"norm": norm_w, "w": normal((s.d, 2, s.f), s.d ** -0.5).astype(bf)}

    def xla(inputs, w):
      (x,) = inputs
      h = model.rms_norm(x[:, None], w["norm"], s.eps).astype(bf)
      gate_up = jnp.einsum("btd,dcf->btcf", h, w["w"])
      return (jax.nn.silu(gate_up[:, :, 0]) * gate_up[:, :, 1])[:, 0]

    def pallas(inputs, w, **cfg):
      (x,) = inputs
      return dk.norm_gate_up(x, w["norm"], w["w"], s.eps, **cfg)

    nbytes = rows * s.d * xb + s.d * 4 + s.d * 2 * s.f * 2 + rows * s.f * 2
    return w, (x,), xla, pallas, nbytes
  if op == "wo":
    w = {"w": normal((s.n * s.g, s.k, s.d), s.hk ** -0.5).astype(bf)}
    attn = normal((rows, s.n * s.g, s.k)).astype(bf)

    def xla(inputs, w):
      x, attn = inputs
      return (x[:, None] + jnp.einsum("bthk,hkd->btd", attn[:, None], w["w"]))[:, 0]

    def pallas(inputs, w, **cfg):
      x, attn = inputs
      return dk.matmul_residual(attn.reshape(rows, s.hk), w["w"].reshape(s.hk, s.d), x, **cfg)

    nbytes = rows * s.hk * 2 + s.hk * s.d * 2 + 2 * rows * s.d * xb
    return w, (x, attn), xla, pallas, nbytes
  if op == "down":
    w = {"w": normal((s.f, s.d), s.f ** -0.5).astype(bf)}
    act = normal((rows, s.f)).astype(bf)

    def xla(inputs, w):
      x, act = inputs
      return (x[:, None] + jnp.einsum("btf,fd->btd", act[:, None], w["w"]))[:, 0]

    def pallas(inputs, w, **cfg):
      x, act = inputs
      return dk.matmul_residual(act, w["w"], x, **cfg)

    nbytes = rows * s.f * 2 + s.f * s.d * 2 + 2 * rows * s.d * xb
    return w, (x, act), xla, pallas, nbytes
  raise ValueError(f"unknown op {op!r}")


def configs_of(op: str, args, rows: int) -> list[dict]:
  """The grid of configs, block_r cut to the rows (as the kernels do) and duplicates dropped."""
  keys = ["block_r", "block_n", "block_k", "num_warps", "num_stages"]
  if op in ("wo", "down"):
    keys.append("k_splits")
  configs = []
  for values in itertools.product(*(getattr(args, key) for key in keys)):
    cfg = dict(zip(keys, values))
    cfg["block_r"] = min(cfg["block_r"], rows)
    if cfg not in configs:
      configs.append(cfg)
  return configs


def config_name(cfg: dict) -> str:
  short = {"block_r": "r", "block_n": "n", "block_k": "k", "num_warps": "w", "num_stages": "s",
           "k_splits": "split"}
  return " ".join(f"{short[k]}{v}" for k, v in cfg.items())


# ------------------------------------------------------------------------------------------------


def main(argv=None):
  args = parse_args(argv)
  if args.small:
    import os  # pylint: disable=import-outside-toplevel
    os.environ["JAX_PLATFORMS"] = "cpu"
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from r1jax.sampling import COMPILER_OPTIONS  # pylint: disable=import-outside-toplevel

  s = shapes_of(args)
  interpret = jax.default_backend() != "gpu"
  xdtype = jnp.dtype(args.residual_dtype)
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax "
        f"{jax.__version__}, preset {'small shapes' if args.small else args.preset}: D={s.d} "
        f"F={s.f} qkv N={s.nq} H*K={s.hk}, residual {xdtype.name}, weights bfloat16, "
        f"{'interpret mode, ' if interpret else ''}XLA options {COMPILER_OPTIONS or '{}'}")
  print("op | rows | config | us | GB/s | max|diff| (rel)")
  best_rows, failures = [], 0

  for rows in args.rows:
    for op in args.ops:
      weights, inputs, xla_op, pallas_op, nbytes = make_op(op, s, rows, xdtype)
      wbytes = sum(a.nbytes for a in jax.tree.leaves(weights))
      copies = args.copies or min(args.max_copies, max(
          s.layers, math.ceil(args.working_set_mb * 1e6 / wbytes)))
      # Distinct copies (different values, so nothing can be shared between them).
      ws = [jax.tree.map(lambda a, i=i: a + jnp.asarray(i * 1e-3, a.dtype), weights)
            for i in range(copies)]
      jax.block_until_ready(ws)

      def build(fn):
        # The op under its own jit: traced and lowered once, called once per copy.
        one = jax.jit(fn)
        return jax.jit(lambda inputs, ws: [one(inputs, w) for w in ws],
                       compiler_options=COMPILER_OPTIONS)

      def time_it(compiled):
        compiled(inputs, ws)[0].block_until_ready()  # warm-up

        def run():
          out = None
          for _ in range(args.calls):
            out = compiled(inputs, ws)
          jax.block_until_ready(out)

        return _median_seconds(run, args.repeats) / (args.calls * copies)

      xla_compiled = build(xla_op).lower(inputs, ws).compile()
      want = np.asarray(xla_compiled(inputs, ws)[0], np.float32)
      scale = float(np.max(np.abs(want)))
      t_xla = time_it(xla_compiled)
      print(f"{op} | {rows} | xla (copies {copies}) | {t_xla * 1e6:.2f} | "
            f"{nbytes / t_xla / 1e9:.0f} | -")

      configs = configs_of(op, args, rows)

      def compile_one(cfg):
        fn = lambda inputs, w, cfg=cfg: pallas_op(inputs, w, interpret=interpret, **cfg)  # noqa: E731
        try:
          return build(fn).lower(inputs, ws).compile(), None
        except Exception as e:  # pylint: disable=broad-except
          text = str(e)
          if isinstance(e, ValueError) and ("is not a multiple" in text
                                            or text.startswith("k_splits")):
            return None, "shape"  # block sizes that do not divide the shapes
          return None, f"{type(e).__name__}: {text.splitlines()[0][:160] if text else ''}"

      start = time.perf_counter()
      with concurrent.futures.ThreadPoolExecutor(max(1, args.compile_threads)) as pool:
        compiled = list(pool.map(compile_one, configs))
      compile_s = time.perf_counter() - start
      results, skipped, failed = [], 0, []
      for cfg, (exe, why) in zip(configs, compiled):
        if exe is None:
          if why == "shape":
            skipped += 1
          else:
            failed.append((cfg, why))
          continue
        got = np.asarray(exe(inputs, ws)[0], np.float32)
        diff = float(np.max(np.abs(got - want)))
        t = time_it(exe)
        results.append((cfg, t, diff))
      del compiled
      shown = sorted(results, key=lambda r: r[1]) if args.top else results
      for cfg, t, diff in shown[:args.top or None]:
        flag = "" if diff <= CHECK_BOUND * scale else " WRONG"
        print(f"{op} | {rows} | {config_name(cfg)} | {t * 1e6:.2f} | {nbytes / t / 1e9:.0f} | "
              f"{diff:.3g} ({diff / scale:.1e}){flag}")
      wrong = [r for r in results if r[2] > CHECK_BOUND * scale]
      failures += len(wrong) + (not results)
      print(f"  {op} R={rows}: {len(configs)} configs, {len(results)} timed, {skipped} skipped "
            f"(blocks do not divide the shapes), {len(failed)} failed to compile, "
            f"{len(wrong)} WRONG; compile {compile_s:.1f}s; xla max|ref| {scale:.3g}")
      for cfg, why in failed[:3]:
        print(f"    failed: {config_name(cfg)}: {why}")
      good = [r for r in results if r[2] <= CHECK_BOUND * scale]
      if good:
        cfg, t, diff = min(good, key=lambda r: r[1])
        best_rows.append((op, rows, t_xla, cfg, t, diff, nbytes))
      else:
        best_rows.append((op, rows, t_xla, None, float("nan"), float("nan"), nbytes))

  print("\nbest config per op:")
  print("op | rows | xla us | xla GB/s | best config | pallas us | pallas GB/s | speed-up | "
        "max|diff|")
  for op, rows, t_xla, cfg, t, diff, nbytes in best_rows:
    name = config_name(cfg) if cfg else "none"
    print(f"{op} | {rows} | {t_xla * 1e6:.2f} | {nbytes / t_xla / 1e9:.0f} | {name} | "
          f"{t * 1e6:.2f} | {nbytes / t / 1e9:.0f} | {t_xla / t:.2f}x | {diff:.3g}")
  for rows in args.rows:
    mine = [r for r in best_rows if r[1] == rows]
    t_xla, t_best = sum(r[2] for r in mine), sum(r[4] for r in mine)
    print(f"R={rows}: sum over {[r[0] for r in mine]}: xla {t_xla * 1e6:.2f} us, best pallas "
          f"{t_best * 1e6:.2f} us per layer")
  print("us: per op per layer (median over repeats of calls x copies); GB/s: compulsory bytes "
        "(weights + activations read + output written) / time. On CPU (interpret mode) the times "
        "mean nothing.")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
