"""TRL's GRPOTrainer against r1jax's GRPO step on the same work, in one run on one GPU.

Each side runs in a child process of this script, one after the other, so that neither holds
GPU memory while the other runs (JAX preallocates most of it):

  r1jax  `benchmarks/grpo_step.py` with this script's shape flags: one `trainer.step` is one
         generation cycle; its table's phases are kept (medians of --repeats steps after the
         compiling one).
  TRL    this script with --worker: `trl.GRPOTrainer` on a transformers model of the same preset
         shape (r1jax.hf.config_to_hf; Qwen2 for the Qwen presets), random weights saved to a
         temporary directory (the trainer loads its reference model from there), a WordLevel
         tokenizer as large as the model's vocabulary whose prompts are exactly --prompt_len
         tokens, a cheap reward and GRPOConfig(per_device_train_batch_size=rows / accumulation,
         gradient_accumulation_steps, num_generations, max_completion_length, num_iterations,
         beta, bf16, gradient_checkpointing). One generation cycle is num_iterations optimizer
         steps: generation of all rows, then μ passes of the accumulation micro-batches. The
         first cycle warms up and is reported apart; then the median of --repeats cycles.

Phases of TRL's cycle, timed by wrapping the trainer's methods (CUDA synchronized at each edge):
  rollout       `_generate_single_turn` (model.generate + the copy to host lists)
  rewards       `_calculate_rewards`
  old_logprobs  `_get_per_token_logps_and_entropies` on the policy inside
                `_generate_and_score_completions` (μ > 1)
  ref_logprobs  the same on the reference model (beta > 0)
  other         the rest of `_generate_and_score_completions`: tokenizing, decoding, padding,
                advantages
  update        the rest of the cycle: the μ x accumulation forward/backward passes, the
                optimizer steps, the trainer's loop
  total         wall time of the cycle (train begin / the end of the cycle's last optimizer step)
r1jax's phases are grpo_step.py's (its docstring); its rewards are Countdown's rule-based ones
(a process pool) where TRL's are a cheap function of the text, a small part of either step.

Cases (--cases):
  fixed     every completion is exactly --new_tokens tokens (r1jax: EOS dropped; TRL: EOS
            suppressed, then forced at the last token).
  variable  completion lengths spread like a real run: `completion_lengths(rows, new_tokens,
            seed)`, the same integers on both sides. TRL: a logits processor suppresses EOS
            before each row's length and forces it at the length. r1jax: passed to grpo_step.py
            as --lengths_file (a JSON list of ints); where grpo_step.py has no such flag the
            r1jax side of this case is reported as not run.

--grpo_step_args passes more flags to grpo_step.py (e.g. its layout options) for the r1jax side.
The ratio column is TRL seconds / r1jax seconds. Results go to --out as JSON, written again
after each side so that a run cut short keeps what it measured.

  python benchmarks/vs_trl.py                    # GPU: qwen2.5-0.5b, 32 x 8 rows, P 128, N 512
  python benchmarks/vs_trl.py --small            # CPU: tiny preset, 8 rows, N 16, float32
TRL and its needs (trl, datasets, dill, multiprocess) must be importable for the TRL side.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCHMARKS)
PHASES = ("rollout", "rewards", "old_logprobs", "ref_logprobs", "update", "other")
ROWS = PHASES + ("total", "first_step")
CASES = ("fixed", "variable")
SIDES = ("r1jax", "trl")
VERSIONED = ("jax", "jaxlib", "torch", "transformers", "trl", "datasets", "accelerate")


def completion_lengths(rows: int, max_len: int, seed: int) -> np.ndarray:
  """[rows] int32 completion lengths like those of a GRPO run, for the variable-length case.

  The contract both sides rely on: row r = b*G+g (sample g of prompt b, the order of
  r1jax.sampling and of TRL's repeated prompts); a length counts every completion token
  including the final EOS; 1 <= length <= max_len, and a row of max_len may end without EOS
  (truncated). Deterministic in (rows, max_len, seed): ceil of a lognormal draw from
  numpy.random.default_rng(seed) with median max_len / 4 and sigma 0.6, clipped to
  [1, max_len]: the mean is about 0.3 * max_len, and about 1% of the rows hit max_len, as the
  truncated completions of a run do. Needs numpy only (grpo_step.py may import it).
  """
  if rows < 1 or max_len < 1:
    raise ValueError(f"rows={rows} and max_len={max_len} must be >= 1")
  draw = np.random.default_rng(seed).lognormal(np.log(0.25 * max_len), 0.6, size=rows)
  return np.clip(np.ceil(draw), 1, max_len).astype(np.int32)


def case_lengths(case: str, rows: int, max_len: int, seed: int) -> np.ndarray:
  """[rows] completion lengths of a case: all max_len (fixed) or `completion_lengths`."""
  if case == "fixed":
    return np.full((rows,), max_len, np.int32)
  if case == "variable":
    return completion_lengths(rows, max_len, seed)
  raise ValueError(f"unknown case {case!r}; expected one of {CASES}")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", default="qwen2.5-0.5b", help="random weights of this preset")
  parser.add_argument("--dtype", default="bfloat16", help="bfloat16 or float32, both sides")
  parser.add_argument("--prompts", type=int, default=32, help="B: prompts per step")
  parser.add_argument("--num_generations", type=int, default=8, help="G: completions per prompt")
  parser.add_argument("--prompt_len", type=int, default=128, help="prompt tokens")
  parser.add_argument("--new_tokens", type=int, default=512, help="N: longest completion")
  parser.add_argument("--num_iterations", type=int, default=2, help="μ: passes per batch")
  parser.add_argument("--beta", type=float, default=0.04, help="KL weight (0: no π_ref pass)")
  parser.add_argument("--gradient_accumulation_steps", type=int, default=4,
                      help="micro-batches per optimizer step (TRL: rows / this per device)")
  parser.add_argument("--remat", default="full",
                      help="r1jax's --remat; TRL's gradient checkpointing is on unless 'none'")
  parser.add_argument("--repeats", type=int, default=3, help="timed steps / cycles per side")
  parser.add_argument("--seed", type=int, default=0, help="weights, prompts and lengths")
  parser.add_argument("--cases", default="fixed,variable", help="comma list of fixed, variable")
  parser.add_argument("--sides", default="r1jax,trl", help="comma list of r1jax, trl")
  parser.add_argument("--grpo_step_args", default="",
                      help="more flags for grpo_step.py (r1jax side), e.g. '--length_buckets 4'")
  parser.add_argument("--out", default="",
                      help="JSON result file (default benchmarks/results/vs_trl-<date>.json)")
  parser.add_argument("--small", action="store_true",
                      help="CPU smoke run: tiny preset, 2 x 4 rows, P 48, N 16, float32")
  # Internal: the TRL child process.
  parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
  parser.add_argument("--case", default="fixed", help=argparse.SUPPRESS)
  parser.add_argument("--lengths_file", default="", help=argparse.SUPPRESS)
  parser.add_argument("--worker_out", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.small:
    args.preset, args.dtype, args.remat = "tiny", "float32", "none"
    args.prompts, args.num_generations, args.prompt_len, args.new_tokens = 2, 4, 48, 16
    args.gradient_accumulation_steps, args.repeats = 1, 2
  for name in ("prompts", "prompt_len", "new_tokens", "num_iterations", "repeats",
               "gradient_accumulation_steps"):
    if getattr(args, name) < 1:
      parser.error(f"--{name}={getattr(args, name)} must be >= 1")
  if args.num_generations < 2:
    parser.error(f"--num_generations={args.num_generations} must be >= 2 (group advantages)")
  if args.beta < 0:
    parser.error(f"--beta={args.beta} must be >= 0")
  if args.dtype not in ("bfloat16", "float32"):
    parser.error(f"--dtype={args.dtype!r}; expected bfloat16 or float32")
  rows = args.prompts * args.num_generations
  if rows % args.gradient_accumulation_steps:
    parser.error(f"--gradient_accumulation_steps={args.gradient_accumulation_steps} must divide "
                 f"the {rows} rows (--prompts x --num_generations)")
  args.cases = [c for c in args.cases.split(",") if c]
  args.sides = [s for s in args.sides.split(",") if s]
  if not args.cases or any(c not in CASES for c in args.cases):
    parser.error(f"--cases={','.join(args.cases)!r}; expected a comma list of {CASES}")
  if not args.sides or any(s not in SIDES for s in args.sides):
    parser.error(f"--sides={','.join(args.sides)!r}; expected a comma list of {SIDES}")
  if args.worker not in ("", "trl"):
    parser.error(f"--worker={args.worker!r}")
  if not args.out:
    args.out = os.path.join(BENCHMARKS, "results", f"vs_trl-{datetime.date.today()}.json")
  return args


# ------------------------------------------------------------------------------------------------
# r1jax: benchmarks/grpo_step.py in a child process
# ------------------------------------------------------------------------------------------------
def grpo_step_argv(args, lengths_file: str = "") -> list[str]:
  """grpo_step.py's command line for this run's shape (one device: no mesh flags)."""
  rows = args.prompts * args.num_generations
  argv = [sys.executable, os.path.join(BENCHMARKS, "grpo_step.py"), "--preset", args.preset,
          "--dtype", args.dtype, "--prompts", str(args.prompts),
          "--num_generations", str(args.num_generations), "--prompt_len", str(args.prompt_len),
          "--new_tokens", str(args.new_tokens), "--num_iterations", str(args.num_iterations),
          "--beta", str(args.beta), "--remat", args.remat,
          "--gradient_accumulation_steps", str(args.gradient_accumulation_steps),
          # TRL's log-prob passes run per_device_train_batch_size rows at a time.
          "--logprob_batch_size", str(rows // args.gradient_accumulation_steps),
          "--repeats", str(args.repeats), "--seed", str(args.seed)]
  if args.small:
    argv += ["--logprob_chunk_size", "16"]
  if lengths_file:
    argv += ["--lengths_file", lengths_file]
  return argv + shlex.split(args.grpo_step_args)


def parse_grpo_step(text: str) -> dict:
  """{phase: seconds, 'total', 'first_step', 'generated_tokens', 'device'} from grpo_step.py's
  output; raises ValueError naming what is missing."""
  out = {}
  for line in text.splitlines():
    cells = line.split(" | ")
    if len(cells) == 4 and cells[0] in PHASES + ("total",):
      out[cells[0]] = float(cells[1]) / 1e3
    elif line.startswith("device: "):
      out["device"] = line[len("device: "):].split(" x ")[0]
    elif line.startswith("generated tokens/step: "):
      fields = dict(f.strip().split(": ", 1) for f in line.split(";"))
      out["generated_tokens"] = int(fields["generated tokens/step"])
      out["first_step"] = float(fields["first step (compile)"].rstrip(" s"))
  missing = [k for k in ROWS + ("generated_tokens", "device") if k not in out]
  if missing:
    raise ValueError(f"grpo_step.py's output lacks {missing}")
  return out


def grpo_step_takes_lengths() -> bool:
  """Whether this checkout's grpo_step.py has a --lengths_file flag."""
  help_text = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "grpo_step.py"), "--help"],
                             capture_output=True, text=True, check=False).stdout
  return "--lengths_file" in help_text


