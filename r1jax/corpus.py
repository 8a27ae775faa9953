"""A procedural pretraining corpus for R1-Zero in miniature: Countdown attempts of mixed quality.

DeepSeek-R1-Zero starts RL from a *base* model (DeepSeek-V3-Base) that already computes and
sometimes solves problems, and that has, somewhere in its pretraining data, text that checks a
result and tries again; RL then selects for the long, reflective completions that solve more
problems (paper §2.2.4: accuracy, response length and "aha" reflections rise together, Figs. 2-3).
A model pretrained here must have the same three properties, so each document is
`format_prompt(question, template) + completion` where the completion is one of

  single     one attempt, answered without checking (right only by luck)
               " 9-3=6, 6+5=11.</think> <answer>(9-3)+5</answer>"
  search     attempts checked against the target, trying again until one hits or the budget
             (geometric, mean ~1/(1-continue_prob)) runs out; then the hit, or the last miss anyway
               " 9+5=14, 14*3=42, check 42-14=28: no. try 9-3=6, 6+5=11, check 14-11=3: no.
                try 3*5=15, 15-1=14, check 14-14=0: yes.</think> <answer>(3*5)-1</answer>"
  give_up    checked misses, then "give up." and no answer or the last miss
  malformed  a single or search completion with its tags damaged (no </think>, or no <answer>)
  drill      no problem: "Check.\n" then steps with checks whose verdicts are yes half the time
               " 7*6=42, check 42-24=18: no. 9-4=5, check 5-5=0: yes. ..."
             (arithmetic practice, as pretraining text has; in task documents a "yes" is rare)

Every step's arithmetic is correct (so the model learns to compute and to compare with the
target); only the *choice* of attempts is random. A check subtracts the smaller of the result
and the target from the larger before its verdict ("check 14-11=3: no", "check 14-14=0: yes"):
a small character-level model learns equality badly from the rare yes/no tokens (measured: no
better than chance after 2500 steps), but subtraction well (every digit is a target), and then
the verdict only has to see whether the difference is 0. Nothing is curated to be correct: how
often a document solves its problem follows from the mix and the attempt budget, which set the base
model's pass@1 (5-25% for the shipped configs). RL can then raise accuracy by searching longer
and checking (response length and reflection up), fixing the format, and not giving up.

`correct_traces` writes the opposite kind of data, long correct-only traces for the cold-start
SFT and distillation of the R1 pipeline (§2.3.1, §2.4). It is NOT used for R1-Zero.

Only training-split problems go in (the task's hash partition keeps test problems out).
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
from typing import Optional, Sequence

import numpy as np

from r1jax.tasks import Problem, format_prompt, get_task, verify_equation

KINDS = ("single", "search", "give_up", "malformed", "drill")
DRILL_PROMPT = "Check.\n"


# ----------------------------------------------------------------------------------------------
# Attempts: combine two numbers, then the result with the next, until one number is left.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Attempt:
  """One way of combining all the numbers. steps: ((x, op, y, x op y), ...) with x >= y."""

  steps: tuple[tuple[int, str, int, int], ...]
  expression: str  # the equation's left side, e.g. "(9-3)+5"
  value: int

  def text(self) -> str:
    return ", ".join(f"{x}{op}{y}={r}" for x, op, y, r in self.steps)


def _apply(op: str, x: int, y: int) -> Optional[int]:
  """x op y for x >= y when it is a positive integer (what a Countdown player writes down)."""
  if op == "+":
    return x + y
  if op == "*":
    return x * y
  if op == "-":
    return x - y if x > y else None
  return x // y if y and x % y == 0 else None


def _wrap(text: str, atom: bool) -> str:
  return text if atom else f"({text})"


def valid_ops(x: int, y: int) -> list[str]:
  return [op for op in "+-*/" if _apply(op, x, y) is not None]


def random_attempt(numbers: Sequence[int], rng: random.Random) -> Attempt:
  """Combines a random pair with a random valid op until one value is left."""
  pool = [(int(n), str(n), True) for n in numbers]  # (value, text, is_atom)
  steps = []
  while len(pool) > 1:
    i, j = rng.sample(range(len(pool)), 2)
    a, b = pool[i], pool[j]
    if a[0] < b[0]:
      a, b = b, a
    op = rng.choice(valid_ops(a[0], b[0]))
    r = _apply(op, a[0], b[0])
    steps.append((a[0], op, b[0], r))
    text = f"{_wrap(a[1], a[2])}{op}{_wrap(b[1], b[2])}"
    pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [(r, text, False)]
  return Attempt(tuple(steps), pool[0][1], pool[0][0])


@functools.lru_cache(maxsize=4096)
def all_attempts(numbers: tuple[int, ...]) -> tuple[Attempt, ...]:
  """Every distinct Attempt over `numbers` (exhaustive; distinct by expression). ~50 for three
  numbers, a few thousand for four."""
  out = {}

  def rec(pool, steps):
    if len(pool) == 1:
      out.setdefault(pool[0][1], Attempt(tuple(steps), pool[0][1], pool[0][0]))
      return
    for i in range(len(pool)):
      for j in range(i + 1, len(pool)):
        a, b = (pool[i], pool[j]) if pool[i][0] >= pool[j][0] else (pool[j], pool[i])
        rest = [p for k, p in enumerate(pool) if k not in (i, j)]
        for op in valid_ops(a[0], b[0]):
          r = _apply(op, a[0], b[0])
          text = f"{_wrap(a[1], a[2])}{op}{_wrap(b[1], b[2])}"
          rec(rest + [(r, text, False)], steps + [(a[0], op, b[0], r)])

  rec([(int(n), str(n), True) for n in numbers], [])
  return tuple(out[k] for k in sorted(out))


OPS = "+-*/"


def systematic_attempts(numbers: Sequence[int], rng: random.Random) -> list[Attempt]:
  """Every distinct Attempt over `numbers`, in the order a methodical player tries them: the
  first pair is chosen at random, then the pairs not yet used in a random order, and within a
  pair the first operation in the order + - * /, then the second in that order. Each attempt
  follows from the one before it (the next operation, or the next pair), so a small model can
  continue a search without remembering which attempts it has made."""
  by_pair: dict[tuple[int, int], list[Attempt]] = {}
  for a in all_attempts(tuple(sorted(int(n) for n in numbers))):
    by_pair.setdefault(a.steps[0][:3:2], []).append(a)
  pairs = sorted(by_pair)
  rng.shuffle(pairs)
  key = lambda a: tuple(OPS.index(s[1]) for s in a.steps) + (a.expression,)
  return [a for pair in pairs for a in sorted(by_pair[pair], key=key)]


def systematic_search(problem: Problem, rng: random.Random) -> tuple[list[Attempt],
                                                                     Optional[Attempt]]:
  """(the misses before the first hit, the first hit or None) of one `systematic_attempts`
  order of the problem's numbers."""
  order = systematic_attempts(problem.meta["numbers"], rng)
  first = next((i for i, a in enumerate(order) if a.value == problem.meta["target"]), len(order))
  return order[:first], order[first] if first < len(order) else None


