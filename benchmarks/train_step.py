"""Time and memory of one GRPO update on a device mesh, and its model FLOPs utilization.

A step here is what the trainer runs per optimizer step with beta > 0: one reference forward
(π_ref log-probs, `trainer.make_logprob_fn`) and one policy forward + backward + AdamW update
(`trainer.make_update_step`), both jitted over the mesh by `r1jax.sharding`. Weights are
random (no checkpoint is read), every row is `seq_len` tokens long and no completion ends early.

  MFU = (6 N T + 2 N T) / step time / (devices * measured peak)

with N the parameters that enter matmuls (the input embedding of an untied model is a gather),
T = batch * seq_len tokens, 6 N T the update (forward + backward) and 2 N T the reference
forward. The peak is measured: a jitted 8192 x 8192 bf16 matmul on one device. MFU leaves out
attention's score and value matmuls (`+attn` adds 4 L T S H K per forward, S = seq_len: the
model computes the full causal square) and remat's recomputation, as is usual.

`--attention` picks ModelConfig.attention (xla: einsum under a mask; cudnn: cuDNN flash
attention; auto) and `--logprobs` the log-prob head (fused: chunked unembedding + log-softmax
with a recomputing backward, never [B,T,V] float32 logits; unfused: the plain path); both take
comma-separated lists and every combination is a row.

`--check` first compares, on valid positions only, (1) cuDNN attention (on a CPU: the same
jax.nn.dot_product_attention call with jax's xla implementation) against the einsum attention
at the update's shape, left padding under the key mask and right padding with causal_only,
outputs and gradients, with the fwd+bwd time of each; (2) the model's log-probs and parameter
gradients with cuDNN attention, and with fused log-probs, against xla attention with unfused
log-probs (`--check_rows` rows). Each difference is measured against the baseline's own
rounding noise, its difference from a float32 run at highest matmul precision: the check
fails (exit status 1) when a variant's max abs difference exceeds --check_ratio times that
noise plus 1e-4 of the baseline's largest value.

  python benchmarks/train_step.py --preset qwen2.5-0.5b,qwen2.5-1.5b --seq_len 1024 \\
      --batch 16 --mesh_fsdp -1 --mesh_data 1 --remat full
  python benchmarks/train_step.py --preset qwen2.5-0.5b --seq_len 640 --batch 64 --check \\
      --attention xla,cudnn --logprobs fused,unfused
  python benchmarks/train_step.py --small   # CPU, tiny preset on 8 fake devices, seconds
"""

from __future__ import annotations

import argparse
import sys
import time


ATTENTION_CHOICES = ("auto", "xla", "cudnn")  # r1jax.config's (not imported before --small)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", default="qwen2.5-0.5b,qwen2.5-1.5b", help="comma-separated")
  parser.add_argument("--seq_len", type=int, default=1024, help="prompt + completion tokens")
  parser.add_argument("--prompt_len", type=int, default=256, help="part of seq_len")
  parser.add_argument("--batch", default="16", help="comma-separated rows per update")
  parser.add_argument("--mesh_data", type=int, default=-1)
  parser.add_argument("--mesh_fsdp", type=int, default=1)
  parser.add_argument("--mesh_tensor", type=int, default=1)
  parser.add_argument("--remat", default="full", help="comma-separated: none, full, dots")
  parser.add_argument("--dtype", default="bfloat16", help="params and compute dtype")
  parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
  parser.add_argument("--logprob_batch_size", type=int, default=0,
                      help="rows per chunk of the reference pass (0: all)")
  parser.add_argument("--logprob_chunk_size", type=int, default=0,
                      help="positions per unembedding chunk; 0: fused log-probs size chunks by "
                           "model.FUSED_CHUNK_BYTES, unfused ones take the whole sequence")
  parser.add_argument("--attention", default="auto",
                      help="comma-separated ModelConfig.attention: auto, xla, cudnn")
  parser.add_argument("--logprobs", default="fused", help="comma-separated: fused, unfused")
  parser.add_argument("--check", action="store_true",
                      help="compare cuDNN attention and fused log-probs against xla / unfused "
                           "first; exit 1 past the tolerance")
  parser.add_argument("--check_rows", type=int, default=4,
                      help="rows of the whole-model part of --check")
  parser.add_argument("--check_ratio", type=float, default=2.0,
                      help="--check tolerance: multiple of the baseline's bf16-vs-float32 noise")
  parser.add_argument("--repeats", type=int, default=3, help="timed steps; the median is kept")
  parser.add_argument("--matmul_size", type=int, default=8192)
  parser.add_argument("--small", action="store_true",
                      help="CPU smoke run: tiny preset, 8 fake devices on a 2x2x2 mesh")
  args = parser.parse_args(argv)
  if args.small:
    args.preset, args.seq_len, args.prompt_len, args.batch = "tiny", 64, 16, "16"
    args.mesh_data, args.mesh_fsdp, args.mesh_tensor = 2, 2, 2
    args.remat, args.dtype, args.matmul_size, args.repeats = "full", "float32", 512, 2
    args.gradient_accumulation_steps, args.logprob_batch_size = 2, 8
    args.logprob_chunk_size = 16
  args.preset = comma_list(str, args.preset, "preset")
  args.batch = comma_list(int, args.batch, "batch")
  args.remat = comma_list(str, args.remat, "remat")
  args.attention = comma_list(str, args.attention, "attention")
  args.logprobs = comma_list(str, args.logprobs, "logprobs")
  for a in args.attention:
    if a not in ATTENTION_CHOICES:
      parser.error(f"--attention={a!r}: expected one of {ATTENTION_CHOICES}")
  for a in args.logprobs:
    if a not in ("fused", "unfused"):
      parser.error(f"--logprobs={a!r}: expected fused or unfused")
  if args.logprob_chunk_size < 0 or args.check_rows < 1 or args.check_ratio <= 0:
    parser.error("--logprob_chunk_size must be >= 0, --check_rows >= 1, --check_ratio > 0")
  if not 0 < args.prompt_len < args.seq_len:
    parser.error(f"--prompt_len={args.prompt_len} must be in (0, --seq_len={args.seq_len})")
  return args