def _child_env(small: bool, jax_cpu: bool) -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH", "")]))
  env["PYTHONUNBUFFERED"] = "1"
  if jax_cpu or small:
    env["JAX_PLATFORMS"] = "cpu"
  return env


def run_r1jax(args, case: str, lengths_file: str) -> dict:
  """grpo_step.py's phases for `case`, or {'skipped': reason} / {'error': ...}."""
  if case == "variable" and not grpo_step_takes_lengths():
    return {"skipped": "benchmarks/grpo_step.py has no --lengths_file flag"}
  argv = grpo_step_argv(args, lengths_file if case == "variable" else "")
  print("$ " + " ".join(argv[1:]), flush=True)
  proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False,
                        env=_child_env(args.small, jax_cpu=False))
  print(proc.stdout, end="", flush=True)
  if proc.returncode:
    return {"error": f"grpo_step.py exited with {proc.returncode}"}
  try:
    return parse_grpo_step(proc.stdout)
  except ValueError as e:
    return {"error": str(e)}


# ------------------------------------------------------------------------------------------------
# TRL: this script with --worker trl in a child process
# ------------------------------------------------------------------------------------------------
def run_trl(args, case: str, lengths_file: str, workdir: str) -> dict:
  """The TRL worker's result for `case`, or {'error': ...}."""
  result_file = os.path.join(workdir, f"trl-{case}.json")
  argv = [sys.executable, os.path.abspath(__file__), "--worker", "trl", "--case", case,
          "--lengths_file", lengths_file, "--worker_out", result_file, "--preset", args.preset,
          "--dtype", args.dtype, "--prompts", str(args.prompts),
          "--num_generations", str(args.num_generations), "--prompt_len", str(args.prompt_len),
          "--new_tokens", str(args.new_tokens), "--num_iterations", str(args.num_iterations),
          "--beta", str(args.beta), "--remat", args.remat,
          "--gradient_accumulation_steps", str(args.gradient_accumulation_steps),
          "--repeats", str(args.repeats), "--seed", str(args.seed)]
  print("$ " + " ".join(argv[1:]), flush=True)
  proc = subprocess.run(argv, check=False, env=_child_env(args.small, jax_cpu=True))
  if proc.returncode or not os.path.exists(result_file):
    return {"error": f"the TRL worker exited with {proc.returncode}"}
  with open(result_file) as f:
    return json.load(f)


