"""Tokenizers with one interface: a character tokenizer for synthetic tasks and a wrapper of a
Hugging Face `tokenizer.json` (through the `tokenizers` library)."""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence


class CharTokenizer:
  """Printable ASCII and newline, one id each, after four special ids.

  ids: 0 <pad>, 1 <bos>, 2 <eos>, 3 <unk>, then '\\n' and chr(32)..chr(126). 100 ids in all; the
  `tiny`/`small`/`medium` model presets round the vocabulary up to 128.
  """

  pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3
  _chars = "\n" + "".join(chr(i) for i in range(32, 127))

  def __init__(self):
    self._to_id = {c: i + 4 for i, c in enumerate(self._chars)}
    self.vocab_size = 4 + len(self._chars)

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids = [self._to_id.get(c, self.unk_id) for c in text]
    return [self.bos_id] + ids if add_bos else ids

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    out = []
    for i in ids:
      i = int(i)
      if i >= 4 and i < self.vocab_size:
        out.append(self._chars[i - 4])
      elif not skip_special:
        out.append(["<pad>", "<bos>", "<eos>", "<unk>"][i] if i < 4 else "<unk>")
    return "".join(out)

  @property
  def eos_ids(self) -> tuple[int, ...]:
    return (self.eos_id,)


class HFTokenizer:
  """A Hugging Face fast tokenizer read from a local `tokenizer.json` with `tokenizers`.

  Special ids come from `tokenizer_config.json` / `generation_config.json` / `config.json` in the
  same directory when present.
  """

  def __init__(self, path: str):
    from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.exists(file):
      raise FileNotFoundError(f"no tokenizer.json at {file!r}")
    self._tok = Tokenizer.from_file(file)
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    meta = {}
    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
      f = os.path.join(directory, name)
      if os.path.exists(f):
        with open(f) as fh:
          meta[name] = json.load(fh)
    tc = meta.get("tokenizer_config.json", {})

    def token_id(tok) -> Optional[int]:
      if isinstance(tok, dict):
        tok = tok.get("content")
      return self._tok.token_to_id(tok) if tok else None

    eos = [token_id(tc.get("eos_token"))]
    for name in ("generation_config.json", "config.json"):
      e = meta.get(name, {}).get("eos_token_id")
      eos += e if isinstance(e, list) else [e]
    self._eos_ids = tuple(dict.fromkeys(i for i in eos if i is not None))
    self.eos_id = self._eos_ids[0] if self._eos_ids else None
    self.bos_id = token_id(tc.get("bos_token")) or meta.get("config.json", {}).get("bos_token_id")
    pad = token_id(tc.get("pad_token"))
    self.pad_id = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids = self._tok.encode(text, add_special_tokens=False).ids
    return [self.bos_id] + ids if add_bos and self.bos_id is not None else ids

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

  @property
  def eos_ids(self) -> tuple[int, ...]:
    return self._eos_ids


def load_tokenizer(spec: str):
  """'char' -> CharTokenizer; a directory or tokenizer.json path -> HFTokenizer."""
  if spec == "char":
    return CharTokenizer()
  if not os.path.exists(spec):
    raise FileNotFoundError(f"tokenizer {spec!r}: not 'char' and no such file or directory")
  return HFTokenizer(spec)
