"""Hugging Face checkpoint interop: config.json <-> ModelConfig and safetensors <-> params.

The R1 recipe starts RL from a pretrained base model (DeepSeek-R1 §2.2; the distilled models of
§2.4 are Qwen2.5 and Llama); this module reads such checkpoints from a local directory and writes
trained ones back so that `transformers.AutoModelForCausalLM.from_pretrained` loads them.

Naming map (HF stores nn.Linear weights as [out, in]; r1jax stacks layers on a leading axis L):
  model.embed_tokens.weight                     [V, D]     embed        [V, D]
  model.layers.{i}.input_layernorm.weight       [D]        attn_norm    [L, D]
  model.layers.{i}.self_attn.q_proj.weight      [H*K, D]   wq           [L, D, H, K]
  model.layers.{i}.self_attn.k_proj.weight      [N*K, D]   wk           [L, D, N, K]
  model.layers.{i}.self_attn.v_proj.weight      [N*K, D]   wv           [L, D, N, K]
  model.layers.{i}.self_attn.{q,k,v}_proj.bias  [H*K]      bq, bk, bv   [L, H, K] / [L, N, K]
  model.layers.{i}.self_attn.o_proj.weight      [D, H*K]   wo           [L, H, K, D]
  model.layers.{i}.post_attention_layernorm.weight [D]     mlp_norm     [L, D]
  model.layers.{i}.mlp.{gate,up}_proj.weight    [F, D]     w_gate, w_up [L, D, F]
  model.layers.{i}.mlp.down_proj.weight         [D, F]     w_down       [L, F, D]
  model.norm.weight                             [D]        final_norm   [D]
  lm_head.weight                                [V, D]     lm_head      [D, V] (untied only)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Mapping
from typing import Any, Iterator, Optional

import numpy as np

from r1jax.config import ModelConfig
from r1jax.model import Params, param_shapes

_ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
                    "chat_template.jinja")
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints saved


# ----------------------------------------------------------------------------------------------
# config.json
# ----------------------------------------------------------------------------------------------
def _rope_theta(hf: Mapping[str, Any]) -> float:
  """rope_theta from transformers 4 (`rope_theta`, `rope_scaling`) or 5 (`rope_parameters`)."""
  rope = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  for where, d in (("rope_parameters", rope), ("rope_scaling", scaling)):
    kind = d.get("rope_type", d.get("type")) if isinstance(d, Mapping) else d
    if kind not in (None, "default"):
      raise ValueError(f"config.json {where}={d!r}: only plain RoPE (rope_type 'default') is "
                       "supported, not scaled variants (llama3, yarn, linear, dynamic, ...)")
  return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def _check_no_sliding_window(hf: Mapping[str, Any]) -> None:
  """Qwen2 marks sliding-window layers in `layer_types` (transformers 5) or derives them from
  use_sliding_window / max_window_layers (transformers 4); r1jax attends to the full context."""
  layer_types = hf.get("layer_types")
  if layer_types is None and hf.get("use_sliding_window") and hf.get("sliding_window"):
    num_layers = hf["num_hidden_layers"]
    layer_types = ["sliding_attention" if i >= hf.get("max_window_layers", 28) else "full"
                   for i in range(num_layers)]
  if layer_types and any(t == "sliding_attention" for t in layer_types):
    raise ValueError(f"config.json uses sliding-window attention (sliding_window="
                     f"{hf.get('sliding_window')}, layer_types={layer_types}); not supported")


def config_from_hf(hf_config: Mapping[str, Any], **overrides) -> ModelConfig:
  """A ModelConfig from a transformers config.json dict (model_type 'qwen2' or 'llama').

  The dtype and param_dtype default to the checkpoint's `torch_dtype` / `dtype` when it is
  float32, bfloat16 or float16; `overrides` (any ModelConfig field) win over everything read.
  """
  hf = hf_config
  family = hf.get("model_type")
  if family not in _ARCHITECTURES:
    raise ValueError(f"config.json model_type={family!r} is not supported; expected one of "
                     f"{sorted(_ARCHITECTURES)}")
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"config.json hidden_act={hf['hidden_act']!r}; only 'silu' is supported")
  if hf.get("mlp_bias"):
    raise ValueError("config.json mlp_bias=True is not supported (r1jax's MLP has no biases)")
  _check_no_sliding_window(hf)
  eos = hf.get("eos_token_id")
  if isinstance(eos, (list, tuple)):  # e.g. Llama 3 instruct; HFTokenizer reads the full list.
    eos = eos[0] if eos else None
  fields = dict(
      family=family,
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"],
      num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
      head_dim=hf.get("head_dim"),
      rope_theta=_rope_theta(hf),
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      # transformers' Qwen2 always has q/k/v biases; Llama has them (and one on o_proj) when
      # attention_bias is set.
      qkv_bias=True if family == "qwen2" else bool(hf.get("attention_bias", False)),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      bos_token_id=hf.get("bos_token_id"),
      eos_token_id=eos,
      pad_token_id=hf.get("pad_token_id"),
  )
  if hf.get("max_position_embeddings"):
    fields["max_position_embeddings"] = hf["max_position_embeddings"]
  stored = hf.get("dtype") or hf.get("torch_dtype")
  if stored in ("float32", "bfloat16", "float16"):
    fields.update(dtype=stored, param_dtype=stored)
  return ModelConfig(**{**fields, **overrides})


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
  """A config.json dict that transformers loads as Qwen2ForCausalLM / LlamaForCausalLM."""
  c = config
  if c.family == "qwen2" and not c.qkv_bias:
    raise ValueError("config.family='qwen2' with qkv_bias=False: transformers' Qwen2 always "
                     "has q/k/v biases; use family='llama' for a model without them")
  hf = {
      "architectures": [_ARCHITECTURES[c.family]],
      "model_type": c.family,
      "vocab_size": c.vocab_size,
      "hidden_size": c.hidden_size,
      "intermediate_size": c.intermediate_size,
      "num_hidden_layers": c.num_layers,
      "num_attention_heads": c.num_heads,
      "num_key_value_heads": c.num_kv_heads,
      "head_dim": c.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": c.max_position_embeddings,
      "rms_norm_eps": c.rms_norm_eps,
      "rope_theta": c.rope_theta,
      "rope_scaling": None,
      "tie_word_embeddings": c.tie_embeddings,
      "attention_dropout": 0.0,
      "initializer_range": 0.02,
      "use_cache": True,
      "torch_dtype": c.param_dtype,
      "bos_token_id": c.bos_token_id,
      "eos_token_id": c.eos_token_id,
      "pad_token_id": c.pad_token_id,
  }
  if c.family == "qwen2":
    hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=c.num_layers)
  else:
    hf.update(attention_bias=c.qkv_bias, mlp_bias=False)
  return hf


def generation_config_to_hf(config: ModelConfig) -> dict[str, Any]:
  """generation_config.json: the special ids that transformers' generate() stops / pads on."""
  ids = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
         "pad_token_id": config.pad_token_id}
  return {"_from_model_config": True, **{k: v for k, v in ids.items() if v is not None}}


