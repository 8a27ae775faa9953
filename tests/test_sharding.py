"""Sharded update step and sampler equal the single-device ones on 8 fake CPU devices (conftest),
parameters are split as the rule table says, and gradient accumulation equals the full batch."""

import dataclasses
import inspect
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r1jax import accumulate, grpo, model, sampling, sharding, trainer
from r1jax.config import ModelConfig

# Dims divisible by 8 where a mesh axis of 8 may split them; 4 kv heads do not divide tensor=8
# (replication fallback). Untied head and qkv biases cover every parameter kind.
CFG = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=8, num_kv_heads=4, qkv_bias=True, tie_embeddings=False)
B, P, N = 16, 6, 8  # update batch rows, prompt and completion lengths
PROMPTS, G = 4, 4  # sampler: 4 prompts x 4 samples = 16 rows
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8), (1, 8, 1)]
GREEDY_MESHES = [(2, 2, 2)]
TRAIN = trainer.TrainConfig(prompts_per_step=4, num_generations=4, max_prompt_length=P,
                            max_completion_length=N, learning_rate=1e-2, num_iterations=2,
                            adam_epsilon=1e-3)
LOSS = grpo.GRPOConfig(num_generations=4, max_completion_length=N, beta=0.04)
GREEDY = sampling.SamplingConfig(max_new_tokens=6, temperature=0.0, num_samples=G, eos_ids=(3,))
RANDOM = dataclasses.replace(GREEDY, temperature=1.0)


def make_batch(seed=0, rows=B):
  """A random GRPO minibatch: left-padded prompts, right-padded completions, π_old/π_ref."""
  rng = np.random.RandomState(seed)
  prompt_mask = np.arange(P)[None] >= rng.randint(0, P - 1, rows)[:, None]
  completion_mask = np.arange(N)[None] < rng.randint(1, N + 1, rows)[:, None]
  return {
      "prompt_tokens": rng.randint(1, CFG.vocab_size, (rows, P)).astype(np.int32),
      "prompt_mask": prompt_mask,
      "completion_tokens": rng.randint(1, CFG.vocab_size, (rows, N)).astype(np.int32),
      "completion_mask": completion_mask,
      "advantages": rng.randn(rows).astype(np.float32),
      "truncated": completion_mask.all(1),
      # log-probs of a 128-token vocabulary are near -log(128); offsets make ratios != 1 so
      # that both clip branches and the KL term are exercised.
      "old_logp": (-np.log(128) + 0.3 * rng.randn(rows, N)).astype(np.float32),
      "ref_logp": (-np.log(128) + 0.3 * rng.randn(rows, N)).astype(np.float32),
  }


def prompts():
  rng = np.random.RandomState(1)
  ids = [list(rng.randint(4, CFG.vocab_size, n)) for n in (6, 3, 5, 1)]
  return sampling.left_pad(ids, pad_id=0)


@pytest.fixture(scope="module")
def single():
  """Everything computed on one device: the reference of the sharded runs."""
  params = model.init_params(CFG, jax.random.PRNGKey(0), init_std=0.3)
  host_params = jax.device_get(params)
  optimizer, schedule = trainer.make_optimizer(TRAIN)
  step = trainer.make_update_step(CFG, TRAIN, LOSS, optimizer, schedule)
  state = trainer.init_state(params, TRAIN, optimizer, LOSS)
  new_params, _, metrics = step(state["params"], state["opt_state"], make_batch())
  tokens, mask = prompts()
  key = jax.random.PRNGKey(7)
  samples = {s.temperature: jax.device_get(sampling.generate(host_params, CFG, tokens, mask, key,
                                                             s))
             for s in (GREEDY, RANDOM)}
  return dict(params=host_params, optimizer=optimizer, step=step,
              new_params=jax.device_get(new_params), metrics=jax.device_get(metrics),
              samples=samples, prompts=(tokens, mask), key=key)