def build_tokenizer(vocab_size: int):
  """A PreTrainedTokenizerFast over the words <pad> <eos> <unk> w3 ... w{vocab_size-1}, split on
  whitespace: one id a word, so a prompt of P words is P tokens."""
  from tokenizers import (  # pylint: disable=import-outside-toplevel
      Tokenizer, models, pre_tokenizers)
  from transformers import PreTrainedTokenizerFast  # pylint: disable=import-outside-toplevel

  vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
  vocab.update({f"w{i}": i for i in range(3, vocab_size)})
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                 unk_token="<unk>", padding_side="left")


def prompt_texts(count: int, prompt_len: int, vocab_size: int, seed: int) -> list[str]:
  """`count` prompts of `prompt_len` random words (no special ones)."""
  ids = np.random.default_rng(seed).integers(3, vocab_size, size=(count, prompt_len))
  return [" ".join(f"w{i}" for i in row) for row in ids]


def save_random_model(args, tokenizer, path: str):
  """Random weights of --preset as a transformers checkpoint in `path` (with the tokenizer)."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  from r1jax import hf  # pylint: disable=import-outside-toplevel
  from r1jax.config import get_config  # pylint: disable=import-outside-toplevel

  try:
    config = get_config(args.preset, dtype=args.dtype, param_dtype=args.dtype)
  except ValueError as e:
    raise SystemExit(f"--preset: {e}")
  spec = hf.config_to_hf(config)
  spec.update(bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
              pad_token_id=tokenizer.pad_token_id)
  hf_config = transformers.AutoConfig.for_model(spec.pop("model_type"), **spec)
  torch.manual_seed(args.seed)
  with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # initializes faster there
    model = transformers.AutoModelForCausalLM.from_config(hf_config,
                                                          dtype=getattr(torch, args.dtype))
  model.generation_config.eos_token_id = tokenizer.eos_token_id
  model.generation_config.pad_token_id = tokenizer.pad_token_id
  model.save_pretrained(path)
  tokenizer.save_pretrained(path)
  return config


def forced_lengths_processor(lengths, eos_id: int):
  """A transformers LogitsProcessor that ends row r after exactly lengths[r] tokens: EOS is
  masked before, and is the only choice at, token lengths[r] - 1. lengths: [R] int tensor on the
  model's device, R the generate batch."""
  import torch  # pylint: disable=import-outside-toplevel
  from transformers import LogitsProcessor  # pylint: disable=import-outside-toplevel

  class ForcedLengths(LogitsProcessor):

    def __init__(self):
      self.prompt_width = None

    def __call__(self, input_ids, scores):  # [R,S] ids so far, [R,V] scores of token S
      if scores.shape[0] != lengths.shape[0]:
        raise ValueError(f"generate got {scores.shape[0]} rows; the lengths are for "
                         f"{lengths.shape[0]}")
      t = input_ids.shape[1] - self.prompt_width  # index of the token being chosen
      eos = torch.where(lengths - 1 > t, -float("inf"), scores[:, eos_id])
      out = scores.masked_fill((lengths - 1 == t)[:, None], -float("inf"))  # one copy, no sync
      out[:, eos_id] = eos
      return out

  return ForcedLengths()