# ----------------------------------------------------------------------------------------------
# Parameter naming map
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Entry:
  """One HF tensor: where it lives in the r1jax pytree and how its layout differs.

  kind: 'same' (identical layout), 'flat' (HF flattens the trailing axes, e.g. biases),
  'linear{n}' (HF [out, in]; r1jax [*in, *out] with n input axes) or 'zero' (an HF tensor r1jax
  does not have and that must be zero: Llama's o_proj bias). `shape` is r1jax's shape of this
  tensor (per layer for stacked ones).
  """

  hf_name: str
  key: Optional[str]  # top-level key of the params pytree
  layer_key: Optional[str] = None  # key under params["layers"]; `layer` indexes its axis 0
  layer: Optional[int] = None
  kind: str = "same"
  shape: tuple[int, ...] = ()

  @property
  def hf_shape(self) -> tuple[int, ...]:
    if self.kind == "same":
      return self.shape
    if self.kind in ("flat", "zero"):
      return (math.prod(self.shape),)
    n = int(self.kind[len("linear"):])
    return (math.prod(self.shape[n:]), math.prod(self.shape[:n]))

  @property
  def path(self) -> str:
    return self.key if self.layer_key is None else f"layers/{self.layer_key}[{self.layer}]"

  def from_hf(self, w: np.ndarray) -> np.ndarray:
    return w.T.reshape(self.shape) if self.kind.startswith("linear") else w.reshape(self.shape)

  def to_hf(self, p: np.ndarray) -> np.ndarray:
    if self.kind.startswith("linear"):
      return np.ascontiguousarray(p.reshape(self.hf_shape[::-1]).T)
    return np.ascontiguousarray(p.reshape(self.hf_shape))


_LAYER_MAP = {  # r1jax layer key -> (HF name under model.layers.{i}, kind)
    "wq": ("self_attn.q_proj.weight", "linear1"),
    "bq": ("self_attn.q_proj.bias", "flat"),
    "wk": ("self_attn.k_proj.weight", "linear1"),
    "bk": ("self_attn.k_proj.bias", "flat"),
    "wv": ("self_attn.v_proj.weight", "linear1"),
    "bv": ("self_attn.v_proj.bias", "flat"),
    "wo": ("self_attn.o_proj.weight", "linear2"),
    "w_gate": ("mlp.gate_proj.weight", "linear1"),
    "w_up": ("mlp.up_proj.weight", "linear1"),
    "w_down": ("mlp.down_proj.weight", "linear1"),
    "attn_norm": ("input_layernorm.weight", "flat"),
    "mlp_norm": ("post_attention_layernorm.weight", "flat"),
}


