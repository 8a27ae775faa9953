"""Device meshes and shardings for the trainer and the sampler (GSPMD through `jax.jit`).

One mesh of three named axes, ("data", "fsdp", "tensor"), and one rule table that maps the
logical axis names of `model.param_axes` (and of activations: `batch`, `length`) onto mesh axes:

  data    pure data parallelism: parameters replicated, the batch split.
  fsdp    ZeRO-3 / FSDP: the batch split AND every parameter's `embed` dimension split, so each
          device holds 1/fsdp of the parameters and optimizer state; XLA all-gathers weights
          for each matmul and reduce-scatters gradients.
  tensor  Megatron tensor parallelism: heads, kv heads, mlp and vocab split.

A dimension that a rule's mesh axes do not divide (e.g. 2 kv heads on tensor=4, or an odd
vocabulary) keeps the longest prefix of those axes that divides it, down to full replication
of that dimension, so every preset runs on every mesh. Mesh axes are `AxisType.Auto`: the
shardings of the jitted functions' inputs and outputs are given, and XLA's sharding
propagation partitions everything in between.

Several hosts: call `initialize_distributed` first; each process then loads `host_slice` of the
global batch and `put_batch` assembles the global arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
from typing import Any, Callable, Optional, Sequence, Union

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from r1jax import model
from r1jax.config import ModelConfig

log = logging.getLogger("r1jax")

MESH_AXES = ("data", "fsdp", "tensor")
MeshAxes = Union[None, str, tuple[str, ...]]
Rules = tuple[tuple[str, MeshAxes], ...]

# Logical axis -> mesh axes. Batch rows are split over every data-parallel device (data and
# fsdp); `embed` over fsdp (FSDP shards every matrix along the hidden size); the head, mlp and
# vocab dimensions over tensor (Megatron-style column/row parallel matmuls).
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("head_dim", None),
    ("norm", None),
    ("length", None),
)

# One layer's decode cache k or v [R,N,S,K] (model.decode_step).
CACHE_AXES = ("batch", "kv_heads", "length", "head_dim")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape (-1: the devices left over; at most one) and the logical-axis rule table."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  rules: Rules = DEFAULT_RULES

  def __post_init__(self):
    sizes = dict(data=self.data, fsdp=self.fsdp, tensor=self.tensor)
    for name, size in sizes.items():
      if not isinstance(size, (int, np.integer)) or (size < 1 and size != -1):
        raise ValueError(f"--mesh_{name}={size!r} must be a positive int or -1 (the rest)")
    if sum(s == -1 for s in sizes.values()) > 1:
      raise ValueError(f"at most one of --mesh_data/--mesh_fsdp/--mesh_tensor may be -1, got "
                       f"{sizes}")
    for name, target in self.rules:
      for axis in _as_tuple(target):
        if axis not in MESH_AXES:
          raise ValueError(f"rule {name!r} -> {target!r} names mesh axis {axis!r}; expected "
                           f"one of {MESH_AXES}")

  def axis_sizes(self, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) with -1 resolved; raises if the product is not `num_devices`."""
    sizes = [self.data, self.fsdp, self.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if num_devices % known:
        raise ValueError(f"--mesh_data/--mesh_fsdp/--mesh_tensor = {tuple(sizes)}: the fixed "
                         f"sizes (product {known}) do not divide the {num_devices} devices")
      sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
      raise ValueError(f"--mesh_data/--mesh_fsdp/--mesh_tensor = {tuple(sizes)} has "
                       f"{math.prod(sizes)} devices but there are {num_devices}; make the "
                       "product equal the device count (or set one of them to -1)")
    return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh over `devices` (default: all devices of all hosts)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = cfg.axis_sizes(len(devices))
  return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


# ----------------------------------------------------------------------------------------------
# Logical axes -> shardings
# ----------------------------------------------------------------------------------------------
def _as_tuple(target: MeshAxes) -> tuple[str, ...]:
  if target is None:
    return ()
  return (target,) if isinstance(target, str) else tuple(target)


def _rule(name: str, rules: Rules) -> tuple[str, ...]:
  for logical, target in rules:
    if logical == name:
      return _as_tuple(target)
  raise ValueError(f"logical axis {name!r} has no rule in MeshConfig.rules "
                   f"(rules name {[r[0] for r in rules]})")


@functools.lru_cache(maxsize=None)
def _log_fallback(name, size, wanted, kept):
  log.info("sharding: dimension %r of size %d is not divisible over mesh axes %s; sharded over "
           "%s instead", name, size, wanted, kept or "nothing (replicated)")


def logical_to_spec(axes: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh,
                    rules: Rules = DEFAULT_RULES) -> P:
  """PartitionSpec of one array from its logical axis names and shape.

  Each dimension takes the longest prefix of its rule's mesh axes whose size product divides
  it (size-1 mesh axes are dropped; a mesh axis already used by an earlier dimension is
  skipped, since one mesh axis can split only one dimension). `None` axes are replicated.
  """
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {tuple(axes)} and shape {tuple(shape)} differ in rank")
  used: set[str] = set()
  spec = []
  for name, size in zip(axes, shape):
    wanted = () if name is None else tuple(
        a for a in _rule(name, rules) if mesh.shape[a] > 1 and a not in used)
    kept, prod = [], 1
    for a in wanted:
      if size % (prod * mesh.shape[a]):
        break
      kept.append(a)
      prod *= mesh.shape[a]
    if len(kept) < len(wanted):
      _log_fallback(name, int(size), wanted, tuple(kept))
    used.update(kept)
    spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  while spec and spec[-1] is None:  # P('x', None) == P('x'); the short form reads better
    spec.pop()
  return P(*spec)


def _is_axes(x) -> bool:
  return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def logical_to_sharding(axes_tree, shapes_tree, mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """Tree of NamedSharding from a tree of logical axes and a matching tree of shapes.

  shapes_tree leaves may be shape tuples (`model.param_shapes`) or anything with `.shape`
  (arrays, jax.ShapeDtypeStruct).
  """
  def one(axes, shape):
    return NamedSharding(mesh, logical_to_spec(axes, getattr(shape, "shape", shape), mesh, rules))

  return jax.tree.map(one, axes_tree, shapes_tree, is_leaf=_is_axes)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_shardings(config: ModelConfig, mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """Shardings of `model.init_params(config, ...)`, a tree shaped like the params."""
  return logical_to_sharding(model.param_axes(config), model.param_shapes(config), mesh, rules)


def train_state_shardings(config: ModelConfig, init_state_fn: Callable, mesh: Mesh,
                          rules: Rules = DEFAULT_RULES):
  """Shardings of `init_state_fn(params)` (e.g. GRPOTrainer.init_state) for `config`'s params,
  found from shapes alone (jax.eval_shape): nothing is allocated."""
  params = jax.eval_shape(functools.partial(model.init_params, config), jax.random.PRNGKey(0))
  state = jax.eval_shape(init_state_fn, params)
  return state_shardings(state, mesh, rules, model.param_axes(config))


def state_shardings(state, mesh: Mesh, rules: Rules, param_axes, params_key: str = "params"):
  """Shardings of a whole train state (trainer.init_state): a tree shaped like `state`.

  Every subtree with the structure and leaf shapes of `state[params_key]` (the params, the
  reference params, Adam's mu and nu inside the optax state) gets the params' shardings; every
  other leaf (step counters, PRNG key, data position) is replicated. `state` may hold arrays or
  jax.ShapeDtypeStruct (from jax.eval_shape), so the shardings exist before the state does.
  """
  params = state[params_key]
  treedef = jax.tree.structure(params)
  shapes = [np.shape(x) for x in jax.tree.leaves(params)]
  sh = logical_to_sharding(param_axes, params, mesh, rules)

  def like_params(x) -> bool:
    if jax.tree.structure(x) != treedef:
      return False
    return [np.shape(y) for y in jax.tree.leaves(x)] == shapes

  leaves, outer = jax.tree.flatten(state, is_leaf=like_params)
  out = [sh if like_params(x) else replicated(mesh) for x in leaves]
  return jax.tree.unflatten(outer, out)


def batch_spec(rows: int, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> P:
  """Spec of a [rows, ...] array: rows over the `batch` rule's axes (data, fsdp)."""
  return logical_to_spec(("batch",), (rows,), mesh, rules)


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES,
                   rows: Optional[int] = None) -> NamedSharding:
  """NamedSharding of [B, ...] arrays, rows over (data, fsdp).

  Without `rows` the full (data, fsdp) split is returned (B must be divisible by data * fsdp);
  with it, the split falls back as for parameters when B is not divisible. Being a single
  sharding, it is a valid prefix for a whole dict of [B, ...] arrays in jit's in_shardings.
  """
  if rows is None:
    rows = math.prod(mesh.shape[a] for a in _rule("batch", rules))
  return NamedSharding(mesh, batch_spec(rows, mesh, rules))


def cache_sharding(config: ModelConfig, rows: int, length: int, mesh: Mesh,
                   rules: Rules = DEFAULT_RULES) -> NamedSharding:
  """Sharding of each layer's decode cache k and v [R,N,S,K]: rows over (data, fsdp), kv heads
  over tensor when it divides them."""
  shape = (rows, config.num_kv_heads, length, config.head_dim)
  return NamedSharding(mesh, logical_to_spec(CACHE_AXES, shape, mesh, rules))


# ----------------------------------------------------------------------------------------------
# Placing data
# ----------------------------------------------------------------------------------------------
def shard_params(params, shardings):
  """device_put of a tree onto a matching tree of shardings (params, a whole state, ...)."""
  return jax.device_put(params, shardings)


def init_params_sharded(config: ModelConfig, key: jax.Array, mesh: Mesh,
                        rules: Rules = DEFAULT_RULES, init_std: float = 0.02):
  """model.init_params created directly in its shards: no device ever holds the whole model."""
  init = jax.jit(model.init_params, static_argnums=(0, 2),
                 out_shardings=param_shardings(config, mesh, rules))
  return init(config, key, init_std)


def put_batch(batch, mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """A tree of [B, ...] arrays -> global arrays with rows over (data, fsdp), as the jitted
  functions below take them (falling back as `batch_sharding` does for odd B).

  One process: `batch` is the global batch. Several processes: each passes its own host rows
  (`host_slice` of the global batch; the processes must split the data-parallel devices,
  i.e. tensor parallelism stays within a host) and the global arrays are assembled without any
  host holding all of them; jax.Arrays are taken as global already and only resharded.
  """
  n = jax.process_count()

  def one(x):
    if n == 1 or isinstance(x, jax.Array):  # already global (or one process): (re)shard it
      shape = np.shape(x)
      return jax.device_put(x, batch_sharding(mesh, rules, shape[0]) if shape else
                            replicated(mesh))
    x = np.asarray(x)
    global_shape = (x.shape[0] * n,) + x.shape[1:]
    sharding = batch_sharding(mesh, rules, global_shape[0])
    return jax.make_array_from_process_local_data(sharding, x, global_shape)

  return jax.tree.map(one, batch)


# ----------------------------------------------------------------------------------------------
# Jitted functions with shardings
# ----------------------------------------------------------------------------------------------
def shard_update_step(step_fn: Callable, param_sh, opt_sh, mesh: Mesh,
                      rules: Rules = DEFAULT_RULES, donate: bool = True) -> Callable:
  """(params, opt_state, batch) -> (params, opt_state, metrics) jitted over the mesh.

  `step_fn` is trainer.make_update_step's step (jitted or not; a jitted one is inlined).
  params/opt_state keep their shardings (`param_sh`, `opt_sh`, e.g. from `state_shardings`)
  and are donated; the batch (host numpy or device arrays) is put row-sharded; metrics come
  back replicated. One compilation per batch shape. A step with an `on_mesh` method
  (accumulate.BucketedUpdateStep, host-driven over several jitted parts) jits its parts itself.
  """
  if hasattr(step_fn, "on_mesh"):
    return step_fn.on_mesh(param_sh, opt_sh, mesh, rules)
  jitted = jax.jit(step_fn, in_shardings=(param_sh, opt_sh, None),
                   out_shardings=(param_sh, opt_sh, replicated(mesh)),
                   donate_argnums=(0, 1) if donate else ())

  def step(params, opt_state, batch):
    return jitted(params, opt_state, put_batch(batch, mesh, rules))

  step.jitted = jitted  # for .lower(...) (memory analysis in the benchmark)
  return step


def shard_logprob_fn(logprob_fn: Callable, param_sh, mesh: Mesh,
                     rules: Rules = DEFAULT_RULES) -> Callable:
  """(params, batch) -> [B,N] completion log-probs (trainer.make_logprob_fn), row-sharded.
  A pass with an `on_mesh` method (accumulate.BucketedLogprobFn) jits its parts itself."""
  if hasattr(logprob_fn, "on_mesh"):
    return logprob_fn.on_mesh(param_sh, mesh, rules)
  @functools.lru_cache(maxsize=None)
  def compiled(rows):
    return jax.jit(logprob_fn, in_shardings=(param_sh, None),
                   out_shardings=batch_sharding(mesh, rules, rows))

  def fn(params, batch):
    batch = put_batch(batch, mesh, rules)
    return compiled(jax.tree.leaves(batch)[0].shape[0])(params, batch)

  return fn


def shard_generate(config: ModelConfig, sampling_cfg, param_sh, mesh: Mesh,
                   rules: Rules = DEFAULT_RULES, cache_dtype=None) -> Callable:
  """sampling.generate jitted over the mesh: (params, prompt_tokens [B,P], prompt_mask [B,P],
  key) -> SampleOutput with B*G rows. Prompts and outputs are row-sharded, the key replicated,
  and the KV cache is pinned to `cache_sharding` (rows over data/fsdp, kv heads over tensor):
  left to itself, XLA keeps a whole copy of the cache on every data-parallel device."""
  from r1jax import sampling  # pylint: disable=import-outside-toplevel

  if sampling_cfg.attention != "xla":
    # A Pallas kernel is one opaque call to the partitioner: it would gather the sharded cache.
    raise ValueError(f"attention={sampling_cfg.attention!r} (R1JAX_SAMPLER_ATTENTION) runs on "
                     "one device only; a mesh needs attention='xla'")
  # Without sampling.generate's `cache_sharding` argument the results are the same, but each
  # data-parallel device holds (and updates) the whole cache.
  has_hook = "cache_sharding" in inspect.signature(sampling.generate).parameters

  @functools.lru_cache(maxsize=None)
  def compiled(b, p):
    r = b * sampling_cfg.num_samples
    kw = dict(cache_dtype=cache_dtype)
    if has_hook:
      kw["cache_sharding"] = cache_sharding(config, r, p + sampling_cfg.max_new_tokens - 1, mesh,
                                            rules)

    def fn(params, prompt_tokens, prompt_mask, key):
      return sampling.generate(params, config, prompt_tokens, prompt_mask, key, sampling_cfg,
                               **kw)

    prompts = batch_sharding(mesh, rules, b)
    return jax.jit(fn, in_shardings=(param_sh, prompts, prompts, replicated(mesh)),
                   out_shardings=batch_sharding(mesh, rules, r),
                   compiler_options=sampling.COMPILER_OPTIONS)

  def generate(params, prompt_tokens, prompt_mask, key):
    prompt_tokens, prompt_mask = put_batch((prompt_tokens, prompt_mask), mesh, rules)
    b, p = prompt_tokens.shape
    return compiled(b, p)(params, prompt_tokens, prompt_mask, key)

  generate.compiled = compiled  # compiled(b, p).lower(...): the benchmark and tests inspect it
  return generate


# ----------------------------------------------------------------------------------------------
# Several hosts
# ----------------------------------------------------------------------------------------------
def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: int = 1, process_id: int = 0) -> None:
  """jax.distributed.initialize from the --coordinator_address/--num_processes/--process_id
  flags; nothing to do for one process. Call before any other JAX call."""
  if num_processes < 1:
    raise ValueError(f"--num_processes={num_processes} must be >= 1")
  if num_processes == 1:
    return
  if not coordinator_address:
    raise ValueError("--coordinator_address (host:port of process 0) is required when "
                     f"--num_processes={num_processes} > 1")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} must be in [0, --num_processes="
                     f"{num_processes})")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def host_slice(global_batch_rows: int, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> slice:
  """The rows of a global batch that this process loads: the contiguous block of 1/n of them.

  This matches `put_batch` for meshes built by `make_mesh`, whose devices are ordered by
  process, so each process's devices hold one contiguous block of the rows. Keep the rows per
  process a multiple of G (num_generations) so that each group of completions, whose
  advantages are normalized together (Eq. 3), lives on one host.
  """
  n = jax.process_count() if num_processes is None else num_processes
  i = jax.process_index() if process_id is None else process_id
  if global_batch_rows % n:
    raise ValueError(f"the global batch of {global_batch_rows} rows is not divisible by the "
                     f"{n} processes")
  per = global_batch_rows // n
  return slice(i * per, (i + 1) * per)


def mean_across_hosts(metrics: dict) -> dict:
  """Means of host-side scalar metrics (rewards, timings) over processes; identity for one."""
  if jax.process_count() == 1:
    return dict(metrics)
  gathered = multihost_utils.process_allgather(
      {k: np.asarray(v, np.float64) for k, v in metrics.items()})
  return {k: float(np.mean(v)) for k, v in gathered.items()}
