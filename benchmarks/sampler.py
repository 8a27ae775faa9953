"""Throughput of r1jax.sampling.generate against the HBM roofline of decoding.

Decoding one token for a batch is memory-bound: each step reads every weight once and the KV
cache of every row. The roofline is therefore

  bytes_per_step = weight_bytes + kv_bytes
  weight_bytes   = bytes of all parameters, less the input embedding table when it is untied
                   (decode gathers only R rows of it; a tied table is read whole by the unembed)
  kv_bytes       = 2 (k and v) * L * R * N_kv * K * itemsize(cache) * mean filled length,
                   mean filled length = P + N/2 (step t attends P + t slots, t = 1..N-1)
  roofline tok/s = R / (bytes_per_step / bandwidth)

with bandwidth measured as (bytes read + bytes written) / time of a large jitted `x + 1`. The
sampler uses fixed shapes and reads all S = P + N - 1 cache slots every step, so a second
roofline with the full cache (`full S`) is printed too: the gap between the two is the cost of
fixed shapes.

  python benchmarks/sampler.py --preset qwen2.5-0.5b --batch 64,256 --prompt_len 128 \\
      --new_tokens 512 --dtype bfloat16
  python benchmarks/sampler.py --small   # CPU, tiny preset, seconds

`--check` also checks the sampler's numbers on this device, after the timings of each batch:
(1) with `--attention ragged`, `model.ragged_decode_attention` against `model.attend` (the
whole-cache attention) in float32 on random normal q, k, v of the preset's shapes and random [start, end) ranges
(error over the reference's largest entry; a wrong kernel is off by order 1); (2) the log-prob
the sampler returned for each generated token against a full forward pass over the prompt and
the completion (`model.sequence_log_probs`, no cache). It exits with status 1 when (1) exceeds
its bound. With random weights the logits are nearly flat, so (2) is reported, not judged.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", default="qwen2.5-0.5b")
  parser.add_argument("--batch", default="64,256", help="comma-separated rows R = B*G")
  parser.add_argument("--prompt_len", type=int, default=128)
  parser.add_argument("--new_tokens", type=int, default=512)
  parser.add_argument("--dtype", default="bfloat16", help="params, compute and KV cache dtype")
  parser.add_argument("--temperature", type=float, default=1.0, help="0: greedy (no sampling cost)")
  parser.add_argument("--top_k", type=int, default=0)
  parser.add_argument("--top_p", type=float, default=1.0)
  parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is kept")
  parser.add_argument("--bandwidth_mib", type=int, default=2048,
                      help="size of the array copied to measure memory bandwidth")
  parser.add_argument("--attention", default="xla", choices=["xla", "ragged"],
                      help="SamplingConfig.attention: the whole cache under a mask, or only each "
                      "row's filled slots (model.ragged_decode_attention, Pallas)")
  parser.add_argument("--kernels", default="xla", choices=["xla", "pallas"],
                      help="SamplingConfig.kernels: the decode matmuls as XLA compiles them, or "
                      "as r1jax.decode_kernels' fused Pallas kernels")
  parser.add_argument("--check", action="store_true",
                      help="also check the ragged kernel and the returned log-probs (see above)")
  parser.add_argument("--profile", action="store_true",
                      help="also print the device's 25 costliest ops of one generate call")
  parser.add_argument("--small", action="store_true",
                      help="CPU smoke run: tiny preset, batch 4,16, prompt 16, 32 new tokens")
  args = parser.parse_args(argv)
  if args.small:
    args.preset, args.batch, args.prompt_len, args.new_tokens = "tiny", "4,16", 16, 32
    args.dtype, args.bandwidth_mib, args.repeats = "float32", 64, 3
  try:
    args.batch = [int(b) for b in args.batch.split(",")]
  except ValueError:
    parser.error(f"--batch={args.batch!r} must be comma-separated ints")
  if args.new_tokens < 2:
    parser.error("--new_tokens must be >= 2 (one prefill token plus decode steps)")
  return args


from timing import device_op_times  # noqa: E402
from timing import median_seconds as _median_seconds  # noqa: E402


def measure_bandwidth(mib: int, repeats: int = 5) -> float:
  """Device memory bandwidth in bytes/s: (read + write) bytes of a jitted x + 1 over `mib` MiB."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  x = jnp.zeros((mib * 2**20 // 4,), jnp.float32)
  add_one = jax.jit(lambda a: a + 1)
  add_one(x).block_until_ready()
  seconds = min(_median_seconds(lambda: add_one(x).block_until_ready(), 1)
                for _ in range(repeats))
  return 2 * x.nbytes / seconds


