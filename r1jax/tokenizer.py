"""Tokenizers with one interface: a character tokenizer for synthetic tasks and a wrapper of a
Hugging Face `tokenizer.json` (through the `tokenizers` library)."""

from __future__ import annotations

import json
import os
import re
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

  def token_bytes(self) -> tuple[bytes, ...]:
    """[vocab_size] the UTF-8 bytes each id adds to decoded text (b"" for the special ids)."""
    return (b"",) * 4 + tuple(c.encode() for c in self._chars)


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
    self._token_bytes = None

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids = self._tok.encode(text, add_special_tokens=False).ids
    return [self.bos_id] + ids if add_bos and self.bos_id is not None else ids

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

  @property
  def eos_ids(self) -> tuple[int, ...]:
    return self._eos_ids

  def token_bytes(self) -> tuple[bytes, ...]:
    """[vocab_size] the UTF-8 bytes each id adds to decoded text (b"" for special tokens, which
    `decode` drops). Computed once (about a second for a 150k vocabulary)."""
    if self._token_bytes is None:
      self._token_bytes = _hf_token_bytes(self._tok)
    return self._token_bytes


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character map, the alphabet of byte-level BPE vocabularies."""
  printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
  chars, extra = {}, 0
  for b in range(256):
    if b in printable:
      chars[b] = chr(b)
    else:
      chars[b] = chr(256 + extra)
      extra += 1
  return chars


def _decoder_types(spec) -> set:
  """The `type` names in a tokenizer.json decoder spec (Sequence decoders nest)."""
  if isinstance(spec, dict):
    return {spec.get("type")} | set().union(*(_decoder_types(v) for v in spec.values()))
  if isinstance(spec, list):
    return set().union(*(_decoder_types(v) for v in spec))
  return set()


def _hf_token_bytes(tok) -> tuple[bytes, ...]:
  """The bytes each id of a `tokenizers.Tokenizer` adds to decoded text.

  Byte-level vocabularies (GPT-2, Qwen, SmolLM) map their characters back to bytes, so a token
  that holds part of a UTF-8 character gets its exact bytes. Byte-fallback tokens `<0xNN>` are
  byte NN. Any other token is decoded after a fixed prefix and the prefix's text removed, which
  keeps the word-start space of SentencePiece-style tokens (as transformers' StopStringCriteria).
  Added tokens decode to their text, special ones to nothing.
  """
  spec = json.loads(tok.to_str())
  kinds = _decoder_types(spec.get("decoder"))
  added = {a["id"]: a for a in spec.get("added_tokens", [])}
  size = tok.get_vocab_size(with_added_tokens=True)
  out: list = [None] * size
  for i, a in added.items():
    if i < size:
      out[i] = b"" if a.get("special") else a["content"].encode()
  if "ByteLevel" in kinds:
    byte_of = {c: b for b, c in _bytes_to_unicode().items()}
    for i in range(size):
      token = tok.id_to_token(i) if out[i] is None else None
      if token is not None and all(c in byte_of for c in token):
        out[i] = bytes(byte_of[c] for c in token)
  if "ByteFallback" in kinds:
    for i in range(size):
      token = tok.id_to_token(i) if out[i] is None else None
      if token is not None and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
        out[i] = bytes([int(token[3:5], 16)])
  rest = [i for i in range(size) if out[i] is None]
  if rest:
    prefix = tok.encode("abcdef", add_special_tokens=False).ids
    base = tok.decode(prefix, skip_special_tokens=True)
    texts = tok.decode_batch([prefix + [i] for i in rest], skip_special_tokens=True)
    for i, text in zip(rest, texts):
      out[i] = text[len(base):].encode() if text.startswith(base) else text.encode()
  return tuple(out)

def load_tokenizer(spec: str):
  """'char' -> CharTokenizer; a directory or tokenizer.json path -> HFTokenizer."""
  if spec == "char":
    return CharTokenizer()
  if not os.path.exists(spec):
    raise FileNotFoundError(f"tokenizer {spec!r}: not 'char' and no such file or directory")
  return HFTokenizer(spec)