def hit_rate(problem: Problem) -> float:
  """Share of `all_attempts` that reach the target: the chance a random attempt solves it."""
  atts = all_attempts(tuple(sorted(problem.meta["numbers"])))
  return sum(a.value == problem.meta["target"] for a in atts) / max(len(atts), 1)


def _distinct_attempts(numbers, rng: random.Random, count: int, target: Optional[int] = None,
                       hit_bias: float = 0.0) -> list[Attempt]:
  """Up to `count` random attempts with distinct expressions (a player does not repeat one);
  with `hit_bias`, each is instead, with that chance, one that reaches `target`."""
  out, seen = [], set()
  hits = ([a for a in all_attempts(tuple(sorted(numbers))) if a.value == target]
          if hit_bias > 0 else [])
  for _ in range(20 * count):
    a = (rng.choice(hits) if hits and rng.random() < hit_bias
         else random_attempt(numbers, rng))
    if a.expression not in seen:
      seen.add(a.expression)
      out.append(a)
      if len(out) == count:
        break
  return out


# ----------------------------------------------------------------------------------------------
# Documents
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CorpusConfig:
  """The mix of completion kinds (weights, normalized) and the search budget.

  A `search` or `give_up` completion makes 1 + Geometric attempts: after each miss it goes on
  with probability `continue_prob`, up to `max_attempts`. Malformed completions damage a single
  (`malformed_single` of them) or a search completion. `search_order`: "random" (distinct
  random attempts) or "systematic" (`systematic_attempts`: a random first pair, then the
  operations in a fixed order).
  """

  single: float = 0.4
  search: float = 0.35
  give_up: float = 0.1
  malformed: float = 0.05
  drill: float = 0.1
  continue_prob: float = 0.5
  max_attempts: int = 8
  # Chance that a search's next attempt is a good guess (one that reaches the target), as a
  # solver with some number sense makes; it also gives the "yes" verdicts of the checks enough
  # weight for a small model to learn to compare the result with the target.
  hit_bias: float = 0.0
  drill_items: int = 8
  drill_max_number: int = 12
  malformed_single: float = 0.5
  search_order: str = "random"
  template: str = "compact"

  def __post_init__(self):
    weights = [self.single, self.search, self.give_up, self.malformed, self.drill]
    if min(weights) < 0 or sum(weights) <= 0:
      raise ValueError(f"CorpusConfig mix weights must be >= 0 with a positive sum, got {weights}")
    if not 0 <= self.continue_prob < 1:
      raise ValueError(f"continue_prob={self.continue_prob} must be in [0, 1)")
    if self.max_attempts < 1:
      raise ValueError(f"max_attempts={self.max_attempts} must be >= 1")
    if self.drill_items < 1 or self.drill_max_number < 1:
      raise ValueError(f"drill_items={self.drill_items} and drill_max_number="
                       f"{self.drill_max_number} must be >= 1")
    if not 0 <= self.hit_bias <= 1:
      raise ValueError(f"hit_bias={self.hit_bias} must be in [0, 1]")
    if self.search_order not in ("random", "systematic"):
      raise ValueError(f"search_order={self.search_order!r}; expected 'random' or 'systematic'")
    if self.search_order == "systematic" and self.hit_bias:
      raise ValueError(f"hit_bias={self.hit_bias} needs search_order='random' (a systematic "
                       "search has no guesses)")
    if not 0 <= self.malformed_single <= 1:
      raise ValueError(f"malformed_single={self.malformed_single} must be in [0, 1]")

  @property
  def mix(self) -> dict[str, float]:
    w = [self.single, self.search, self.give_up, self.malformed, self.drill]
    return {k: v / sum(w) for k, v in zip(KINDS, w)}