# Bound on the ragged kernel's error over the reference's largest entry: bf16 rounding of q, k,
# v and the probabilities (eps 2^-8) leaves ~1e-2; float32 ~1e-6.
KERNEL_TOLERANCE = {"bfloat16": 3e-2, "float16": 5e-3, "float32": 1e-4}


def check_ragged_kernel(config, rows: int, slots: int, dtype, seed: int = 0) -> float:
  """Error of model.ragged_decode_attention against model.attend (the whole-cache attention,
  in float32 at full matmul precision), over the reference's largest entry, on random normal
  inputs: q [R,N,G,K], k, v [R,N,S,K] and random [start, end) per row."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from r1jax import model  # pylint: disable=import-outside-toplevel
  n, g, k = config.num_kv_heads, config.num_heads // config.num_kv_heads, config.head_dim
  s = -(-slots // model.ATTENTION_BLOCK) * model.ATTENTION_BLOCK
  kq, kk, kv, ks, ke = jax.random.split(jax.random.PRNGKey(seed), 5)
  q = jax.random.normal(kq, (rows, n, g, k), jnp.float32).astype(dtype)
  ck = jax.random.normal(kk, (rows, n, s, k), jnp.float32).astype(dtype)
  cv = jax.random.normal(kv, (rows, n, s, k), jnp.float32).astype(dtype)
  start = jax.random.randint(ks, (rows,), 0, s // 2)
  end = jnp.minimum(start + 1 + jax.random.randint(ke, (rows,), 0, s), s)
  got = jax.jit(model.ragged_decode_attention)(q, ck, cv, start, end).astype(jnp.float32)
  slot = jnp.arange(s)
  valid = (slot >= start[:, None]) & (slot < end[:, None])  # [R,S]
  f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
  with jax.default_matmul_precision("highest"):
    want = model.attend(f32(q).reshape(rows, 1, n * g, k), f32(ck).swapaxes(1, 2),
                        f32(cv).swapaxes(1, 2), valid[:, None, None, None, :])
  want = want.reshape(rows, n, g, k)
  return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


def logprob_errors(params, config, out, rows_per_call: int = 8) -> tuple[float, float]:
  """Max and mean |returned log-prob - full-forward log-prob| over the generated tokens."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from r1jax import model  # pylint: disable=import-outside-toplevel
  p = out.prompt_tokens.shape[1]
  score = jax.jit(lambda w, t, m: model.sequence_log_probs(w, t, m, config, chunk_size=128)[0])
  diffs = []
  for i in range(0, out.tokens.shape[0], rows_per_call):
    rows = slice(i, i + rows_per_call)
    tokens = jnp.concatenate([out.prompt_tokens[rows], out.tokens[rows]], axis=1)
    mask = jnp.concatenate([out.prompt_mask[rows], out.mask[rows]], axis=1)
    want = np.asarray(score(params, tokens, mask))[:, p - 1:]  # params an argument, not constants
    got, valid = np.asarray(out.log_probs[rows]), np.asarray(out.mask[rows])
    diffs.append(np.abs(got - want)[valid])
  d = np.concatenate(diffs)
  return float(d.max()), float(d.mean())