def assert_same_update(new_params, single):
  """Adam's first step moves each weight by lr * g / (|g| + eps), at most lr: compare the steps
  in units of lr. eps = 1e-3 keeps that ratio well-conditioned where g is near 0 (an error
  δg moves it by at most δg / eps: 1e-3 allows δg = 1e-6, float32 summation-order noise of the
  embedding gradient); lr = 1e-2 keeps the rounding of weights near 1 below the tolerance."""
  for a, b, p in zip(jax.tree.leaves(new_params), jax.tree.leaves(single["new_params"]),
                     jax.tree.leaves(single["params"])):
    lr = TRAIN.learning_rate
    np.testing.assert_allclose((np.asarray(a) - p) / lr, (b - p) / lr, atol=1e-3)


def shard_shape(shape, splits):
  return tuple(s // d for s, d in zip(shape, splits))


@pytest.mark.parametrize("mesh_shape", MESHES, ids=lambda m: "x".join(map(str, m)))
def test_sharded_update_and_sampling_match_one_device(single, mesh_shape):
  d, f, t = mesh_shape
  mesh = sharding.make_mesh(sharding.MeshConfig(data=d, fsdp=f, tensor=t))
  assert dict(mesh.shape) == {"data": d, "fsdp": f, "tensor": t}
  state_sh = sharding.train_state_shardings(
      CFG, lambda p: trainer.init_state(p, TRAIN, single["optimizer"], LOSS), mesh)
  params = jax.tree.map(jnp.asarray, single["params"])
  state = sharding.shard_params(
      trainer.init_state(params, TRAIN, single["optimizer"], LOSS), state_sh)

  # The rule table: embed over fsdp; heads, mlp, vocab over tensor; 4 kv heads only when
  # tensor divides them; Adam's moments and π_ref sharded like the params.
  kv = t if CFG.num_kv_heads % t == 0 else 1
  expected = {
      ("layers", "wq"): (1, f, t, 1), ("layers", "wk"): (1, f, kv, 1),
      ("layers", "wo"): (1, t, 1, f), ("layers", "w_down"): (1, t, f),
      ("layers", "bv"): (1, kv, 1), ("layers", "mlp_norm"): (1, 1),
      ("embed",): (t, f), ("lm_head",): (f, t), ("final_norm",): (1,),
  }
  mu = state["opt_state"][1][0].mu
  for path, splits in expected.items():
    for tree in (state["params"], state["ref_params"], mu):
      x = tree
      for k in path:
        x = x[k]
      want = shard_shape(x.shape, splits)
      assert {s.data.shape for s in x.addressable_shards} == {want}, (path, x.sharding.spec)
  spec = tuple(state["params"]["layers"]["wq"].sharding.spec)
  assert spec + (None,) * (4 - len(spec)) == (None, "fsdp" if f > 1 else None,
                                              "tensor" if t > 1 else None, None)
  assert state["step"].sharding.spec == jax.sharding.PartitionSpec()
  assert state["opt_state"][1][0].count.sharding.is_fully_replicated

  # One GRPO update (μ = 2: π_old given; β > 0: π_ref given) equals the single-device one.
  step = sharding.shard_update_step(single["step"], state_sh["params"], state_sh["opt_state"],
                                    mesh)
  new_params, new_opt, metrics = step(state["params"], state["opt_state"], make_batch())
  assert_same_update(new_params, single)
  for k, v in single["metrics"].items():
    np.testing.assert_allclose(metrics[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
  assert new_params["layers"]["wq"].sharding == state_sh["params"]["layers"]["wq"]
  assert new_opt[1][0].nu["embed"].sharding == state_sh["params"]["embed"]

  # Sampling: the same key gives the same tokens at temperature 1 (and greedy on one mesh:
  # each configuration is one more compilation). The params were donated; π_ref holds a copy.
  tokens, mask = single["prompts"]
  has_hook = "cache_sharding" in inspect.signature(sampling.generate).parameters
  for cfg in (RANDOM, GREEDY) if mesh_shape in GREEDY_MESHES else (RANDOM,):
    gen = sharding.shard_generate(CFG, cfg, state_sh["params"], mesh)
    args = (state["ref_params"], tokens, mask, single["key"])
    compiled = gen.compiled(PROMPTS, P).lower(*args).compile()
    out = compiled(*args)
    ref = single["samples"][cfg.temperature]
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.mask, ref.mask)
    np.testing.assert_allclose(out.log_probs, ref.log_probs, rtol=1e-5, atol=3e-5)
    rows = PROMPTS * G // (d * f)
    assert {s.data.shape[0] for s in out.tokens.addressable_shards} == {rows}
    if has_hook:
      # Inside the compiled decode loop each device holds its rows and kv heads of the cache
      # layer [R,N,S,K] (per-device shapes of the partitioned HLO), not a whole copy.
      slots = P + cfg.max_new_tokens - 1
      pattern = rf"f32\[(\d+),(\d+),{slots},{CFG.head_dim}\]"
      found = {(int(a), int(b)) for a, b in re.findall(pattern, compiled.as_text())}
      assert (rows, CFG.num_kv_heads // kv) in found, found
      if d * f > 1:
        assert (PROMPTS * G, CFG.num_kv_heads) not in found, found


# ----------------------------------------------------------------------------------------------
# Rules, meshes, shardings
# ----------------------------------------------------------------------------------------------
def test_mesh_config_resolves_and_rejects():
  assert sharding.MeshConfig().axis_sizes(8) == (8, 1, 1)
  assert sharding.MeshConfig(data=2, fsdp=-1, tensor=2).axis_sizes(8) == (2, 2, 2)
  assert sharding.MeshConfig(data=1, fsdp=4, tensor=2).axis_sizes(8) == (1, 4, 2)
  with pytest.raises(ValueError, match="--mesh_data/--mesh_fsdp/--mesh_tensor"):
    sharding.MeshConfig(data=2, fsdp=2, tensor=1).axis_sizes(8)
  with pytest.raises(ValueError, match="do not divide"):
    sharding.MeshConfig(data=-1, fsdp=3).axis_sizes(8)
  with pytest.raises(ValueError, match="at most one"):
    sharding.MeshConfig(data=-1, fsdp=-1)
  with pytest.raises(ValueError, match="--mesh_tensor"):
    sharding.MeshConfig(tensor=0)
  with pytest.raises(ValueError, match="'model'"):
    sharding.MeshConfig(rules=(("heads", "model"),))
  with pytest.raises(ValueError, match="--mesh_data"):
    sharding.make_mesh(sharding.MeshConfig(data=16))


def test_non_divisible_dims_fall_back_and_log(caplog):
  mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=1, tensor=4))
  with caplog.at_level(logging.INFO, logger="r1jax"):
    spec = sharding.logical_to_spec(("layers", "embed", "kv_heads", "head_dim"), (3, 64, 2, 7),
                                    mesh)
  assert spec == jax.sharding.PartitionSpec()  # 2 kv heads on tensor=4: replicated
  assert "kv_heads" in caplog.text
  # A vocabulary of 151936 = 2^7 * 1187 splits over tensor=4; 151937 does not.
  assert sharding.logical_to_spec(("vocab", "embed"), (151936, 64), mesh) == \
      jax.sharding.PartitionSpec("tensor")
  assert sharding.logical_to_spec(("vocab", "embed"), (151937, 64), mesh) == \
      jax.sharding.PartitionSpec()
  # Batch over (data, fsdp) keeps the longest prefix that divides the rows.
  mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4, tensor=1))
  assert sharding.batch_spec(16, mesh) == jax.sharding.PartitionSpec(("data", "fsdp"))
  assert sharding.batch_spec(6, mesh) == jax.sharding.PartitionSpec("data")
  assert sharding.batch_spec(3, mesh) == jax.sharding.PartitionSpec()
  # One mesh axis never splits two dimensions of one array.
  rules = (("a", "fsdp"), ("b", "fsdp"))
  assert sharding.logical_to_spec(("a", "b"), (8, 8), mesh, rules) == \
      jax.sharding.PartitionSpec("fsdp")
  with pytest.raises(ValueError, match="'nope'"):
    sharding.logical_to_spec(("nope",), (8,), mesh)


