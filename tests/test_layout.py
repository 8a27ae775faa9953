"""The compact right-padded layout and the length buckets (r1jax.layout, accumulate's bucketed
step and pass) against the padded fixed-shape computation, and r1jax/'s import graph."""

import ast
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r1jax import accumulate, grpo, layout, model, trainer
from r1jax.config import ModelConfig
from r1jax.tokenizer import CharTokenizer

CFG = ModelConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=1,
                  num_heads=4, num_kv_heads=2, qkv_bias=True, tie_embeddings=False)
B, P, N = 8, 8, 24  # P + N = 32: with 4 buckets, lengths 8, 16, 24, 32
TEMPERATURE = 0.7
# Valid prompt and completion tokens per row: completions of 0, 1 and N tokens, and rows long
# and short in every combination, so the two length-sorted micro-batches take buckets 8 and 32.
PLEN = np.array([8, 1, 3, 6, 2, 8, 5, 4])
CLEN = np.array([24, 0, 1, 2, 5, 17, 24, 3])


def make_batch(seed=0):
  """A GRPO minibatch of ragged rows: left-padded prompts, right-padded completions, π_old and
  π_ref log-probs (μ > 1, beta > 0)."""
  rng = np.random.RandomState(seed)
  completion_mask = np.arange(N)[None] < CLEN[:, None]
  return {
      "prompt_tokens": rng.randint(1, CFG.vocab_size, (B, P)).astype(np.int32),
      "prompt_mask": np.arange(P)[None] >= (P - PLEN)[:, None],
      "completion_tokens": rng.randint(1, CFG.vocab_size, (B, N)).astype(np.int32),
      "completion_mask": completion_mask,
      "advantages": rng.randn(B).astype(np.float32),
      "truncated": completion_mask.all(1),
      "old_logp": (-np.log(128) + 0.3 * rng.randn(B, N)).astype(np.float32),
      "ref_logp": (-np.log(128) + 0.3 * rng.randn(B, N)).astype(np.float32),
  }


def padded_log_probs(params, batch):
  """The reference: [prompt P | completion N] as one padded sequence under the key mask, the
  trainer's layout before the compact one."""
  tokens = jnp.concatenate([batch["prompt_tokens"], batch["completion_tokens"]], axis=1)
  mask = jnp.concatenate([batch["prompt_mask"], batch["completion_mask"]], axis=1)
  logp, ent = model.sequence_log_probs(params, tokens, mask, CFG, temperature=TEMPERATURE)
  return logp[:, P - 1:], ent[:, P - 1:]


def reference_step(params, opt_state, batch, loss_cfg, optimizer):
  """The whole-batch fixed-shape update on the padded layout."""
  def loss_fn(p):
    logp, ent = padded_log_probs(p, batch)
    return accumulate.grpo_objective(logp, ent, batch, loss_cfg)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return (optax.apply_updates(params, updates), opt_state,
          dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads)))


@pytest.fixture(scope="module")
def params():
  return jax.device_get(model.init_params(CFG, jax.random.PRNGKey(0), init_std=0.3))


def test_bucket_lengths_and_groups():
  assert layout.bucket_lengths(32, 4) == (8, 16, 24, 32)
  assert layout.bucket_lengths(1152, 4) == (288, 576, 864, 1152)
  assert layout.bucket_lengths(7, 4) == (7,)  # one bucket: the fixed-shape step runs
  assert layout.bucket_lengths(32, 1) == layout.bucket_lengths(32, 0) == (32,)
  lengths = layout.sequence_lengths(make_batch()["prompt_mask"], make_batch()["completion_mask"])
  np.testing.assert_array_equal(lengths, PLEN + CLEN)
  groups = layout.length_sorted_groups(lengths, 2)
  assert [layout.bucket_length(lengths[g], layout.bucket_lengths(32, 4)) for g in groups] == [8, 32]
  assert sorted(np.concatenate(groups)) == list(range(B))
  with pytest.raises(ValueError, match="--gradient_accumulation_steps"):
    layout.length_sorted_groups(lengths, 3)
  with pytest.raises(ValueError, match="--length_buckets"):
    trainer.TrainConfig(length_buckets=-1).validate()