def trl_worker(args) -> int:
  """Runs TRL's GRPOTrainer for --repeats + 1 cycles; writes its phases to --worker_out."""
  import datasets  # pylint: disable=import-outside-toplevel
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  import trl  # pylint: disable=import-outside-toplevel

  with open(args.lengths_file) as f:
    target = [int(x) for x in json.load(f)]
  rows = args.prompts * args.num_generations
  if len(target) != rows or not all(1 <= x <= args.new_tokens for x in target):
    raise SystemExit(f"--lengths_file={args.lengths_file!r} must hold {rows} ints in "
                     f"[1, {args.new_tokens}]")
  cuda = torch.cuda.is_available()
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  from r1jax.config import get_config  # pylint: disable=import-outside-toplevel
  vocab_size = get_config(args.preset).vocab_size
  tokenizer = build_tokenizer(vocab_size)
  cycles = args.repeats + 1
  prompts = prompt_texts(args.prompts * cycles, args.prompt_len, vocab_size, args.seed)
  # Dataset.from_dict fails on some images (fingerprint hashing of pyarrow's MonthDayNano type).
  dataset = datasets.Dataset(datasets.table.InMemoryTable(pa.table({"prompt": prompts})),
                             fingerprint=f"vs_trl_{args.seed}")
  events = []  # (phase, seconds, end time)

  def timed(phase, fn, *a, **kw):
    sync()
    start = time.perf_counter()
    out = fn(*a, **kw)
    sync()
    end = time.perf_counter()
    events.append((phase, end - start, end))
    return out

  generated = []

  class TimedGRPOTrainer(trl.GRPOTrainer):
    """GRPOTrainer with its phases timed (see the module docstring)."""

    in_scoring = False

    def _generate_single_turn(self, *a, **kw):
      out = timed("rollout", super()._generate_single_turn, *a, **kw)
      generated.append([len(ids) for ids in out[0]])
      return out

    def _calculate_rewards(self, *a, **kw):
      return timed("rewards", super()._calculate_rewards, *a, **kw)

    def _get_per_token_logps_and_entropies(self, model, *a, **kw):
      fn = super()._get_per_token_logps_and_entropies
      if not self.in_scoring:
        return fn(model, *a, **kw)
      return timed("ref_logprobs" if model is self.ref_model else "old_logprobs", fn, model, *a,
                   **kw)

    def _generate_and_score_completions(self, *a, **kw):
      self.in_scoring = True
      try:
        return timed("scoring", super()._generate_and_score_completions, *a, **kw)
      finally:
        self.in_scoring = False

  marks, step_times = [], []

  class CycleTimer(transformers.TrainerCallback):
    """Times each optimizer step and marks the end of each generation cycle."""

    begin = 0.0

    def on_train_begin(self, *a, **kw):
      sync()
      marks.append(time.perf_counter())

    def on_step_begin(self, *a, **kw):
      sync()
      self.begin = time.perf_counter()

    def on_step_end(self, _args, state, *a, **kw):
      sync()
      now = time.perf_counter()
      step_times.append(now - self.begin)
      if state.global_step % args.num_iterations == 0:
        marks.append(now)

  bf16 = args.dtype == "bfloat16"
  with tempfile.TemporaryDirectory(prefix="vs_trl_") as tmp:
    model_dir = os.path.join(tmp, "model")
    save_random_model(args, tokenizer, model_dir)
    config = trl.GRPOConfig(
        output_dir=os.path.join(tmp, "out"),
        per_device_train_batch_size=rows // args.gradient_accumulation_steps,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_generations=args.num_generations, max_completion_length=args.new_tokens,
        num_iterations=args.num_iterations, beta=args.beta, bf16=bf16 and cuda,
        gradient_checkpointing=args.remat != "none", max_steps=args.num_iterations * cycles,
        model_init_kwargs={"dtype": args.dtype}, learning_rate=1e-6, seed=args.seed,
        logging_steps=10 ** 6, save_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=not cuda, dataloader_num_workers=0)

    def cheap_reward(completions, **_):
      return [float(len(c) % 7) for c in completions]

    trainer = TimedGRPOTrainer(model=model_dir, reward_funcs=cheap_reward, args=config,
                               train_dataset=dataset, processing_class=tokenizer,
                               callbacks=[CycleTimer()])
    processor = forced_lengths_processor(
        torch.tensor(target, device=trainer.model.device), tokenizer.eos_token_id)
    generate = trainer.model.generate

    def generate_forced(*a, **kw):  # the unwrapped model of `_generate_single_turn`
      processor.prompt_width = kw["input_ids"].shape[1]
      return generate(*a, logits_processor=transformers.LogitsProcessorList([processor]), **kw)

    trainer.model.generate = generate_forced
    trainer.train()

  if len(marks) != cycles + 1:
    raise SystemExit(f"the TRL run marked {len(marks) - 1} generation cycles, not {cycles}")
  per_cycle = []
  for begin, end in zip(marks[:-1], marks[1:]):
    got = {p: 0.0 for p in PHASES + ("scoring",)}
    for phase, seconds, at in events:
      if begin < at <= end:
        got[phase] += seconds
    got["other"] = got["scoring"] - sum(got[p] for p in ("rollout", "rewards", "old_logprobs",
                                                          "ref_logprobs"))
    got["total"] = end - begin
    got["update"] = got["total"] - got.pop("scoring")
    per_cycle.append(got)
  timed_cycles = per_cycle[1:]
  median = {k: float(np.median([c[k] for c in timed_cycles])) for k in PHASES + ("total",)}
  median["first_step"] = per_cycle[0]["total"]
  # Optimizer steps without generation: every step of a cycle but its first.
  plain = [s for i, s in enumerate(step_times)
           if i % args.num_iterations and i >= args.num_iterations]
  result = dict(median, generated_tokens=int(np.median([sum(g) for g in generated])),
                lengths_match=all(g == target for g in generated),
                optimizer_step=float(np.median(plain)) if plain else None,
                device=torch.cuda.get_device_name(0) if cuda else "cpu",
                versions={"torch": torch.__version__, "transformers": transformers.__version__,
                          "trl": trl.__version__, "datasets": datasets.__version__},
                cycles=per_cycle)
  with open(args.worker_out, "w") as f:
    json.dump(result, f, indent=1)
  return 0