@pytest.mark.parametrize("preset", ["qwen2.5-0.5b", "qwen2.5-7b", "llama-3-8b"])
def test_every_preset_gets_valid_shardings_on_every_mesh(preset):
  """Abstract (nothing allocated) check that each spec divides its dimension on each mesh."""
  from r1jax.config import get_config  # pylint: disable=import-outside-toplevel
  config = get_config(preset)
  shapes = model.param_shapes(config)
  for d, f, t in MESHES:
    mesh = sharding.make_mesh(sharding.MeshConfig(data=d, fsdp=f, tensor=t))
    for sh, shape in zip(jax.tree.leaves(sharding.param_shardings(config, mesh)),
                         jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))):
      assert sh.shard_shape(shape)  # raises when a spec does not divide the shape
    cache = sharding.cache_sharding(config, 16, 100, mesh)
    cache.shard_shape((16, config.num_kv_heads, 100, config.head_dim))


def test_init_params_sharded(single):
  mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
  params = sharding.init_params_sharded(CFG, jax.random.PRNGKey(0), mesh, init_std=0.3)
  want = sharding.param_shardings(CFG, mesh)
  for p, sh, r in zip(jax.tree.leaves(params), jax.tree.leaves(want),
                      jax.tree.leaves(single["params"])):  # model.init_params, same key
    assert p.sharding == sh
    np.testing.assert_allclose(p, r, rtol=1e-6)  # jit may fuse the scaling differently