from timing import comma_list  # noqa: E402
from timing import median_seconds as _median_seconds  # noqa: E402
from timing import use_fake_cpu_devices  # noqa: E402


def measure_matmul_peak(n: int, dtype, repeats: int = 5) -> float:
  """FLOP/s of a jitted n x n @ n x n matmul on one device."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  return 2 * n ** 3 / _median_seconds(lambda: dot(a, b).block_until_ready(), repeats)


def matmul_params(config) -> int:
  """Parameters that enter matmuls: all but the norms and an untied input embedding."""
  n = config.num_params() - config.hidden_size * (2 * config.num_layers + 1)
  if not config.tie_embeddings:
    n -= config.vocab_size * config.hidden_size
  return n


def peak_memory_bytes(devices):
  """Largest peak_bytes_in_use over `devices`, or None where the backend keeps no stats."""
  peaks = []
  for d in devices:
    stats = d.memory_stats() if hasattr(d, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(stats["peak_bytes_in_use"])
  return max(peaks) if peaks else None


def _size(num_bytes) -> str:
  if num_bytes is None:
    return "n/a"
  return f"{num_bytes / 2**30:.2f}G" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.1f}M"


def random_batch(config, rows, seq_len, prompt_len, seed=0):
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  n = seq_len - prompt_len
  return {
      "prompt_tokens": rng.integers(0, config.vocab_size, (rows, prompt_len), dtype=np.int32),
      "prompt_mask": np.ones((rows, prompt_len), bool),
      "completion_tokens": rng.integers(0, config.vocab_size, (rows, n), dtype=np.int32),
      "completion_mask": np.ones((rows, n), bool),
      "advantages": rng.standard_normal(rows).astype(np.float32),
      "truncated": np.zeros(rows, bool),
  }


def model_config(args, preset, attention="auto", logprobs="fused"):
  from r1jax.config import get_config  # pylint: disable=import-outside-toplevel
  return get_config(preset, dtype=args.dtype, param_dtype=args.dtype,
                    max_position_embeddings=max(args.seq_len, 2048), attention=attention,
                    fused_logprobs=logprobs == "fused")


def run_one(args, preset, rows, remat, mesh, peak, attention="auto", logprobs="fused"):
  """Builds, compiles and times one configuration; returns a row of the table."""
  import jax  # pylint: disable=import-outside-toplevel

  # pylint: disable-next=import-outside-toplevel
  from r1jax import accumulate, grpo, model, sharding, trainer

  config = model_config(args, preset, attention, logprobs)
  attention = model.attention_implementation(config, args.seq_len, False)
  n = args.seq_len - args.prompt_len
  cfg = trainer.TrainConfig(prompts_per_step=rows // 2, num_generations=2,
                            max_prompt_length=args.prompt_len, max_completion_length=n,
                            remat=remat, logprob_chunk_size=args.logprob_chunk_size or None,
                            length_buckets=0)  # every row is full length: the fixed step
  loss_cfg = grpo.GRPOConfig(num_generations=2, max_completion_length=n, beta=0.04)
  optimizer, schedule = trainer.make_optimizer(cfg)
  init = lambda p: trainer.init_state(p, cfg, optimizer, loss_cfg)  # noqa: E731
  state_sh = sharding.train_state_shardings(config, init, mesh)
  params = sharding.init_params_sharded(config, jax.random.PRNGKey(0), mesh)
  # Built directly in its shards: no device holds more than its part of the state.
  state = jax.jit(init, out_shardings=state_sh)(params)
  del params

  if args.gradient_accumulation_steps == 1:
    step_fn = trainer.make_update_step(config, cfg, loss_cfg, optimizer, schedule)
  else:
    step_fn = accumulate.make_update_step(config, cfg, loss_cfg, optimizer,
                                          args.gradient_accumulation_steps,
                                          sharding.batch_sharding(mesh))
  update = sharding.shard_update_step(step_fn, state_sh["params"], state_sh["opt_state"], mesh)
  logprob = sharding.shard_logprob_fn(
      accumulate.chunked_logprob_fn(trainer.make_logprob_fn(config, cfg),
                                    args.logprob_batch_size or None),
      state_sh["params"], mesh)
  batch = sharding.put_batch(random_batch(config, rows, args.seq_len, args.prompt_len), mesh)

  t0 = time.perf_counter()
  ref_logp = jax.block_until_ready(logprob(state["ref_params"], batch))  # compiles
  update_batch = dict(batch, ref_logp=ref_logp)
  compiled = update.jitted.lower(state["params"], state["opt_state"], update_batch).compile()
  analysis = compiled.memory_analysis()
  temp_bytes = getattr(analysis, "temp_size_in_bytes", None) if analysis else None
  current = {"params": state["params"], "opt_state": state["opt_state"]}

  def ref_pass():
    jax.block_until_ready(logprob(state["ref_params"], batch))

  def update_pass():  # the params and optimizer state are donated: carry the new ones on
    p, o, m = compiled(current["params"], current["opt_state"], update_batch)
    current.update(params=p, opt_state=o)
    jax.block_until_ready(m)

  update_pass()
  compile_s = time.perf_counter() - t0
  ref_s = _median_seconds(ref_pass, args.repeats)
  update_s = _median_seconds(update_pass, args.repeats)
  step_s = ref_s + update_s

  tokens = rows * args.seq_len
  n_mm = matmul_params(config)
  flops = 8 * n_mm * tokens
  attn = 4 * config.num_layers * tokens * args.seq_len * config.num_heads * config.head_dim
  flops_attn = flops + 4 * attn  # forward of the reference, forward + 2x backward of the update
  devices = mesh.devices.size
  peak_mem = peak_memory_bytes(mesh.local_devices)
  return (f"{preset} | {rows} | {args.seq_len} | {remat} | {attention} | {logprobs} | "
          f"{_size(peak_mem)} | "
          f"{_size(temp_bytes)} | "
          f"{compile_s:.1f} | {ref_s * 1e3:.1f} | {update_s * 1e3:.1f} | {step_s * 1e3:.1f} | "
          f"{tokens / step_s:.0f} | {flops / step_s / (devices * peak):.3f} | "
          f"{flops_attn / step_s / (devices * peak):.3f}")


# ----------------------------------------------------------------------------------------------
# --check
# ----------------------------------------------------------------------------------------------
def compare(name, got, want, ref, valid, ratio, quiet=False):
  """Max / mean |got - want| over the `valid` entries next to the baseline's noise
  max |want - ref|; ok when the max is within ratio * noise + 1e-4 * max |want|. Prints the
  line unless `quiet`; returns (ok, max / bound, line)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  got, want, ref = (np.asarray(x, np.float32) for x in (got, want, ref))
  valid = np.ones(got.shape, bool) if valid is None else np.broadcast_to(valid, got.shape)
  diff = np.abs(got - want)[valid]
  noise = float(np.abs(want - ref)[valid].max())
  bound = ratio * noise + 1e-4 * float(np.abs(want)[valid].max())
  ok = bool(np.isfinite(diff).all()) and float(diff.max()) <= bound
  line = (f"  {name}: max {diff.max():.3e} mean {diff.mean():.3e} | baseline noise max "
          f"{noise:.3e} | bound {bound:.3e} | {'ok' if ok else 'FAIL'}")
  if not quiet:
    print(line, flush=True)
  return ok, float(diff.max()) / max(bound, 1e-30), line