@dataclasses.dataclass(frozen=True)
class Document:
  """One pretraining document. `correct`: its answer verifies (accuracy reward 1);
  `formatted`: its tags are well formed (format reward 1). Drills have no problem."""

  problem: Optional[Problem]
  kind: str
  prompt: str
  completion: str
  attempts: int
  correct: bool
  formatted: bool

  @property
  def text(self) -> str:
    return self.prompt + self.completion


def _budget(cfg: CorpusConfig, rng: random.Random) -> int:
  k = 1
  while k < cfg.max_attempts and rng.random() < cfg.continue_prob:
    k += 1
  return k


def _answer(expression: str) -> str:
  return f"</think> <answer>{expression}</answer>"


def _single(problem, rng):
  a = random_attempt(problem.meta["numbers"], rng)
  return f" {a.text()}.", a.expression, 1


def _search(problem, cfg, rng, budget=None):
  """Checked attempts until a hit or the budget; (think text, answer, attempts)."""
  target = problem.meta["target"]
  budget = budget or max(_budget(cfg, rng), 2)
  parts, chosen = [], None
  if cfg.search_order == "systematic":
    attempts = systematic_attempts(problem.meta["numbers"], rng)[:budget]
  else:
    attempts = _distinct_attempts(problem.meta["numbers"], rng, budget, target, cfg.hit_bias)
  for i, a in enumerate(attempts):
    chosen = a
    parts.append(_checked(a, target, first=i == 0))
    if a.value == target:
      break
  return " " + " ".join(parts), chosen.expression, len(parts)


def check_text(value: int, target: int) -> str:
  """"check 14-11=3: no" / "check 14-14=0: yes": the larger minus the smaller, then the verdict."""
  hi, lo = max(value, target), min(value, target)
  return f"check {hi}-{lo}={hi - lo}: {'yes' if hi == lo else 'no'}"


def _checked(a: Attempt, target: int, first: bool) -> str:
  """"[try ]9-3=6, 6+5=11, check 14-11=3: no." """
  return f"{'' if first else 'try '}{a.text()}, {check_text(a.value, target)}."


