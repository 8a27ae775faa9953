"""Packs an exported policy (an HF directory) small enough to leave a device machine and come back.

The device tool returns at most 8 files of 16 MiB (64 MiB in all) from a call and carries at most
64 MiB of working tree to one; a medium (25M) policy exported in float32 is one 97 MB file. This
writes a copy whose weights are stored in --dtype (bfloat16 by default: 50 MB) in safetensors
shards of at most --max_shard_mib, with the tokenizer files beside them, then loads the copy
back and compares its logits with the original's on a few prompts of random tokens (the
difference is the storage rounding; printed, and an error above --tolerance of the logits'
scale):

  python benchmarks/pack_policy.py runs/r1_zero_gpu/seed=0/policy $OUT/policy   # on the GPU
  # later, on this machine: copy $OUT/policy into an ignored folder (e.g. policies/), carry it
  # and point the scripts at it (R1_ZERO_POLICY=policies/r1_zero_seed0 for tools/gpu_jobs/gpu_all.sh)

Loading the copy (r1jax.hf.load_hf_checkpoint) gives params in the stored dtype; the training
scripts keep their float32 master weights from it (`--param_dtype`), so a bfloat16 copy is a
policy rounded once, not a different model.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("src", help="an HF policy directory (config.json + safetensors)")
  p.add_argument("dst", help="where the packed copy is written (created; must not hold a policy)")
  p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
  p.add_argument("--max_shard_mib", type=float, default=15.0)
  p.add_argument("--tolerance", type=float, default=0.05,
                 help="largest logit difference allowed, as a share of the logits' max |value|")
  args = p.parse_args(argv)
  if not os.path.isfile(os.path.join(args.src, "config.json")):
    p.error(f"src={args.src!r} holds no config.json: not an exported policy")
  if os.path.exists(os.path.join(args.dst, "config.json")):
    p.error(f"dst={args.dst!r} already holds a policy")
  if args.max_shard_mib <= 0:
    p.error(f"--max_shard_mib={args.max_shard_mib} must be > 0")
  return args


def logits_of(config, params, tokens):
  """float32 logits [B,T,V] of `params` on `tokens` [B,T] (computed in float32 whatever the
  stored dtype)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from r1jax import model  # pylint: disable=import-outside-toplevel
  cfg = config.replace(dtype="float32", param_dtype="float32")
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  mask = jnp.ones(tokens.shape, bool)
  out, _ = model.forward(params, jnp.asarray(tokens), cfg,
                         positions=model.positions_from_mask(mask), kv_mask=mask)
  return np.asarray(out)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from r1jax import hf  # pylint: disable=import-outside-toplevel
  config, params = hf.load_hf_checkpoint(args.src)
  packed_config = config.replace(param_dtype=args.dtype)
  packed = jax.tree.map(lambda x: jnp.asarray(x).astype(args.dtype), params)
  # As experiments/common.tokenizer_dir: a policy directory has a tokenizer when it holds
  # tokenizer.json (the char tokenizer has none); the tokenizer's other files come along.
  has_tokenizer = os.path.exists(os.path.join(args.src, "tokenizer.json"))
  hf.save_hf_checkpoint(args.dst, packed_config, packed,
                        tokenizer_dir=args.src if has_tokenizer else None,
                        max_shard_bytes=int(args.max_shard_mib * 2**20))
  files = sorted(os.listdir(args.dst))
  sizes = {f: os.path.getsize(os.path.join(args.dst, f)) for f in files}
  print(f"{args.src} -> {args.dst}: {len(files)} files, {sum(sizes.values()) / 2**20:.1f} MiB "
        f"({args.dtype}; largest {max(sizes.values()) / 2**20:.1f} MiB)")
  for f in files:
    print(f"  {f} {sizes[f] / 2**20:.2f} MiB")
  config2, params2 = hf.load_hf_checkpoint(args.dst)
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(4, 32))
  ref = logits_of(config, params, tokens)
  got = logits_of(config2, params2, tokens)
  err = float(np.max(np.abs(ref - got)) / np.max(np.abs(ref)))
  ok = err <= args.tolerance
  print(f"logits of the copy vs the original: max |diff| / max |logit| = {err:.2e} "
        f"(tolerance {args.tolerance}): {'ok' if ok else 'TOO LARGE'}")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
