"""Time of one whole GRPO step of the trainer on Countdown, split into its phases.

The step is `r1jax.trainer.GRPOTrainer.step`, unchanged: B prompts from the Countdown task
(`r1jax.tasks`), G completions each from `r1jax.sampling.generate` (on a mesh, the trainer's
`sharding.shard_generate`), rule-based rewards (`r1jax.rewards.score_completions`, as
experiments/r1_zero.py builds them), group advantages, the π_old log-prob pass (μ > 1 only),
the π_ref pass (beta > 0 only), then μ = --num_iterations passes of --num_minibatches jitted
updates. Phases:

  rollout       generate + copy to host (the trainer's `sample_time_s`)
  rewards       scoring the decoded completions (`reward_time_s`)
  old_logprobs  π_old pass (μ > 1)          \\  the trainer's `logprob_time_s`, split by
  ref_logprobs  π_ref pass (beta > 0)       /  timing each call of its `logprob_fn`
  update        μ x num_minibatches optimizer steps (`update_time_s`)
  other         the rest of the step: prompt encoding, decoding, advantages, shuffles
  total         wall time of `trainer.step(state)`

The first step compiles and is reported apart; then --repeats steps are timed and each phase's
median is kept (other is computed per step, then its median taken), so the phases add up to
the total only up to the spread between steps.

Fixed work: random weights sample EOS only by chance and a trained checkpoint stops when it
likes, so the amount of work would vary from step to step. By default the tokenizer's EOS ids
and the stop strings are therefore dropped: no completion stops early, every one is exactly
--new_tokens tokens, and a step generates rows * new_tokens tokens. --allow_stop keeps EOS and
the "</answer>" stop; the step then depends on what the model writes.
Variable lengths: --length_dist real cuts each completion after a drawn number of tokens, as if
EOS came there (the trainer's generate is wrapped: mask, tokens, lengths and `truncated` are set
as the sampler sets them for a completion that stopped). Lengths are vs_trl.completion_lengths
(lognormal, mean 30% of N, ~1% at N: a real run's spread) drawn once from --seed, or the JSON
list of --lengths_file (what vs_trl.py forces on TRL too): every step sees
the same lengths, so the first step compiles each bucket length that the timed steps use (a
real run's steady state). The sampler still generates N tokens per row (its rollout time is that of
the fixed case); the log-prob passes and the update see the cut batch, which is what
--length_buckets (the trainer's; 0: the fixed length P + N) makes cost follow the real tokens.
Default config (GPU): qwen2.5-0.5b, random bf16 weights, B=32 x G=8 = 256 rows, P=128, N=512,
μ=2 (so the π_old pass is timed too), beta=0.04, remat full, 4 accumulation micro-batches,
log-prob passes in chunks of 64 rows.
Weights are random (--preset, bf16 by default) or read from --checkpoint DIR (an r1jax/HF
directory, e.g. checkpoints/countdown_base_tiny). The tokenizer is the checkpoint's
tokenizer.json if it has one, else --tokenizer (default: the character tokenizer). Where the
model's vocabulary is larger than the tokenizer's (a Qwen preset with the character tokenizer),
ids past the tokenizer are decoded as id mod its vocabulary, so that every generated token
becomes text the reward has to read, as it would with the model's own tokenizer. Prompts use
the compact template and the short question wording (experiments/configs/countdown_tiny.flags),
left-padded to --prompt_len.

  python benchmarks/grpo_step.py --preset qwen2.5-0.5b --prompts 32 --num_generations 8 \\
      --prompt_len 128 --new_tokens 512          # 256 rows, bf16, one GPU or a mesh
  python benchmarks/grpo_step.py --new_tokens 1024 --length_dist real   # lengths of a real run
  python benchmarks/grpo_step.py --small         # CPU, tiny preset on 8 fake devices, seconds
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

PHASES = ("rollout", "rewards", "old_logprobs", "ref_logprobs", "update", "other")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", default="qwen2.5-0.5b", help="random weights of this preset")
  parser.add_argument("--checkpoint", default="", help="r1jax/HF checkpoint directory instead")
  parser.add_argument("--tokenizer", default="char",
                      help="'char' or a tokenizer.json path/dir (a checkpoint's own wins)")
  parser.add_argument("--dtype", default="bfloat16", help="params and compute dtype")
  parser.add_argument("--prompts", type=int, default=32, help="B: prompts per step")
  parser.add_argument("--num_generations", type=int, default=8, help="G: completions per prompt")
  parser.add_argument("--prompt_len", type=int, default=128, help="prompts left-padded to this")
  parser.add_argument("--new_tokens", type=int, default=512, help="completion tokens")
  parser.add_argument("--num_iterations", type=int, default=2,
                      help="μ: update passes per batch (> 1 adds the π_old pass)")
  parser.add_argument("--num_minibatches", type=int, default=1)
  parser.add_argument("--beta", type=float, default=0.04, help="KL weight (0: no π_ref pass)")
  parser.add_argument("--allow_stop", action="store_true",
                      help="keep EOS and the </answer> stop (completions may end early)")
  parser.add_argument("--template", default="compact", help="r1_zero | plain | compact")
  parser.add_argument("--question_style", default="short", help="short | tinyzero")
  parser.add_argument("--mesh_data", type=int, default=-1)
  parser.add_argument("--mesh_fsdp", type=int, default=1)
  parser.add_argument("--mesh_tensor", type=int, default=1)
  parser.add_argument("--remat", default="full", help="none, full, dots")
  parser.add_argument("--gradient_accumulation_steps", type=int, default=4)
  parser.add_argument("--logprob_batch_size", type=int, default=64,
                      help="rows per chunk of the π_old/π_ref passes (0: all)")
  parser.add_argument("--logprob_chunk_size", type=int, default=0,
                      help="positions per unembedding chunk (0: the fused log-probs' own size)")
  parser.add_argument("--length_dist", default="fixed", choices=("fixed", "real"),
                      help="completion lengths: all --new_tokens, or drawn (mean 30%%)")
  parser.add_argument("--lengths_file", default="",
                      help="JSON list of the completion lengths (rows); implies --length_dist real")
  parser.add_argument("--length_buckets", type=int, default=4,
                      help="the trainer's --length_buckets (0: fixed length P + N)")
  parser.add_argument("--repeats", type=int, default=3, help="timed steps; medians are kept")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--small", action="store_true",
                      help="CPU smoke run: tiny preset, 8 rows, 16 new tokens, 8 fake devices")
  args = parser.parse_args(argv)
  if args.small:
    args.preset, args.checkpoint, args.tokenizer, args.dtype = "tiny", "", "char", "float32"
    args.prompts, args.num_generations, args.prompt_len, args.new_tokens = 2, 4, 48, 16
    args.mesh_data, args.mesh_fsdp, args.mesh_tensor = 2, 2, 2
    # No remat or accumulation: they triple the compile time on 2 CPU cores.
    args.remat, args.gradient_accumulation_steps, args.logprob_batch_size = "none", 1, 0
    # 15 steps of ~0.1 s: enough that per-phase medians add up to the median step on a busy CPU.
    args.logprob_chunk_size, args.repeats = 16, 15
  for name in ("prompts", "prompt_len", "repeats", "num_iterations", "num_minibatches",
               "gradient_accumulation_steps"):
    if getattr(args, name) < 1:
      parser.error(f"--{name}={getattr(args, name)} must be >= 1")
  if args.num_generations < 2:
    parser.error(f"--num_generations={args.num_generations} must be >= 2 (group advantages)")
  if args.new_tokens < 1:
    parser.error(f"--new_tokens={args.new_tokens} must be >= 1")
  if (args.beta < 0 or args.logprob_batch_size < 0 or args.logprob_chunk_size < 0
      or args.length_buckets < 0):
    parser.error("--beta, --logprob_batch_size, --logprob_chunk_size and --length_buckets must "
                 "be >= 0")
  if args.checkpoint and not os.path.isdir(args.checkpoint):
    parser.error(f"--checkpoint={args.checkpoint!r} is not a directory")
  return args


from timing import median_seconds as _median_seconds  # noqa: E402
from timing import use_fake_cpu_devices  # noqa: E402


def _median(values):
  """The median as `timing.median_seconds` takes it (upper middle of an even count)."""
  return sorted(values)[len(values) // 2]


class BenchTokenizer:
  """The run's tokenizer with its EOS ids dropped unless `allow_stop`, and ids past its
  vocabulary decoded modulo it (see the module docstring). Encoding is unchanged."""

  def __init__(self, base, allow_stop: bool):
    self.base, self.allow_stop = base, allow_stop
    self.vocab_size, self.pad_id = base.vocab_size, base.pad_id
    self.bos_id = getattr(base, "bos_id", None)

  def encode(self, text, add_bos=False):
    return self.base.encode(text, add_bos=add_bos)

  def decode(self, ids, skip_special=True):
    return self.base.decode([int(i) % self.vocab_size for i in ids], skip_special=skip_special)

  @property
  def eos_ids(self):
    return tuple(self.base.eos_ids) if self.allow_stop else ()


def load_policy(args, mesh):
  """(model_config, params, tokenizer) from --checkpoint or random weights of --preset."""
  import jax  # pylint: disable=import-outside-toplevel

  from r1jax import hf, model, sharding  # pylint: disable=import-outside-toplevel
  from r1jax.config import get_config  # pylint: disable=import-outside-toplevel
  from r1jax.tokenizer import load_tokenizer  # pylint: disable=import-outside-toplevel

  key = jax.random.PRNGKey(args.seed)
  tok_spec = args.tokenizer
  if args.checkpoint:
    config, params = hf.load_hf_checkpoint(args.checkpoint, dtype=args.dtype,
                                           param_dtype=args.dtype)
    if os.path.exists(os.path.join(args.checkpoint, "tokenizer.json")):
      tok_spec = args.checkpoint
    params = jax.device_put(params)
  else:
    try:
      config = get_config(args.preset, dtype=args.dtype, param_dtype=args.dtype)
    except ValueError as e:
      raise SystemExit(f"--preset: {e}")
    if mesh is not None:  # built in its shards: no device holds the whole model
      params = sharding.init_params_sharded(config, key, mesh)
    else:
      params = jax.jit(model.init_params, static_argnums=0)(config, key)
  tokenizer = load_tokenizer(tok_spec)
  if tokenizer.vocab_size > config.vocab_size:
    raise SystemExit(f"--tokenizer={tok_spec!r} has {tokenizer.vocab_size} ids but the model's "
                     f"vocabulary has {config.vocab_size}")
  need = args.prompt_len + args.new_tokens
  if need > config.max_position_embeddings:
    raise SystemExit(f"--prompt_len + --new_tokens = {need} exceeds the model's "
                     f"max_position_embeddings={config.max_position_embeddings}")
  return config, params, tokenizer


def build_trainer(args, config, tokenizer, mesh):
  """A GRPOTrainer on Countdown, configured as experiments/r1_zero.py would be."""
  from r1jax import grpo, rewards, tasks, trainer  # pylint: disable=import-outside-toplevel

  steps = args.repeats + 1
  try:
    task = tasks.get_task("countdown", num_train=args.prompts * steps, num_test=1,
                          question_style=args.question_style)
    fmt = functools.partial(tasks.format_problem, template=args.template)
    problems = task.split("train", args.seed)
    longest = max(len(tokenizer.encode(fmt(p), add_bos=tokenizer.bos_id is not None))
                  for p in problems)
  except ValueError as e:
    raise SystemExit(f"--template/--question_style: {e}")
  if longest > args.prompt_len:
    raise SystemExit(f"--prompt_len={args.prompt_len} is shorter than the longest prompt "
                     f"({longest} tokens)")
  reward_fn = functools.partial(rewards.score_completions, reward_kind=task.reward_kind,
                                config=rewards.RewardConfig(),
                                prefix=tasks.completion_prefix(args.template))
  n = args.new_tokens
  cfg = trainer.TrainConfig(
      prompts_per_step=args.prompts, num_generations=args.num_generations,
      max_prompt_length=args.prompt_len, max_completion_length=n,
      stop_strings=("</answer>",) if args.allow_stop else (), max_steps=steps,
      num_iterations=args.num_iterations, num_minibatches=args.num_minibatches,
      remat=args.remat, logprob_chunk_size=args.logprob_chunk_size or None,
      gradient_accumulation_steps=args.gradient_accumulation_steps,
      logprob_batch_size=args.logprob_batch_size or None, length_buckets=args.length_buckets,
      seed=args.seed)
  loss_cfg = grpo.GRPOConfig(num_generations=args.num_generations, max_completion_length=n,
                             beta=args.beta)
  try:
    return trainer.GRPOTrainer(config, cfg, loss_cfg, tokenizer, problems, fmt, reward_fn,
                               add_bos=tokenizer.bos_id is not None, mesh=mesh)
  except ValueError as e:
    raise SystemExit(str(e))


def real_lengths(rows: int, n: int, seed: int, lengths_file: str = ""):
  """[rows] completion lengths in [1, n]: the JSON list in `lengths_file` if given (the lengths
  benchmarks/vs_trl.py also forces on TRL), else `vs_trl.completion_lengths(rows, n, seed)`
  (lognormal, mean about 0.3 n, ~1% at n)."""
  import json  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  if not lengths_file:
    from vs_trl import completion_lengths  # pylint: disable=import-outside-toplevel
    return completion_lengths(rows, n, seed)
  with open(lengths_file) as f:
    lengths = np.asarray(json.load(f), np.int64)
  if lengths.shape != (rows,) or lengths.min() < 1 or lengths.max() > n:
    raise SystemExit(f"--lengths_file={lengths_file}: expected {rows} ints in [1, {n}], got "
                     f"shape {lengths.shape}, range [{lengths.min()}, {lengths.max()}]")
  return lengths.astype(np.int32)


def cut_generate(generate, new_tokens: int, seed: int, pad_id: int, lengths_file: str = ""):
  """`generate` whose completions stop after `real_lengths` tokens (one draw, the same each
  call), as if EOS came there: mask, tokens (pad after the end), log-probs, lengths and
  `truncated` as the sampler writes them for a completion that stopped."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  def fn(params, tokens, mask, key):
    out = jax.device_get(generate(params, tokens, mask, key))
    want = real_lengths(out.mask.shape[0], new_tokens, seed, lengths_file)
    keep = out.mask & (np.arange(out.mask.shape[1])[None] < want[:, None])
    lengths = keep.sum(1).astype(np.int32)
    return out._replace(tokens=np.where(keep, out.tokens, pad_id).astype(out.tokens.dtype),
                        mask=keep, log_probs=np.where(keep, out.log_probs, 0.0),
                        lengths=lengths, truncated=out.truncated & (lengths == keep.shape[1]))

  return fn