def test_compact_layout_gives_the_padded_log_probs(params):
  """Each completion token's log-prob and entropy on the compact layout cut to the longest row
  equal the padded layout's; so do the bucketed π_old / π_ref pass's, in the batch's row order,
  over length-sorted chunks of 4 rows (8 and 32 slots)."""
  batch = make_batch()
  want_logp, want_ent = map(np.asarray, padded_log_probs(params, batch))
  valid = batch["completion_mask"]
  args = [batch[k] for k in accumulate.FORWARD_KEYS]
  logp, ent = layout.completion_log_probs(params, *args, CFG, temperature=TEMPERATURE,
                                          length=int(np.max(PLEN + CLEN)))
  assert logp.shape == ent.shape == (B, N)
  np.testing.assert_allclose(np.asarray(logp)[valid], want_logp[valid], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ent)[valid], want_ent[valid], rtol=1e-5, atol=1e-5)
  cfg = trainer.TrainConfig(temperature=TEMPERATURE, logprob_batch_size=4, length_buckets=4)
  fn = trainer.make_chunked_logprob_fn(CFG, cfg)
  assert isinstance(fn, accumulate.BucketedLogprobFn)
  out = fn(params, batch)
  assert sorted(fn._fns) == [(8, 4), (32, 4)]  # the short chunk ran 8 slots, not 32
  np.testing.assert_allclose(out[valid], want_logp[valid], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "bnpo"])