def compare_trees(got, want, ref, ratio) -> bool:
  """`compare` on every leaf; prints the leaf nearest its bound and every failing one."""
  import jax  # pylint: disable=import-outside-toplevel
  results = [compare(f"grad {jax.tree_util.keystr(path)}", g, w, r, None, ratio, quiet=True)
             for (path, g), w, r in zip(jax.tree_util.tree_leaves_with_path(got),
                                        jax.tree.leaves(want), jax.tree.leaves(ref))]
  worst = max(results, key=lambda x: x[1])
  for ok, _, line in results:
    if not ok or line is worst[2]:
      print(line + ("" if not ok else f"  (nearest its bound of {len(results)} leaves)"),
            flush=True)
  return all(ok for ok, _, _ in results)


def padded_masks(rows, seq_len, prompt_len, seed=0):
  """(left, right) [rows, seq_len] bool: the trainer's layout (left-padded prompt, right-padded
  completion) and the same lengths as a prefix (right padding, causal_only)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  slots = np.arange(seq_len)
  start = rng.integers(0, prompt_len, rows)
  end = rng.integers(prompt_len + 1, seq_len + 1, rows)
  end[0] = seq_len  # one full-length row
  left = (slots >= start[:, None]) & (slots < end[:, None])
  right = slots < (end - start)[:, None]
  return left, right


def check_attention(args, config, rows, impl) -> bool:
  """`impl` against the einsum attention at the update's shape, outputs and q/k/v gradients on
  valid positions, for both layouts; prints the fwd+bwd time of each."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from r1jax import model  # pylint: disable=import-outside-toplevel

  t, h, n, k = args.seq_len, config.num_heads, config.num_kv_heads, config.head_dim
  rng = np.random.default_rng(1)
  q, kk, v, ct = (rng.standard_normal(shape).astype(np.float32)
                  for shape in ((rows, t, h, k), (rows, t, n, k), (rows, t, n, k), (rows, t, h, k)))
  ok = True
  for layout, mask, causal_only in zip(("left padding, key mask", "right padding, causal_only"),
                                       padded_masks(rows, t, args.prompt_len), (False, True)):
    valid = mask[:, :, None, None]

    def make(implementation, dtype, causal_only=causal_only, mask=mask, valid=valid):
      def fn(q, kk, v, ct):
        out, vjp = jax.vjp(lambda *a: model.self_attention(
            *a, jnp.asarray(mask), implementation=implementation, causal_only=causal_only),
            q, kk, v)
        return (out, *vjp(jnp.where(valid, ct, 0).astype(dtype)))
      step = jax.jit(fn)
      inputs = [jnp.asarray(x, dtype) for x in (q, kk, v, ct)]
      return lambda: jax.block_until_ready(step(*inputs))

    dtype = config.compute_dtype
    with jax.default_matmul_precision("highest"):
      ref = make("xla", jnp.float32)()
    print(f"attention, {rows} x {t} tokens, {h} query / {n} kv heads, head {k}, {layout}: "
          f"{impl} against xla", flush=True)
    results = {}
    for name in ("xla", impl):
      run = make(name, dtype)
      results[name] = run()
      ms = _median_seconds(run, max(args.repeats, 3)) * 1e3
      print(f"  {name}: fwd+bwd {ms:.2f} ms", flush=True)
    for i, what in enumerate(("out", "dq", "dk", "dv")):
      ok &= compare(what, results[impl][i], results["xla"][i], ref[i], valid,
                    args.check_ratio)[0]
  return ok