def _give_up(problem, cfg, rng):
  target = problem.meta["target"]
  if cfg.search_order == "systematic":  # the misses before the first hit, in order
    misses = systematic_search(problem, rng)[0][:max(_budget(cfg, rng), 1)]
  else:
    misses = [a for a in _distinct_attempts(problem.meta["numbers"], rng, cfg.max_attempts)
              if a.value != target][:max(_budget(cfg, rng), 1)]
  if not misses:  # every attempt hits: nothing to give up on
    return _search(problem, cfg, rng)
  parts = [_checked(a, target, first=i == 0) for i, a in enumerate(misses)]
  answer = misses[-1].expression if rng.random() < 0.5 else "none"
  return " " + " ".join(parts + ["give up."]), answer, len(misses)


def _near(value: int, rng: random.Random) -> int:
  """A number easy to mistake for `value`: off by a little, digits swapped, or any small one."""
  options = [value + rng.choice((-2, -1, 1, 2)), int(str(value)[::-1]), rng.randint(1, 60)]
  out = rng.choice(options)
  return out if out != value and out > 0 else value + 1


def drill_document(cfg: CorpusConfig, rng: random.Random) -> Document:
  """Random steps x op y = r (x, y <= drill_max_number, or a previous result), each checked
  against a number equal to r half the time."""
  items, last = [], None
  for _ in range(cfg.drill_items):
    x = last if last is not None and rng.random() < 0.5 else rng.randint(1, cfg.drill_max_number)
    y = rng.randint(1, cfg.drill_max_number)
    x, y = max(x, y), min(x, y)
    op = rng.choice(valid_ops(x, y))
    r = _apply(op, x, y)
    other = r if rng.random() < 0.5 else _near(r, rng)
    items.append(f"{x}{op}{y}={r}, {check_text(r, other)}.")
    last = r if r < 100 else None
  return Document(None, "drill", DRILL_PROMPT, " " + " ".join(items), 0, False, False)


def make_document(problem: Problem, kind: str, cfg: CorpusConfig, rng: random.Random) -> Document:
  """One document of `kind` for a Countdown `problem` (meta numbers/target; unused by drills)."""
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r}; expected one of {KINDS}")
  if kind == "drill":
    return drill_document(cfg, rng)
  if kind == "single":
    think, answer, n = _single(problem, rng)
  elif kind == "search":
    think, answer, n = _search(problem, cfg, rng)
  elif kind == "give_up":
    think, answer, n = _give_up(problem, cfg, rng)
  else:
    think, answer, n = (_single(problem, rng) if rng.random() < cfg.malformed_single
                        else _search(problem, cfg, rng))
  completion = think + _answer(answer)
  if kind == "malformed":
    if rng.random() < 0.5:  # the think block never closes
      completion = f"{think} <answer>{answer}</answer>"
    else:  # the answer is not tagged: unreadable to the accuracy reward too
      completion = f"{think}</think> answer: {answer}"
  ok = verify_equation(answer, problem.meta["numbers"], problem.meta["target"])
  correct = ok and "<answer>" in completion
  return Document(problem, kind, format_prompt(problem.question, cfg.template), completion, n,
                  correct, kind != "malformed")


def corpus_documents(n: int, seed: int = 0, cfg: CorpusConfig = CorpusConfig(),
                     task_options: Optional[dict] = None,
                     problems: Optional[Sequence[Problem]] = None) -> list[Document]:
  """`n` documents, deterministic from `seed`.

  Problems come from `problems` or else the train split of `get_task("countdown",
  **task_options)` (with `num_train=n`); a kind is drawn for each from `cfg.mix`.
  """
  if n < 1:
    raise ValueError(f"n={n} must be >= 1")
  if problems is None:
    task = get_task("countdown", **{**(task_options or {}), "num_train": n})
    problems = task.split("train", seed)
  if not problems:
    raise ValueError("corpus_documents: no problems")
  rng = random.Random(seed)
  kinds, weights = list(cfg.mix), list(cfg.mix.values())
  return [make_document(problems[i % len(problems)], rng.choices(kinds, weights)[0], cfg, rng)
          for i in range(n)]


