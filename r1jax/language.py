"""Language consistency of a chain of thought (DeepSeek-R1 §2.3.2) and readability filters.

R1-Zero's chains of thought mix languages. R1 adds, during reasoning-oriented RL, a language
consistency reward "calculated as the proportion of target language words in the CoT", summed
with the accuracy reward; rejection sampling (§2.3.3) then drops chains of thought "with mixed
languages, long paragraphs, and code blocks". This module measures both.

Words and scripts. A word is a whitespace-separated chunk's letters; a Han, Hiragana or Katakana
character is a word of its own (those scripts put no spaces between words). Each letter's Unicode
script (Latin, Han, Cyrillic, ...) comes from its character name, so no dependency is needed
(tests check it against the `regex` module's \\p{Script=...}). A word counts for the target
language when all its letters are in the language's scripts; a word mixing scripts ("hеllo" with
a Cyrillic "е") does not. Chunks without letters (numbers, equations like "44+19=63") are
language-neutral: they count for neither side.

The character-level miniature. A char tokenizer over printable ASCII can only write Latin, so
script detection alone always scores 1.0 there. Its analog of "another language" is text outside
the language its cold-start traces are written in: misspelled words and letter soup ("tqe",
"wiat"). With a `vocabulary` (the words of those readable traces, `vocabulary_from_texts`), a
word counts for the target only if it is also in the vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import unicodedata
from typing import Iterable, Optional, Sequence

from r1jax import rewards

# Scripts of the languages a target may name. Japanese writes kanji (Han) and both kana; Korean
# mostly Hangul with some Hanja.
LANGUAGE_SCRIPTS = {
    "en": ("Latin",), "fr": ("Latin",), "de": ("Latin",), "es": ("Latin",),
    "zh": ("Han",), "ja": ("Han", "Hiragana", "Katakana"), "ko": ("Hangul", "Han"),
    "ru": ("Cyrillic",), "uk": ("Cyrillic",), "el": ("Greek",), "ar": ("Arabic",),
    "he": ("Hebrew",), "hi": ("Devanagari",), "th": ("Thai",),
}
# Scripts written without spaces between words: each character is counted as one word.
UNSPACED_SCRIPTS = frozenset({"Han", "Hiragana", "Katakana"})

# Character-name prefixes whose script is not the name's first word.
_NAME_PREFIXES = (
    ("CJK UNIFIED IDEOGRAPH", "Han"), ("CJK COMPATIBILITY IDEOGRAPH", "Han"),
    ("IDEOGRAPHIC", "Han"), ("VERTICAL IDEOGRAPHIC", "Han"), ("OLD CHINESE", "Han"),
    ("FULLWIDTH LATIN", "Latin"), ("HALFWIDTH KATAKANA", "Katakana"),
    ("HALFWIDTH HANGUL", "Hangul"), ("HANGUL", "Hangul"), ("HENTAIGANA", "Hiragana"),
    ("FEMININE ORDINAL", "Latin"), ("MASCULINE ORDINAL", "Latin"), ("KELVIN", "Latin"),
    ("ANGSTROM", "Latin"), ("OHM", "Greek"), ("MATHEMATICAL", "Common"),
)
# Names that describe a letter's form first ("MODIFIER LETTER SMALL GREEK GAMMA"): the script is
# a later word of the name, if any.
_FORM_PREFIXES = ("MODIFIER LETTER", "SUPERSCRIPT", "SUBSCRIPT", "TURNED", "ROMAN NUMERAL")
_SCRIPT_WORDS = ("LATIN", "GREEK", "CYRILLIC", "GEORGIAN", "ARMENIAN", "HEBREW", "ARABIC")


@functools.lru_cache(maxsize=65536)
def char_script(ch: str) -> str:
  """Unicode script of one character: "Latin", "Han", "Cyrillic", ... for letters, "Inherited"
  for combining marks (they take the script of the letter they attach to), "Common" for digits,
  punctuation, symbols and spaces, "Unknown" for letters without a name."""
  category = unicodedata.category(ch)
  if category[0] == "M":
    return "Inherited"
  if category[0] != "L":
    return "Common"
  name = unicodedata.name(ch, "")
  if not name:
    return "Unknown"
  for prefix, script in _NAME_PREFIXES:
    if name.startswith(prefix):
      return script
  if name.startswith(_FORM_PREFIXES):
    parts = name.split()
    named = [w for w in _SCRIPT_WORDS if w in parts]
    if named:
      return named[0].capitalize()
    return "Latin" if "SMALL" in parts or "CAPITAL" in parts else "Common"
  return name.split(" ", 1)[0].capitalize()


@dataclasses.dataclass(frozen=True)
class Word:
  text: str
  scripts: frozenset  # scripts of its letters ("Inherited" marks dropped)


def words(text: str) -> list[Word]:
  """The words of `text` in order (see the module docstring): letters of each whitespace chunk,
  with Han / kana characters split off as one-character words. Letter-free chunks give none."""
  out = []
  for chunk in text.split():
    letters, scripts = [], set()
    for ch in chunk:
      script = char_script(ch)
      if script in UNSPACED_SCRIPTS:
        out.append(Word(ch, frozenset({script})))
      elif script == "Inherited":
        if letters:
          letters.append(ch)
      elif script != "Common":
        letters.append(ch)
        scripts.add(script)
    if letters:
      out.append(Word("".join(letters), frozenset(scripts)))
  return out


def target_scripts(language: str) -> tuple[str, ...]:
  """Scripts of a language code ("en", "zh", ...) or of a script name ("Latin"); raises naming
  `language` when it is neither."""
  if language in LANGUAGE_SCRIPTS:
    return LANGUAGE_SCRIPTS[language]
  known = {s for v in LANGUAGE_SCRIPTS.values() for s in v}
  if language.capitalize() in known:
    return (language.capitalize(),)
  raise ValueError(f"unknown language={language!r}; expected a code in {sorted(LANGUAGE_SCRIPTS)}"
                   f" or a script in {sorted(known)}")


_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


def chain_of_thought(response: str) -> str:
  """The <think> part of a response: between <think> and </think>; up to </think> or from
  <think> when only one is present (a truncated or prefixed response); else the whole text."""
  start = response.find(_THINK_OPEN)
  start = 0 if start < 0 else start + len(_THINK_OPEN)
  end = response.find(_THINK_CLOSE, start)
  return response[start:] if end < 0 else response[start:end]


def is_target_word(word: Word, scripts: Sequence[str],
                   vocabulary: Optional[frozenset] = None) -> bool:
  if not word.scripts or not word.scripts <= set(scripts):
    return False
  return vocabulary is None or word.text.lower() in vocabulary


def language_consistency(text: str, language: str = "en",
                         vocabulary: Optional[frozenset] = None) -> float:
  """Share of the words of `text` that are target-language words, in [0, 1].

  Args:
    text: the chain of thought (use `chain_of_thought(response)` for a full response).
    language: a code of LANGUAGE_SCRIPTS or a script name.
    vocabulary: lowercase words; if given, a word must also be in it (the char-level miniature).

  Returns:
    target words / words; 1.0 for text with no words but other content (pure math is
    language-neutral); 0.0 for empty text (there is no chain of thought to reward).
  """
  scripts = target_scripts(language)
  ws = words(text)
  if not ws:
    return 1.0 if text.strip() else 0.0
  return sum(is_target_word(w, scripts, vocabulary) for w in ws) / len(ws)


def vocabulary_from_texts(texts: Iterable[str], language: str = "en",
                          min_count: int = 1) -> frozenset:
  """Lowercased target-script words that occur at least `min_count` times in the chains of
  thought of `texts` (the cold-start traces): the miniature's target language."""
  scripts = target_scripts(language)
  counts: dict[str, int] = {}
  for t in texts:
    for w in words(chain_of_thought(t)):
      if w.scripts and w.scripts <= set(scripts):
        counts[w.text.lower()] = counts.get(w.text.lower(), 0) + 1
  return frozenset(w for w, c in counts.items() if c >= min_count)