# ------------------------------------------------------------------------------------------------
# The comparison
# ------------------------------------------------------------------------------------------------
def ratio(trl_s, r1jax_s):
  """TRL seconds / r1jax seconds, or None where either is missing or r1jax's is not > 0."""
  if trl_s is None or r1jax_s is None or r1jax_s <= 0:
    return None
  return trl_s / r1jax_s


def case_table(r1: dict, trl: dict) -> list[tuple]:
  """[(row, r1jax s, TRL s, TRL / r1jax)] of a case; None where a side has no number."""
  return [(k, r1.get(k), trl.get(k), ratio(trl.get(k), r1.get(k))) for k in ROWS]


def format_table(rows: list[tuple]) -> str:
  def cell(x, fmt):
    return "n/a" if x is None else format(x, fmt)

  lines = ["phase | r1jax s | TRL s | TRL / r1jax"]
  lines += [f"{k} | {cell(a, '.3f')} | {cell(b, '.3f')} | {cell(r, '.2f')}" for k, a, b, r in rows]
  return "\n".join(lines)


def versions() -> dict:
  out = {}
  for name in VERSIONED:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def main(argv=None):
  args = parse_args(argv)
  if args.worker == "trl":
    return trl_worker(args)
  rows = args.prompts * args.num_generations
  result = {"date": str(datetime.date.today()), "versions": versions(),
            "config": {k: getattr(args, k) for k in (
                "preset", "dtype", "prompts", "num_generations", "prompt_len", "new_tokens",
                "num_iterations", "beta", "gradient_accumulation_steps", "remat", "repeats",
                "seed", "small")},
            "cases": {}}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

  def save():
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)

  failed = False
  with tempfile.TemporaryDirectory(prefix="vs_trl_") as workdir:
    for case in args.cases:
      lengths = case_lengths(case, rows, args.new_tokens, args.seed)
      lengths_file = os.path.join(workdir, f"lengths-{case}.json")
      with open(lengths_file, "w") as f:
        json.dump(lengths.tolist(), f)
      entry = {"lengths": {"mean": float(lengths.mean()), "max": int(lengths.max()),
                           "min": int(lengths.min()), "sum": int(lengths.sum())}}
      result["cases"][case] = entry
      print(f"== case {case}: {rows} rows, completion lengths mean {lengths.mean():.1f}, "
            f"max {lengths.max()}, {lengths.sum()} tokens", flush=True)
      for side in args.sides:
        start = time.perf_counter()
        if side == "r1jax":
          got = run_r1jax(args, case, lengths_file)
        else:
          got = run_trl(args, case, lengths_file, workdir)
        got["wall_s"] = time.perf_counter() - start
        errors = [got["error"]] if "error" in got else []
        if got.get("lengths_match") is False:
          errors.append("TRL's completions do not have the forced lengths")
        if "generated_tokens" in got and got["generated_tokens"] != lengths.sum():
          errors.append(f"generated {got['generated_tokens']} tokens a step, not the "
                        f"{lengths.sum()} of the lengths")
        if errors:
          got["error"], failed = "; ".join(errors), True
        entry[side] = got
        save()
      numbers = {s: entry.get(s, {}) for s in SIDES}
      table = case_table(*(n if "error" not in n else {} for n in (numbers["r1jax"],
                                                                  numbers["trl"])))
      entry["ratio"] = {k: r for k, _, _, r in table}
      save()
      print(f"\n== {case}: device {numbers['r1jax'].get('device') or numbers['trl'].get('device')}")
      for side in SIDES:
        note = numbers[side].get("error") or numbers[side].get("skipped")
        if note:
          print(f"{side}: {note}")
      print(format_table(table))
      if numbers["trl"].get("optimizer_step") is not None:
        print(f"TRL optimizer step without generation: {numbers['trl']['optimizer_step']:.3f} s")
  print("versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()))
  print(f"wrote {args.out}")
  print(json.dumps({k: v for k, v in result.items()}, default=str))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
