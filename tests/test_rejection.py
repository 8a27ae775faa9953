"""Language consistency (R1 §2.3.2) and the rejection-sampling filter (§2.3.3): what is kept and
what is dropped, checked on hand-made completions and on samples of a memorized policy."""

import pickle
import unicodedata

import jax
import numpy as np
import pytest
import regex

from r1jax import eval as r1eval
from r1jax import language, model, rewards, sft
from r1jax.config import get_config
from r1jax.tasks import Problem
from r1jax.tokenizer import CharTokenizer

# ----------------------------------------------------------------------------------------------
# Scripts and words
# ----------------------------------------------------------------------------------------------
SCRIPTS = ("Latin", "Greek", "Cyrillic", "Han", "Hiragana", "Katakana", "Hangul", "Arabic",
           "Hebrew", "Devanagari", "Thai")
BLOCKS = [(0x41, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x4E00, 0x9FFF), (0x3040, 0x30FF),
          (0xAC00, 0xD7A3), (0x600, 0x6FF), (0x590, 0x5FF), (0x900, 0x97F), (0xE00, 0xE7F)]


def _reference_script(ch):
  """The `regex` module's Unicode Script property (an independent implementation)."""
  for s in SCRIPTS:
    if regex.match(rf"\p{{Script={s}}}", ch):
      return s
  return None


def test_char_script_agrees_with_the_unicode_script_property():
  checked = 0
  for lo, hi in BLOCKS:
    for cp in range(lo, hi + 1, 7):  # every 7th code point of each block
      ch = chr(cp)
      if unicodedata.category(ch)[0] != "L":
        assert language.char_script(ch) in ("Common", "Inherited"), hex(cp)
        continue
      ref = _reference_script(ch)
      if ref is not None:
        assert language.char_script(ch) == ref, (hex(cp), unicodedata.name(ch))
        checked += 1
  assert checked > 3000


def test_words_and_consistency_by_hand():
  assert [w.text for w in language.words("Let's try 44+19=63, then check x.")] == [
      "Lets", "try", "then", "check", "x"]
  assert language.language_consistency("we try 3+4 then check") == 1.0
  assert language.language_consistency("we 试 try") == pytest.approx(2 / 3)  # Han char: a word
  assert language.language_consistency("hеllo world") == 0.5  # Cyrillic "е" mixes scripts
  assert language.language_consistency("Проверим: 3 + 4 = 7, ok") == 0.5
  assert language.language_consistency("3+4=7") == 1.0  # math is language-neutral
  assert language.language_consistency("  ") == 0.0  # no chain of thought at all
  assert language.language_consistency("我们 try", "zh") == pytest.approx(2 / 3)
  assert language.language_consistency("café naïve", "fr") == 1.0  # combining marks too
  assert language.language_consistency("cafe\u0301", "en") == 1.0
  vocab = frozenset({"we", "try", "then"})
  assert language.language_consistency("we try xqz then", vocabulary=vocab) == 0.75
  with pytest.raises(ValueError, match="language"):
    language.language_consistency("x", "klingon")


def test_chain_of_thought_extraction():
  assert language.chain_of_thought("<think> a b </think> <answer>1</answer>") == " a b "
  assert language.chain_of_thought("<think> a b") == " a b"  # truncated
  assert language.chain_of_thought(" a b </think> <answer>1</answer>") == " a b "
  assert language.chain_of_thought("no tags") == "no tags"


def test_vocabulary_comes_from_the_chains_of_thought():
  vocab = language.vocabulary_from_texts(["<think> We try 3+4 </think> <answer>Seven</answer>",
                                          "<think> we check </think>"])
  assert vocab == {"we", "try", "check"}


def test_language_reward_is_registered_and_scored():
  problem = Problem("Make 7 with 3, 4.", "3 + 4 = 7", {"numbers": (3, 4), "target": 7})
  completions = [" we try 3+4 </think> <answer>3+4</answer>",
                 " мы try 3+4 </think> <answer>3+4</answer>"]
  cfg = rewards.RewardConfig(extra=(("language_consistency", 0.5),), executor="inline")
  total, comps, _ = rewards.score_completions(completions, [problem] * 2, "countdown", cfg,
                                              prefix="<think>")
  np.testing.assert_allclose(comps["language_consistency"], [1.0, 0.5])
  np.testing.assert_allclose(total, [2.5, 2.25])
  # A vocabulary reward is a partial of a module-level function: it pickles for the workers.
  name = language.register_language_reward("en", {"we", "try"})
  assert name == language.register_language_reward("en", ["try", "we"])
  pickle.loads(pickle.dumps(rewards.REWARD_FNS[name]))
  cfg = rewards.RewardConfig(extra=((name, 1.0),), executor="process", num_workers=1)
  _, comps, _ = rewards.score_completions([" we try xx </think> <answer>3+4</answer>"],
                                          [problem], "countdown", cfg, prefix="<think>")
  np.testing.assert_allclose(comps[name], [2 / 3])


# ----------------------------------------------------------------------------------------------
# The filter
# ----------------------------------------------------------------------------------------------
GOOD = " We try 3 + 4. It gives 7. </think> <answer>3 + 4</answer>"


def _record(completions, correct, formatted, truncated=None):
  return {"prompt": "Make 7 with 3, 4.\n<think>", "question": "Make 7 with 3, 4.",
          "gold": "3 + 4 = 7", "completions": completions, "correct": correct,
          "format": formatted, "truncated": truncated or [False] * len(completions),
          "answers": ["3 + 4"] * len(completions)}