# ----------------------------------------------------------------------------------------------
# Reward components (r1jax.rewards registry). fn(response, problem) -> float; module-level or a
# partial of one, so the process executor can pickle them by reference.
# ----------------------------------------------------------------------------------------------
def language_consistency_reward(response: str, problem, language: Optional[str] = None,
                                vocabulary: Optional[frozenset] = None) -> float:
  """§2.3.2's reward: language_consistency of the response's chain of thought. The target is
  `language`, else the problem's `meta["language"]`, else English."""
  if language is None:
    meta = getattr(problem, "meta", None) or {}
    language = meta.get("language", "en")
  return language_consistency(chain_of_thought(response), language, vocabulary)


rewards.register_reward_fn("language_consistency", language_consistency_reward)

_REGISTERED: dict[str, object] = {}


def register_language_reward(language: str = "en",
                             vocabulary: Optional[Iterable[str]] = None) -> str:
  """Registers the language consistency reward for `language` (and `vocabulary`, if given) and
  returns its name for RewardConfig.extra. Without either, the name is "language_consistency".
  Idempotent: the same arguments give the same name."""
  target_scripts(language)
  if language == "en" and vocabulary is None:
    return "language_consistency"
  vocab = None if vocabulary is None else frozenset(w.lower() for w in vocabulary)
  digest = hashlib.sha256(repr((language, sorted(vocab or ()))).encode()).hexdigest()[:10]
  name = f"language_consistency_{language}_{digest}"
  if name not in _REGISTERED:
    fn = functools.partial(language_consistency_reward, language=language, vocabulary=vocab)
    _REGISTERED[name] = rewards.register_reward_fn(name, fn)
  return name


# ----------------------------------------------------------------------------------------------
# Readability filters of rejection sampling (§2.3.3).
# ----------------------------------------------------------------------------------------------
_CODE_BLOCK = re.compile(r"```")


def has_code_block(text: str) -> bool:
  return bool(_CODE_BLOCK.search(text))


def longest_paragraph(text: str) -> int:
  """Characters in the longest blank-line-separated paragraph of `text`."""
  return max((len(p) for p in re.split(r"\n\s*\n", text)), default=0)