def _layout(config: ModelConfig) -> list[_Entry]:
  """Every HF tensor of `config`'s checkpoint, in the order transformers saves them."""
  shapes = param_shapes(config)
  entries = [_Entry("model.embed_tokens.weight", "embed", shape=shapes["embed"])]
  # Llama's attention_bias=True also puts a bias on o_proj; r1jax has none, so it must be zero.
  o_bias = config.family == "llama" and config.qkv_bias
  for i in range(config.num_layers):
    for name, (hf_name, kind) in _LAYER_MAP.items():
      if name in shapes["layers"]:
        entries.append(_Entry(f"model.layers.{i}.{hf_name}", "layers", name, i, kind,
                              shapes["layers"][name][1:]))
      if name == "wo" and o_bias:
        entries.append(_Entry(f"model.layers.{i}.self_attn.o_proj.bias", None, kind="zero",
                              shape=(config.hidden_size,)))
  entries.append(_Entry("model.norm.weight", "final_norm", kind="flat",
                        shape=shapes["final_norm"]))
  if not config.tie_embeddings:
    entries.append(_Entry("lm_head.weight", "lm_head", kind="linear1", shape=shapes["lm_head"]))
  return entries


def params_from_hf_state_dict(state_dict: Mapping[str, np.ndarray], config: ModelConfig) -> Params:
  """r1jax params (host numpy arrays in config.param_dtype) from an HF state dict.

  `state_dict` may be lazy (tensors read on access); each tensor is read once and copied into
  the stacked [L, ...] arrays, so peak memory is the params plus one tensor. Place the result
  on devices with `jax.device_put(params, shardings)`. Raises ValueError naming the missing or
  unexpected tensor, or the one whose shape does not match `config`.
  """
  entries = _layout(config)
  expected = {e.hf_name for e in entries}
  # Tied checkpoints sometimes still store lm_head.weight; it is checked equal to the embedding.
  allowed = expected | ({"lm_head.weight"} if config.tie_embeddings else set())
  for name in state_dict.keys():
    if name not in allowed and not name.endswith(_IGNORED_SUFFIXES):
      raise ValueError(f"unexpected tensor {name!r} in the checkpoint (config: {config})")
  for e in entries:
    if e.hf_name not in state_dict:
      raise ValueError(f"checkpoint is missing tensor {e.hf_name!r} (config: {config})")

  def read(name, shape):
    w = np.asarray(state_dict[name])
    if w.shape != tuple(shape):
      raise ValueError(f"tensor {name!r} has shape {w.shape}; the config expects {shape}")
    return w

  dtype = np.dtype(config.storage_dtype)
  shapes = param_shapes(config)
  params: dict[str, Any] = {"layers": {k: np.empty(s, dtype)
                                       for k, s in shapes["layers"].items()}}
  for e in entries:
    w = read(e.hf_name, e.hf_shape)
    if e.kind == "zero":
      if np.any(w != 0):
        raise ValueError(f"tensor {e.hf_name!r} is non-zero; r1jax's attention has no o_proj "
                         "bias")
    elif e.layer_key is None:
      params[e.key] = e.from_hf(w).astype(dtype)
    else:
      params["layers"][e.layer_key][e.layer] = e.from_hf(w)
  if config.tie_embeddings and "lm_head.weight" in state_dict:
    if not np.array_equal(read("lm_head.weight", shapes["embed"]),
                          state_dict["model.embed_tokens.weight"]):
      raise ValueError("tie_word_embeddings=True but tensor 'lm_head.weight' differs from "
                       "'model.embed_tokens.weight'")
  return params