def test_host_slice_and_single_process_helpers():
  assert sharding.host_slice(64, num_processes=4, process_id=2) == slice(32, 48)
  assert sharding.host_slice(64) == slice(0, 64)
  with pytest.raises(ValueError, match="not divisible"):
    sharding.host_slice(10, num_processes=4, process_id=0)
  sharding.initialize_distributed(None, num_processes=1, process_id=0)  # no-op
  with pytest.raises(ValueError, match="--coordinator_address"):
    sharding.initialize_distributed(None, num_processes=2, process_id=0)
  with pytest.raises(ValueError, match="--process_id"):
    sharding.initialize_distributed("localhost:1234", num_processes=2, process_id=2)
  assert sharding.mean_across_hosts({"reward": 0.5}) == {"reward": 0.5}
  mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
  batch = sharding.put_batch({"x": np.arange(12).reshape(4, 3), "s": np.float32(2)}, mesh)
  assert batch["x"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
  assert {s.data.shape for s in batch["x"].addressable_shards} == {(1, 3)}
  np.testing.assert_array_equal(batch["x"], np.arange(12).reshape(4, 3))
  assert batch["s"].sharding.is_fully_replicated


# ----------------------------------------------------------------------------------------------
# Memory levers: gradient accumulation and row-chunked log-prob passes
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
@pytest.mark.parametrize("mask_truncated, seq_level", [(False, False), (True, True)])
def test_gradient_accumulation_equals_full_batch(loss_type, mask_truncated, seq_level):
  """k = 4 micro-batches give the full batch's loss and gradient for every loss_type. The
  policy is a cheap stand-in (logp = -softplus(features . w + c)) so that only the
  normalization is under test; the transformer case is the sharded test below."""
  loss_cfg = LOSS.replace(loss_type=loss_type, mask_truncated_completions=mask_truncated,
                          importance_sampling_level="sequence" if seq_level else "token")
  batch = make_batch(seed=3)
  batch["completion_mask"][:4] = np.arange(N) < 1  # uneven token counts across micro-batches
  batch["features"] = np.random.RandomState(4).randn(B, N, 5).astype(np.float32)
  params = {"w": jnp.linspace(-1.0, 1.0, 5), "c": jnp.float32(0.5)}

  def loss_fn(params, batch, num_items_in_batch=None):
    logp = -jax.nn.softplus(batch["features"] @ params["w"] + params["c"])
    return accumulate.grpo_objective(logp, jnp.zeros_like(logp), batch, loss_cfg,
                                     num_items_in_batch)

  (full_loss, full_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
  (loss, metrics), acc_grads = jax.jit(
      lambda p, b: accumulate.value_and_grad(loss_fn, p, b, loss_cfg, num_microbatches=4))(
          params, batch)
  np.testing.assert_allclose(loss, full_loss, rtol=1e-5)
  assert float(optax.tree.norm(grads)) > 0
  for a, b in zip(jax.tree.leaves(acc_grads), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  for k in ("kl", "ratio/mean", "ratio/min", "ratio/max", "clip_ratio/region_mean",
            "num_loss_tokens"):
    np.testing.assert_allclose(metrics[k], full_metrics[k], rtol=1e-5, err_msg=k)


def test_accumulated_sharded_step_equals_full_batch_step(single):
  """accumulate.make_update_step (k=2) under shard_update_step on a 2x2x2 mesh == the
  trainer's single-device step."""
  mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
  init = lambda p: trainer.init_state(p, TRAIN, single["optimizer"], LOSS)  # noqa: E731
  state_sh = sharding.train_state_shardings(CFG, init, mesh)
  state = sharding.shard_params(init(jax.tree.map(jnp.asarray, single["params"])), state_sh)
  step = accumulate.make_update_step(CFG, TRAIN, LOSS, single["optimizer"], num_microbatches=2,
                                     microbatch_sharding=sharding.batch_sharding(mesh))
  step = sharding.shard_update_step(step, state_sh["params"], state_sh["opt_state"], mesh)
  new_params, _, metrics = step(state["params"], state["opt_state"], make_batch())
  assert_same_update(new_params, single)
  np.testing.assert_allclose(metrics["loss"], single["metrics"]["loss"], rtol=1e-5)
  np.testing.assert_allclose(metrics["grad_norm"], single["metrics"]["grad_norm"], rtol=1e-5)


def test_chunked_logprob_pass_equals_one_pass(single):
  mesh = sharding.make_mesh(sharding.MeshConfig(data=4, fsdp=2, tensor=1))
  psh = sharding.param_shardings(CFG, mesh)
  logprob = trainer.make_logprob_fn(CFG, TRAIN)
  batch = make_batch(seed=5)
  full = logprob(single["params"], batch)
  chunked = sharding.shard_logprob_fn(accumulate.chunked_logprob_fn(logprob, 4), psh, mesh)
  out = chunked(sharding.shard_params(single["params"], psh), batch)
  assert out.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
  np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="--logprob_batch_size"):
    accumulate.map_row_chunks(lambda b: b, {"x": np.zeros((6, 2))}, 4)


@pytest.mark.skipif("mesh" not in inspect.signature(trainer.GRPOTrainer).parameters,
                    reason="GRPOTrainer has no mesh argument yet (diff in the sharding report)")
def test_trainer_on_a_mesh_repeats_the_single_device_run():
  """A step of Algorithm 1 (sampling, π_old/π_ref passes in row chunks, μ = 2 accumulated
  updates) on a 2x2x2 mesh gives the single-device run's completions, losses and weights."""
  from r1jax.tokenizer import CharTokenizer  # pylint: disable=import-outside-toplevel

  def reward(completions, problems):
    r = np.array([ord(c[0]) / 128 if c else 0.0 for c in completions], np.float32)
    return r, {"accuracy": r}, {}

  mcfg = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2,
                     num_heads=8, num_kv_heads=4, tie_embeddings=True, family="llama")
  cfg = trainer.TrainConfig(prompts_per_step=2, num_generations=4, max_prompt_length=4,
                            max_completion_length=3, learning_rate=1e-2, num_iterations=2,
                            gradient_accumulation_steps=2, logprob_batch_size=4,
                            adam_epsilon=1e-3, seed=0)
  loss_cfg = grpo.GRPOConfig(num_generations=4, max_completion_length=3, beta=0.04)
  runs = []
  for mesh in (None, sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))):
    t = trainer.GRPOTrainer(mcfg, cfg, loss_cfg, CharTokenizer(), ["ab", "cd", "ef"],
                            lambda p: p, reward, mesh=mesh)
    state = t.init_state(model.init_params(mcfg, jax.random.PRNGKey(0), init_std=0.3))
    state, metrics, ro = t.step(state)
    runs.append((ro.completions, [metrics[k] for k in ("loss", "kl", "grad_norm")],
                 jax.device_get(state["params"])))
  (c1, m1, p1), (c2, m2, p2) = runs
  assert c1 == c2
  np.testing.assert_allclose(m1, m2, rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_ragged_attention_on_a_mesh_is_refused_naming_the_setting():
  mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=1, tensor=1),
                            devices=jax.devices()[:1])
  with pytest.raises(ValueError, match="R1JAX_SAMPLER_ATTENTION"):
    sharding.shard_generate(CFG, dataclasses.replace(RANDOM, attention="ragged"), None, mesh)