# ----------------------------------------------------------------------------------------------
# Correct-only traces (R1 cold start / distillation; not R1-Zero)
# ----------------------------------------------------------------------------------------------
def _solution(problem: Problem, rng: random.Random) -> Attempt:
  hits = [a for a in all_attempts(tuple(sorted(problem.meta["numbers"])))
          if a.value == problem.meta["target"]]
  if not hits:
    raise ValueError(f"problem {problem.question!r} has no solution by pairwise combination")
  return rng.choice(hits)


def _long_trace(problem: Problem, misses: list[Attempt], hit: Attempt) -> str:
  target, numbers = problem.meta["target"], problem.meta["numbers"]
  shown = ", ".join(map(str, numbers))

  def steps(a):
    return ", then ".join(f"{x} {op} {y} = {r}" for x, op, y, r in a.steps)

  lines = [f" We need {target} from {shown}, each used once."]
  for a in misses:
    hi, lo = max(a.value, target), min(a.value, target)
    lines.append(f"Try {steps(a)}. Check: {hi} - {lo} = {hi - lo}, not 0, so try another way.")
  lines.append(f"Try {steps(hit)}. Check: {target} - {target} = 0, it works.")
  lines.append(f"So {hit.expression} = {target}, using {shown} once each.")
  return " ".join(lines) + _answer(hit.expression)


_STEP = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")
_COMPACT_ATTEMPT = re.compile(
    r"(?:try )?(\d+[-+*/]\d+=\d+(?:, \d+[-+*/]\d+=\d+)*), check (\d+)-(\d+)=(\d+): (no|yes)\.")


def parse_search(think: str, target: int) -> Optional[list[Attempt]]:
  """The attempts of a completion in the corpus's compact notation ("9-3=6, 6+5=11, check
  14-11=3: no. try ...") when the whole text is such attempts and every step and check is
  right; else None. Attempt.expression is left empty (the notation does not give it)."""
  text, attempts = think.strip(), []
  while text:
    m = _COMPACT_ATTEMPT.match(text)
    if m is None:
      return None
    steps = []
    for x, op, y, r in _STEP.findall(m.group(1)):
      x, y, r = int(x), int(y), int(r)
      if x < y or _apply(op, x, y) != r:
        return None
      steps.append((x, op, y, r))
    value, (hi, lo, diff) = steps[-1][3], map(int, m.group(2, 3, 4))
    if (hi, lo) != (max(value, target), min(value, target)) or hi - lo != diff or (
        (m.group(5) == "yes") != (value == target)):
      return None
    attempts.append(Attempt(tuple(steps), "", value))
    text = text[m.end():].lstrip()
  return attempts


def readable_trace(problem: Problem, completion: str,
                   max_misses: Optional[int] = None) -> Optional[str]:
  """A completion in the compact notation rewritten as a long, readable trace (the style of
  `correct_traces(style="long")`): the post-processing that turns DeepSeek-R1-Zero's outputs
  into readable cold-start data (R1 §2.3.1). Only a completion whose search is parsed whole,
  whose arithmetic and checks are right, whose last attempt is its only hit and whose answer
  verifies is rewritten (else None). The last `max_misses` misses are kept (None: all)."""
  match = re.fullmatch(r"(.*)</think>\s*<answer>(.*?)</answer>\s*", completion, re.S)
  if match is None:
    return None
  think, answer = match.group(1), match.group(2).strip()
  target = problem.meta["target"]
  attempts = parse_search(think, target)
  if not attempts or attempts[-1].value != target or any(
      a.value == target for a in attempts[:-1]):
    return None
  if not verify_equation(answer, problem.meta["numbers"], target):
    return None
  misses = attempts[:-1]
  if max_misses is not None:
    misses = misses[max(len(misses) - max_misses, 0):]
  hit = dataclasses.replace(attempts[-1], expression=answer)
  return _long_trace(problem, misses, hit)