def check_model(args, preset, rows, impl) -> bool:
  """The model's log-probs and parameter gradients (random weights) with cuDNN attention and
  with fused log-probs against xla attention with unfused log-probs."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from r1jax import model  # pylint: disable=import-outside-toplevel

  base = model_config(args, preset, "xla", "unfused")
  params32 = model.init_params(base.replace(param_dtype="float32"), jax.random.PRNGKey(0))
  params = jax.tree.map(lambda x: x.astype(base.storage_dtype), params32)
  rng = np.random.default_rng(2)
  tokens = jnp.asarray(rng.integers(0, base.vocab_size, (rows, args.seq_len)), jnp.int32)
  weights = jnp.asarray(rng.standard_normal((rows, args.seq_len - 1)), jnp.float32)
  chunk = args.logprob_chunk_size or None

  def grads(config, params, mask, causal_only):
    def loss(params):
      logp, _ = model.sequence_log_probs(params, tokens, mask, config, temperature=0.9,
                                         chunk_size=chunk, causal_only=causal_only)
      valid = mask[:, 1:] & mask[:, :-1]
      return jnp.sum(jnp.where(valid, weights * logp, 0.0)), logp
    return jax.jit(jax.grad(loss, has_aux=True))(params)

  ok = True
  for layout, mask, causal_only in zip(("left padding, key mask", "right padding, causal_only"),
                                       padded_masks(rows, args.seq_len, args.prompt_len, 3),
                                       (False, True)):
    mask = jnp.asarray(mask)
    valid = np.asarray(mask[:, 1:] & mask[:, :-1])
    with jax.default_matmul_precision("highest"):
      ref = grads(base.replace(dtype="float32", param_dtype="float32"), params32, mask, False)
    want = grads(base, params, mask, False)
    for attention, logprobs in ((impl, "unfused"), ("xla", "fused"), (impl, "fused")):
      config = model_config(args, preset, attention, logprobs)
      got = grads(config, params, mask, causal_only)
      print(f"{preset}, {rows} x {args.seq_len} tokens, {layout}: attention {attention}, "
            f"{logprobs} log-probs against xla, unfused", flush=True)
      ok &= compare("logp", got[1], want[1], ref[1], valid, args.check_ratio)[0]
      ok &= compare_trees(got[0], want[0], ref[0], args.check_ratio)
  return ok


def run_checks(args, preset, rows) -> bool:
  """--check: the attention and whole-model comparisons; True when all pass."""
  import jax  # pylint: disable=import-outside-toplevel

  from r1jax import model  # pylint: disable=import-outside-toplevel

  if jax.default_backend() == "gpu":
    impl = "cudnn"
  else:  # the cuDNN path's jax.nn.dot_product_attention call, run by jax's xla implementation
    model.DOT_PRODUCT_ATTENTION["cudnn"] = "xla"
    impl = "cudnn"
    print("no GPU: 'cudnn' below is jax.nn.dot_product_attention(implementation='xla')")
  ok = check_attention(args, model_config(args, preset), rows, impl)
  return check_model(args, preset, min(rows, args.check_rows), impl) and ok


def main(argv=None):
  args = parse_args(argv)
  if args.small:
    use_fake_cpu_devices(8)
  import jax  # pylint: disable=import-outside-toplevel

  from r1jax import sharding  # pylint: disable=import-outside-toplevel
  from r1jax.config import dtype_from_name  # pylint: disable=import-outside-toplevel

  mesh = sharding.make_mesh(sharding.MeshConfig(data=args.mesh_data, fsdp=args.mesh_fsdp,
                                                tensor=args.mesh_tensor))
  peak = measure_matmul_peak(args.matmul_size, dtype_from_name(args.dtype))
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}) x "
        f"{mesh.devices.size}, mesh {dict(mesh.shape)}, dtype {args.dtype}, measured "
        f"{args.matmul_size}^2 matmul peak {peak / 1e12:.1f} TFLOP/s per device, "
        f"grad accumulation {args.gradient_accumulation_steps}, logprob_batch_size "
        f"{args.logprob_batch_size or 'all'}, logprob_chunk_size "
        f"{args.logprob_chunk_size or 'auto'}")
  if args.check:
    if not run_checks(args, args.preset[0], args.batch[0]):
      print("CHECK FAILED")
      return 1
    print("check passed")
  header = ("preset", "batch", "seq", "remat", "attention", "logprobs", "peak mem/dev",
            "XLA temp/dev",
            "compile+1 s", "ref ms", "update ms", "step ms", "tok/s", "MFU", "MFU+attn")
  print(" | ".join(header))
  for preset in args.preset:
    for rows in args.batch:
      for remat in args.remat:
        for attention in args.attention:
          for logprobs in args.logprobs:
            print(run_one(args, preset, rows, remat, mesh, peak, attention, logprobs), flush=True)
  print("peak mem/dev: device.memory_stats() peak of the process so far (n/a on CPU; run one "
        "config per process for exact peaks); XLA temp: the compiled update's temporary buffers "
        "per device; tok/s: batch * seq / step; attention: the implementation that ran (auto "
        "resolved; the trainer's left-padded layout: under the key mask).")
  return 0


if __name__ == "__main__":
  sys.exit(main())