def timed_logprob_fn(fn, seconds: list):
  """`fn` with each call's wall time (through the copy to host, as the trainer does) appended
  to `seconds`."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  def wrapped(params, batch):
    start = time.perf_counter()
    out = np.asarray(fn(params, batch))
    seconds.append(time.perf_counter() - start)
    return out

  return wrapped


def phase_times(metrics, logprob_calls, step_s, num_iterations, beta):
  """{phase: seconds} of one step from the trainer's metrics and the timed log-prob calls."""
  old = logprob_calls[0] if num_iterations > 1 else 0.0
  ref = logprob_calls[-1] if beta != 0 else 0.0
  out = {"rollout": metrics["sample_time_s"], "rewards": metrics["reward_time_s"],
         "old_logprobs": old, "ref_logprobs": ref, "update": metrics["update_time_s"]}
  out["other"] = step_s - sum(out.values())
  return out


def main(argv=None):
  args = parse_args(argv)
  if args.small:
    use_fake_cpu_devices(8)
  import jax  # pylint: disable=import-outside-toplevel

  from r1jax import sharding  # pylint: disable=import-outside-toplevel

  # One device: plain jit, as experiments/common.make_mesh leaves it; else the flags' mesh.
  mesh = None
  if jax.device_count() > 1:
    try:
      mesh = sharding.make_mesh(sharding.MeshConfig(data=args.mesh_data, fsdp=args.mesh_fsdp,
                                                    tensor=args.mesh_tensor))
    except ValueError as e:
      raise SystemExit(str(e))
  config, params, base_tokenizer = load_policy(args, mesh)
  tokenizer = BenchTokenizer(base_tokenizer, args.allow_stop)
  grpo_trainer = build_trainer(args, config, tokenizer, mesh)
  if args.length_dist == "real" or args.lengths_file:
    grpo_trainer.generate = cut_generate(grpo_trainer.generate, args.new_tokens, args.seed,
                                         grpo_trainer.sampling_config.pad_id, args.lengths_file)
  calls: list[float] = []
  grpo_trainer.logprob_fn = timed_logprob_fn(grpo_trainer.logprob_fn, calls)
  state = {"state": grpo_trainer.init_state(params)}
  del params
  records = []

  def one_step():
    calls.clear()
    start = time.perf_counter()
    state["state"], metrics, ro = grpo_trainer.step(state["state"])
    step_s = time.perf_counter() - start
    records.append((phase_times(metrics, calls, step_s, args.num_iterations, args.beta),
                    ro.generated_tokens))

  start = time.perf_counter()
  one_step()  # compiles the sampler, the log-prob pass and the update
  compile_s = time.perf_counter() - start
  records.clear()
  total = _median_seconds(one_step, args.repeats)
  phases = {k: _median([r[0][k] for r in records]) for k in PHASES}
  tokens = _median([r[1] for r in records])

  rows = args.prompts * args.num_generations
  mesh_text = dict(mesh.shape) if mesh is not None else "none (one device, plain jit)"
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}) x "
        f"{jax.device_count()}, mesh {mesh_text}, "
        f"{'checkpoint ' + args.checkpoint if args.checkpoint else 'preset ' + args.preset} "
        f"({config.num_params() / 1e6:.1f}M params, random weights: {not args.checkpoint}), "
        f"dtype {args.dtype}, B={args.prompts} x G={args.num_generations} = {rows} rows, "
        f"P={args.prompt_len}, N={args.new_tokens} "
        f"({'EOS/stop allowed' if args.allow_stop else 'forced, no EOS/stop'}), "
        f"lengths {args.length_dist}, length_buckets {args.length_buckets}, "
        f"μ={args.num_iterations} x {args.num_minibatches} minibatch(es), beta={args.beta}, "
        f"remat {args.remat}, grad accumulation {args.gradient_accumulation_steps}, "
        f"logprob_batch_size {args.logprob_batch_size or 'all'}, logprob_chunk_size "
        f"{args.logprob_chunk_size or 'all'}, median of {args.repeats} steps")
  what = {
      "rollout": f"generate {rows} x {'<= ' if args.allow_stop else ''}{args.new_tokens} "
                 "tokens + copy to host"
                 + (" (then cut to the drawn lengths)"
                    if args.length_dist == "real" or args.lengths_file else ""),
      "rewards": f"countdown rewards of {rows} completions (process pool)",
      "old_logprobs": "π_old pass" if args.num_iterations > 1 else "none (μ = 1)",
      "ref_logprobs": "π_ref pass" if args.beta != 0 else "none (beta = 0)",
      "update": f"{args.num_iterations * args.num_minibatches} optimizer step(s)",
      "other": "encode, decode, advantages, shuffles",
  }
  print(" | ".join(("phase", "ms", "share", "what")))
  for k in PHASES:
    print(f"{k} | {phases[k] * 1e3:.2f} | {100 * phases[k] / total:.1f}% | {what[k]}")
  print(f"total | {total * 1e3:.2f} | 100.0% | trainer.step wall time")
  print(f"generated tokens/step: {tokens}; step tok/s: {tokens / total:.0f}; rollout tok/s: "
        f"{tokens / phases['rollout']:.0f}; first step (compile): {compile_s:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