def test_filter_keeps_and_drops_what_it_should():
  completions = [
      GOOD,                                                            # kept
      " We try 3 * 4. </think> <answer>3 * 4</answer>",                # wrong answer
      " We try 3 + 4. <answer>3 + 4</answer>",                         # no </think>
      " Мы пробуем 3 + 4. </think> <answer>3 + 4</answer>",           # Cyrillic CoT
      "(set below)",                                                   # duplicate (spacing)
      " We try 3 + 4 and",                                             # truncated
      " ```python\nprint(3+4)\n``` </think> <answer>3 + 4</answer>",   # code block
      " We add: 3 + 4 = 7. </think> <answer>3 + 4</answer>",           # kept (distinct)
  ]
  correct = [True, False, True, True, True, True, True, True]
  formatted = [True, True, False, True, True, False, True, True]
  truncated = [False, False, False, False, False, True, False, False]
  # The duplicate differs from GOOD only in the amount and kind of whitespace.
  completions[4] = GOOD.replace(". It", ".\n  It").replace(" </think>", "   </think>") + "\n"
  rec = _record(completions, correct, formatted, truncated)
  kept, counts = sft.select_completions([rec], sft.RejectionConfig(), prefix="<think>")
  assert [e.completion for e in kept] == [GOOD, completions[7]]
  assert all(e.prompt == rec["prompt"] for e in kept)
  assert kept[0].meta["language_score"] == 1.0 and kept[0].meta["sample_index"] == 0
  assert counts["sampled"] == 8 and counts["kept"] == 2 and counts["prompts_with_kept"] == 1
  assert {k: counts[k] for k in sft.REJECTION_REASONS if counts[k]} == {
      "incorrect": 1, "bad_format": 2, "mixed_language": 1, "duplicate": 1, "code_block": 1}


def test_filter_options():
  rec = _record([GOOD, " We add: 3 + 4 = 7. </think> <answer>3 + 4</answer>",
                 " We try zqx 3 + 4. </think> <answer>3 + 4</answer>"], [True] * 3, [True] * 3)
  kept, counts = sft.select_completions([rec], sft.RejectionConfig(max_per_prompt=1), "<think>")
  assert len(kept) == 1 and counts["over_per_prompt_cap"] == 2
  vocab = {"we", "try", "it", "gives", "add"}
  kept, counts = sft.select_completions(
      [rec], sft.RejectionConfig(vocabulary=vocab, min_language_score=1.0), "<think>")
  assert [e.meta["sample_index"] for e in kept] == [0, 1] and counts["mixed_language"] == 1
  kept, _ = sft.select_completions([_record([GOOD], [False], [False])],
                                   sft.RejectionConfig(require_correct=False,
                                                       require_format=False), "<think>")
  assert len(kept) == 1
  long_cot = " " + "word " * 50 + "</think> <answer>3 + 4</answer>"
  _, counts = sft.select_completions([_record([long_cot], [True], [True])],
                                     sft.RejectionConfig(max_paragraph_chars=100), "<think>")
  assert counts["long_paragraph"] == 1
  with pytest.raises(ValueError, match="min_language_score"):
    sft.RejectionConfig(min_language_score=2.0)
  with pytest.raises(ValueError, match="'format'"):
    sft.select_completions([{"prompt": "p", "completions": [], "correct": []}],
                           sft.RejectionConfig())


def test_rejection_sampling_of_a_memorized_policy(tmp_path):
  """SFT memorizes one correct and one wrong completion; sampling 6 times each at temperature 1
  and filtering keeps exactly one copy of the correct one."""
  tok = CharTokenizer()
  config = get_config("tiny")
  problems = [Problem("Make 7 with 3, 4.", "3 + 4 = 7", {"numbers": (3, 4), "target": 7}),
              Problem("Make 12 with 3, 4.", "3 * 4 = 12", {"numbers": (3, 4), "target": 12})]
  prompts = [p.question + "\n<think>" for p in problems]
  completions = [" 3+4 </think> <answer>3+4</answer>", " 3+4 </think> <answer>3+4</answer>"]
  cfg = sft.SFTConfig(batch_size=2, max_prompt_length=32, max_completion_length=40,
                      learning_rate=5e-3, lr_scheduler_type="constant", max_steps=100)
  state = sft.run_sft(config, model.init_params(config, jax.random.PRNGKey(0)), tok,
                      [sft.Example(p, c) for p, c in zip(prompts, completions)], cfg,
                      str(tmp_path), save_steps=1000)
  score = lambda texts, rows: rewards.score_completions(  # noqa: E731
      texts, rows, "countdown", rewards.RewardConfig(executor="inline"), prefix="<think>")
  _, records = r1eval.evaluate_policy(
      state["params"], config, tok, problems, format_prompt=lambda p: p.question + "\n<think>",
      score_fn=score, extract_fn=rewards.extract_answer, num_samples=6,
      key=jax.random.PRNGKey(1), temperature=1.0, top_p=1.0, max_prompt_length=32,
      max_new_tokens=40, batch_size=2, stop_sequences=(), add_bos=True)
  assert records[0]["completions"].count(completions[0]) >= 4  # memorized
  assert records[0]["correct"][records[0]["completions"].index(completions[0])]
  kept, counts = sft.select_completions(records, sft.RejectionConfig(), prefix="<think>")
  assert [(e.prompt, e.completion) for e in kept] == [(prompts[0], completions[0])]
  assert counts["duplicate"] >= 3 and counts["incorrect"] >= 4