def test_bucketed_update_equals_the_whole_batch_step(params, loss_type):
  """Two length-sorted micro-batches (8 and 32 slots) give the whole padded batch's loss,
  metrics and gradients (SGD at rate 1: the step is minus the gradient)."""
  loss_cfg = grpo.GRPOConfig(num_generations=4, max_completion_length=N, beta=0.04,
                             loss_type=loss_type)
  cfg = trainer.TrainConfig(num_generations=4, max_prompt_length=P, max_completion_length=N,
                            temperature=TEMPERATURE, gradient_accumulation_steps=2,
                            num_iterations=2, length_buckets=4)
  optimizer = optax.sgd(1.0)
  batch = make_batch(seed=1)
  want_params, _, want = reference_step(params, optimizer.init(params), batch, loss_cfg,
                                        optimizer)
  step = trainer.make_update_step(CFG, cfg, loss_cfg, optimizer, None)
  assert isinstance(step, accumulate.BucketedUpdateStep)
  new_params, _, metrics = step(jax.tree.map(jnp.array, params), optimizer.init(params), batch)
  assert sorted(step._grads) == [(8, 4), (32, 4)]
  assert set(metrics) == set(want)
  for k in want:
    np.testing.assert_allclose(metrics[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
  for a, b, p in zip(jax.tree.leaves(new_params), jax.tree.leaves(want_params),
                     jax.tree.leaves(params)):
    step, want_step = np.asarray(a) - p, np.asarray(b) - p
    np.testing.assert_allclose(step, want_step, atol=1e-6 * np.abs(want_step).max())


def _cut(generate, lengths):
  """`generate` whose row r stops after lengths[r % len(lengths)] tokens (as if EOS came)."""
  def fn(params, tokens, mask, key):
    out = jax.device_get(generate(params, tokens, mask, key))
    n = out.mask.shape[1]
    want = np.resize(np.asarray(lengths), out.mask.shape[0])
    keep = out.mask & (np.arange(n)[None] < want[:, None])
    return out._replace(tokens=np.where(keep, out.tokens, 0), mask=keep,
                        log_probs=np.where(keep, out.log_probs, 0.0), lengths=keep.sum(1),
                        truncated=out.truncated & (keep.sum(1) == n))
  return fn


def test_trainer_step_with_length_buckets_repeats_the_fixed_shape_step():
  """A step of Algorithm 1 (μ = 2, beta > 0, 2 accumulation micro-batches, π_old / π_ref
  passes in chunks of 4 rows) on ragged completions: length_buckets=4 gives the completions,
  metrics and weights of length_buckets=0."""
  def reward(completions, problems):
    r = np.array([len(c) / 10 + (ord(c[0]) / 128 if c else 0.0) for c in completions],
                 np.float32)
    return r, {"accuracy": r}, {}

  # CFG, P, N, the temperature and the loss of the tests above: the bucketed passes compile
  # to their programs (8 and 32 slots, 4 rows), which the session's compilation cache holds.
  cut = [1, 3, 24, 2, 12, 2, 24, 1]
  runs = []
  for buckets in (0, 4):
    cfg = trainer.TrainConfig(prompts_per_step=2, num_generations=4, max_prompt_length=P,
                              max_completion_length=N, learning_rate=1e-2, num_iterations=2,
                              temperature=TEMPERATURE,
                              gradient_accumulation_steps=2, logprob_batch_size=4,
                              adam_epsilon=1e-3, length_buckets=buckets, seed=0)
    loss_cfg = grpo.GRPOConfig(num_generations=4, max_completion_length=N, beta=0.04)
    t = trainer.GRPOTrainer(CFG, cfg, loss_cfg, CharTokenizer(), ["ab", "cdef", "g"],
                            lambda p: p, reward)
    t.generate = _cut(t.generate, cut)
    state = t.init_state(model.init_params(CFG, jax.random.PRNGKey(0), init_std=0.3))
    state, metrics, ro = t.step(state)
    runs.append((ro.completions, metrics, jax.device_get(state["params"]), t,
                 ro.batch["completion_mask"].sum(1)))
  (c0, m0, p0, t0, _), (c1, m1, p1, t1, lengths) = runs
  assert isinstance(t1.update_step, accumulate.BucketedUpdateStep)
  assert not isinstance(t0.update_step, accumulate.BucketedUpdateStep)
  assert sorted(t1.update_step._grads) == [(8, 4), (32, 4)]
  assert c0 == c1
  np.testing.assert_array_equal(lengths, cut)
  for k in ("loss", "kl", "grad_norm", "entropy", "ratio/mean", "clip_fraction"):
    np.testing.assert_allclose(m1[k], m0[k], rtol=1e-5, atol=1e-6, err_msg=k)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p0)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Import graph
# ----------------------------------------------------------------------------------------------
def import_graph(package_dir: str, package: str = "r1jax") -> dict[str, set[str]]:
  """{module: modules of `package` it imports}, from the ast of every module, imports inside
  functions included. `from a import b` names the module a.b when that is a module, else a."""
  root = os.path.dirname(package_dir)
  modules = {}
  for dirpath, _, files in os.walk(package_dir):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(dirpath, f), root)[:-3].replace(os.sep, ".")
        modules[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = \
            os.path.join(dirpath, f)
  graph = {}
  for name, path in modules.items():
    with open(path) as fh:
      tree = ast.parse(fh.read(), path)
    deps = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        deps.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        for a in node.names:
          sub = f"{node.module}.{a.name}"
          deps.add(sub if sub in modules else node.module)
    graph[name] = {d for d in deps if d in modules and d != name}
  return graph


def find_cycle(graph: dict[str, set[str]]):
  """One import cycle as a list of modules, or None."""
  state = {}

  def visit(node, stack):
    state[node] = "open"
    for dep in sorted(graph[node]):
      if state.get(dep) == "open":
        return stack[stack.index(dep):] + [dep]
      if dep not in state:
        found = visit(dep, stack + [dep])
        if found:
          return found
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node, [node])
      if found:
        return found
  return None


def test_no_import_cycles():
  graph = import_graph(os.path.dirname(os.path.abspath(trainer.__file__)))
  assert "r1jax.layout" in graph["r1jax.accumulate"] and "r1jax.trainer" in graph["r1jax.runner"]
  assert find_cycle(graph) is None, find_cycle(graph)
  assert find_cycle(dict(graph, **{"r1jax.layout": {"r1jax.trainer"}})) is not None