def correct_traces(problems: Sequence[Problem], seed: int = 0, style: str = "long",
                   max_misses: int = 2, template: str = "compact",
                   search_order: str = "random") -> list[tuple[str, str]]:
  """(prompt, completion) pairs whose answers verify, one per Countdown problem.

  style "long": readable sentences, failed attempts, the solution and a check line (cold-start
  data, DeepSeek-R1 §2.3.1). style "short": the corpus's own compact search notation ending in a
  hit. search_order "random": 0 to `max_misses` random failed attempts, then a solution drawn from
  all of them (one the trace could not have found by its search). "systematic": a real search,
  `systematic_attempts` up to its first hit, of which the last `max_misses` misses are written
  (consecutive in the order, so each attempt still follows from the one before). Raises if a
  problem has no solution.
  """
  if style not in ("long", "short"):
    raise ValueError(f"style={style!r}; expected 'long' or 'short'")
  if search_order not in ("random", "systematic"):
    raise ValueError(f"search_order={search_order!r}; expected 'random' or 'systematic'")
  if max_misses < 0:
    raise ValueError(f"max_misses={max_misses} must be >= 0")
  rng = random.Random(seed)
  out = []
  for p in problems:
    if search_order == "systematic":
      misses, hit = systematic_search(p, rng)
      if hit is None:
        raise ValueError(f"problem {p.question!r} has no solution by pairwise combination")
      misses = misses[max(len(misses) - max_misses, 0):]
    else:
      hit = _solution(p, rng)
      misses = [a for a in _distinct_attempts(p.meta["numbers"], rng, max_misses + 4)
                if a.value != p.meta["target"]][:rng.randint(0, max_misses)]
    if style == "long":
      completion = _long_trace(p, misses, hit)
    else:
      parts = [_checked(a, p.meta["target"], first=i == 0)
               for i, a in enumerate(misses + [hit])]
      completion = " " + " ".join(parts) + _answer(hit.expression)
    assert verify_equation(hit.expression, p.meta["numbers"], p.meta["target"])
    out.append((format_prompt(p.question, template), completion))
  return out


# ----------------------------------------------------------------------------------------------
# Pretraining batches: BOS + prompt + completion + EOS, right-padded, grouped by length
# ----------------------------------------------------------------------------------------------
def encode_documents(docs: Sequence[Document], tokenizer, *, add_bos: bool = True,
                     max_length: Optional[int] = None) -> list[tuple[list[int], int]]:
  """(token ids, number of prompt tokens incl. BOS) per document, EOS appended: the layout the
  sampler sees at RL time (BOS, the prompt, then the completion). Raises if one exceeds
  `max_length` tokens."""
  out = []
  for d in docs:
    prompt = tokenizer.encode(d.prompt, add_bos=add_bos)
    ids = prompt + tokenizer.encode(d.completion) + [tokenizer.eos_id]
    if max_length is not None and len(ids) > max_length:
      raise ValueError(f"a document has {len(ids)} tokens, more than max_length={max_length}: "
                       f"{d.text[:60]!r}...")
    out.append((ids, len(prompt)))
  return out


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int,
                           group: int = 16) -> list[np.ndarray]:
  """Index batches over a seeded shuffle, sorted by length within windows of `group` batches
  (so padding is small) and then shuffled again (so lengths do not trend over training). A
  last partial batch is dropped."""
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1")
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(lengths))
  lengths = np.asarray(lengths)
  batches = []
  window = batch_size * group
  for start in range(0, len(order) - batch_size + 1, window):
    chunk = order[start:start + window]
    chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
    batches += [chunk[i:i + batch_size] for i in range(0, len(chunk) - batch_size + 1,
                                                       batch_size)]
  return [batches[i] for i in rng.permutation(len(batches))]


def pad_batch(encoded: Sequence[tuple[list[int], int]], indices, pad_id: int,
              loss_on_prompt: bool = True, multiple: int = 64) -> dict[str, np.ndarray]:
  """tokens [b,T] int32, mask [b,T] bool, loss_mask [b,T] bool (the targets that count: every
  real token but the first, or only completion tokens when not `loss_on_prompt`). T is the
  longest document rounded up to `multiple` (a few shapes, a few compilations)."""
  rows = [encoded[int(i)] for i in indices]
  longest = max(len(ids) for ids, _ in rows)
  t = -(-longest // multiple) * multiple
  tokens = np.full((len(rows), t), pad_id, np.int32)
  mask = np.zeros((len(rows), t), bool)
  loss_mask = np.zeros((len(rows), t), bool)
  for r, (ids, n_prompt) in enumerate(rows):
    tokens[r, :len(ids)] = ids
    mask[r, :len(ids)] = True
    loss_mask[r, 1 if loss_on_prompt else n_prompt:len(ids)] = True
  return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask}