def _hf_tensors(params: Params, entries: list[_Entry],
                dtype) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, numpy tensor in `dtype`) for each of `entries`, reading one layer at a time."""
  for e in entries:
    if e.kind == "zero":
      yield e.hf_name, np.zeros(e.hf_shape, dtype)
      continue
    try:
      p = params[e.key] if e.layer_key is None else params[e.key][e.layer_key][e.layer]
    except (KeyError, IndexError) as err:
      raise ValueError(f"params has no {e.path} (needed for {e.hf_name!r})") from err
    p = np.asarray(p)  # a jax array is sliced on device first, so only this slice is copied.
    if p.shape != tuple(e.shape):
      raise ValueError(f"param {e.path} has shape {p.shape}; the config expects {e.shape}")
    yield e.hf_name, e.to_hf(p.astype(dtype, copy=False))


def params_to_hf_state_dict(params: Params, config: ModelConfig) -> dict[str, np.ndarray]:
  """An HF state dict (numpy, in config.param_dtype) of r1jax `params`. Tied models have no
  `lm_head.weight`: transformers ties it to the embedding on load."""
  return dict(_hf_tensors(params, _layout(config), np.dtype(config.storage_dtype)))


# ----------------------------------------------------------------------------------------------
# Checkpoint directories
# ----------------------------------------------------------------------------------------------
def _read_raw_tensor(file: str, name: str) -> np.ndarray:
  """One tensor read straight from the safetensors layout (8-byte header size, JSON header,
  data); the fallback for dtypes the installed safetensors cannot hand to numpy (bfloat16)."""
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  dtypes = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32, "F64": np.float64,
            "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
            "BOOL": np.bool_}
  with open(file, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    info = json.loads(f.read(n))[name]
    start, end = info["data_offsets"]
    f.seek(8 + n + start)
    data = f.read(end - start)
  return np.frombuffer(data, dtypes[info["dtype"]]).reshape(info["shape"]).copy()


class _SafetensorsDir(Mapping):
  """A lazy state dict over `model.safetensors` or an index and its shards in `path`."""

  def __init__(self, path: str):
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel
    self._safe_open = safe_open
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
      self._files = {k: os.path.join(path, v) for k, v in weight_map.items()}
    elif os.path.exists(single):
      with safe_open(single, framework="numpy") as f:
        self._files = {k: single for k in f.keys()}
    else:
      raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path!r}")
    for file in sorted(set(self._files.values())):
      if not os.path.exists(file):
        raise FileNotFoundError(f"checkpoint shard {file!r} named in {index!r} does not exist")

  def __getitem__(self, name: str) -> np.ndarray:
    file = self._files[name]
    with self._safe_open(file, framework="numpy") as f:
      try:
        return f.get_tensor(name)
      except (TypeError, ValueError):  # older safetensors: no numpy bfloat16
        return _read_raw_tensor(file, name)

  def __iter__(self):
    return iter(self._files)

  def __len__(self):
    return len(self._files)


def load_hf_config(path: str, **overrides) -> ModelConfig:
  """config_from_hf of `path`/config.json; raises FileNotFoundError naming the missing path."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"HF checkpoint directory {path!r} does not exist")
  file = os.path.join(path, "config.json")
  if not os.path.exists(file):
    raise FileNotFoundError(f"no config.json in HF checkpoint directory {path!r}")
  with open(file) as f:
    return config_from_hf(json.load(f), **overrides)


def load_hf_checkpoint(path: str, *, dtype: Optional[str] = None,
                       param_dtype: Optional[str] = None) -> tuple[ModelConfig, Params]:
  """(config, params) of a local HF checkpoint directory (config.json + safetensors).

  dtype / param_dtype ('float32' | 'bfloat16' | 'float16') default to the checkpoint's stored
  dtype. params are host numpy arrays (see `params_from_hf_state_dict`).
  """
  overrides = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v}
  config = load_hf_config(path, **overrides)
  return config, params_from_hf_state_dict(_SafetensorsDir(path), config)


def save_hf_checkpoint(path: str, config: ModelConfig, params: Params, *,
                       tokenizer_dir: Optional[str] = None,
                       max_shard_bytes: int = 5 * 10**9) -> str:
  """Writes `params` as an HF checkpoint directory that transformers loads; returns `path`.

  Writes config.json, generation_config.json and model.safetensors, or numbered shards of at
  most `max_shard_bytes` (a single larger tensor gets a shard of its own) plus
  model.safetensors.index.json. Tokenizer files found in `tokenizer_dir` are copied alongside.
  """
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  hf_config = config_to_hf(config)
  tokenizer_files = []
  if tokenizer_dir is not None:
    tokenizer_files = [f for f in _TOKENIZER_FILES
                       if os.path.exists(os.path.join(tokenizer_dir, f))]
    if not tokenizer_files:
      raise FileNotFoundError(f"tokenizer_dir {tokenizer_dir!r} holds none of {_TOKENIZER_FILES}")
  dtype = np.dtype(config.storage_dtype)
  shards, size = [[]], 0
  for e in _layout(config):
    nbytes = math.prod(e.hf_shape) * dtype.itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(e)
    size += nbytes
  os.makedirs(path, exist_ok=True)
  names = (["model.safetensors"] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  weight_map, total = {}, 0
  for name, entries in zip(names, shards):
    tensors = dict(_hf_tensors(params, entries, dtype))
    save_file(tensors, os.path.join(path, name), metadata={"format": "pt"})
    weight_map.update({k: name for k in tensors})
    total += sum(t.nbytes for t in tensors.values())
  if len(shards) > 1:
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  for name, content in (("config.json", hf_config),
                        ("generation_config.json", generation_config_to_hf(config))):
    with open(os.path.join(path, name), "w") as f:
      json.dump(content, f, indent=2)
  for f in tokenizer_files:
    shutil.copyfile(os.path.join(tokenizer_dir, f), os.path.join(path, f))
  return path