def main(argv=None):
  args = parse_args(argv)
  if args.small:
    os.environ["JAX_PLATFORMS"] = "cpu"
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from r1jax import model  # pylint: disable=import-outside-toplevel
  from r1jax.config import get_config  # pylint: disable=import-outside-toplevel
  from r1jax.sampling import COMPILER_OPTIONS, SamplingConfig, generate  # pylint: disable=import-outside-toplevel

  config = get_config(args.preset, dtype=args.dtype, param_dtype=args.dtype)
  params = jax.jit(lambda k: model.init_params(config, k))(jax.random.PRNGKey(0))
  p, n = args.prompt_len, args.new_tokens
  itemsize = jnp.dtype(config.compute_dtype).itemsize
  weight_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(params))
  if not config.tie_embeddings:
    weight_bytes -= params["embed"].nbytes
  kv_bytes_per_slot_row = 2 * config.num_layers * config.num_kv_heads * config.head_dim * itemsize
  bandwidth = measure_bandwidth(args.bandwidth_mib)

  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), preset {args.preset}, "
        f"{config.num_params() / 1e6:.1f}M params, dtype {args.dtype}, P={p}, N={n}, "
        f"temperature={args.temperature}, top_k={args.top_k}, top_p={args.top_p}, "
        f"attention={args.attention}, kernels={args.kernels}, "
        f"sampler XLA options {COMPILER_OPTIONS or '{}'}")
  print(f"measured copy bandwidth: {bandwidth / 1e9:.1f} GB/s; weights read per step: "
        f"{weight_bytes / 1e6:.1f} MB")
  failures = 0
  header = ("batch", "tok/s", "ms/step", "prefill ms", "MB/step", "roofline tok/s", "ratio",
            "MB/step(full S)", "ratio(full S)")
  print(" | ".join(header))
  for batch in args.batch:
    rng = np.random.default_rng(batch)
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, (batch, p)), jnp.int32)
    mask = jnp.ones((batch, p), bool)
    key = jax.random.PRNGKey(1)
    sampling = SamplingConfig(max_new_tokens=n, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, attention=args.attention,
                              kernels=args.kernels)  # no EOS: all N steps
    prefill_only = dataclasses.replace(sampling, max_new_tokens=1)

    def run(s):
      return lambda: jax.block_until_ready(generate(params, config, tokens, mask, key, s))

    run(sampling)()  # compile
    run(prefill_only)()
    total = _median_seconds(run(sampling), args.repeats)
    prefill = _median_seconds(run(prefill_only), args.repeats)
    step = (total - prefill) / (n - 1)
    tok_per_s = batch * n / total
    bytes_mean = weight_bytes + kv_bytes_per_slot_row * batch * (p + n / 2)
    bytes_full = weight_bytes + kv_bytes_per_slot_row * batch * (p + n - 1)
    roofline = batch / (bytes_mean / bandwidth)
    roofline_full = batch / (bytes_full / bandwidth)
    decode_tok_per_s = batch / step
    print(f"{batch} | {tok_per_s:.0f} | {step * 1e3:.3f} | {prefill * 1e3:.1f} | "
          f"{bytes_mean / 1e6:.1f} | {roofline:.0f} | {decode_tok_per_s / roofline:.2f} | "
          f"{bytes_full / 1e6:.1f} | {decode_tok_per_s / roofline_full:.2f}")
    if args.check:
      if args.attention == "ragged":
        err = check_ragged_kernel(config, batch, p + n, config.compute_dtype)
        bound = KERNEL_TOLERANCE.get(args.dtype, 3e-2)
        failures += err > bound
        print(f"  check: ragged kernel vs float32 softmax, error / max |ref| = {err:.2e} "
              f"(bound {bound:.0e}): {'ok' if err <= bound else 'WRONG'}")
      worst, mean = logprob_errors(params, config, run(sampling)())
      print(f"  check: |returned log-prob - full forward| over {batch * n} tokens: max "
            f"{worst:.2e}, mean {mean:.2e}")
    if args.profile:
      total_ms, ops = device_op_times(run(sampling))
      print(f"  device time of one call: {total_ms:.1f} ms; costliest ops:")
      for name, ms, count in ops:
        print(f"  {ms:9.2f} ms {100 * ms / max(total_ms, 1e-9):5.1f}% x{count:<6} {name[:110]}")
  print("tok/s: generated tokens / total generate time (prefill included); ratio: decode-only "
        "tok/s (batch / ms per step) over the roofline.")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
