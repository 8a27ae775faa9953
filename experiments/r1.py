r"""DeepSeek-R1's four-stage pipeline (§2.3) from one flagfile.

  python experiments/r1.py --flagfile=experiments/configs/r1_tiny.flags

  0_base               evaluation of the base policy (for the summary table)
  1_cold_start_sft     SFT on a small set of long, readable reasoning traces (§2.3.1)
  2_reasoning_rl       GRPO with accuracy + format + language-consistency rewards (§2.3.2)
  3_rejection_sft      sample the stage-2 policy, keep correct / well-formed / readable /
                       distinct completions, SFT on them (§2.3.3; from the base, as the paper
                       fine-tunes DeepSeek-V3-Base)
  4_final_rl           a second GRPO stage from the stage-3 policy (§2.3.4, reasoning prompts)

Each stage writes its checkpoints, metrics, samples and evaluation into <workdir>/<stage>/,
exports its final policy as an HF directory <stage>/policy for the next stage, and marks itself
done with <stage>/DONE.json. Rerunning skips finished stages and resumes a partly done one from
its checkpoints. <workdir>/summary.md tabulates the held-out pass@1 / cons@k after each stage.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import os
import time
from typing import Optional

from absl import app, flags

import common  # noqa: F401  (defines the shared flags; adds the repo to sys.path)

# pylint: disable=wrong-import-position
import jax  # noqa: E402
import numpy as np  # noqa: E402

from r1jax import eval as r1eval  # noqa: E402
from r1jax import checkpoint, hf, language, logs, model, rewards  # noqa: E402
from r1jax import runner, sft, tasks, trainer  # noqa: E402
from r1jax.tokenizer import CharTokenizer  # noqa: E402

FLAGS = flags.FLAGS
log = logging.getLogger("r1jax")

# --language_weight is a shared flag of experiments/common.py.
flags.DEFINE_string("language", "en", "Target language of the chain of thought (a code of "
                    "r1jax.language.LANGUAGE_SCRIPTS or a script name).")
flags.DEFINE_enum("language_vocabulary", "auto", ["auto", "none", "cold_start"],
                  "Target-language words: 'cold_start' = the words of the cold-start traces "
                  "(the char-level miniature), 'none' = script detection only, 'auto' = "
                  "cold_start for the char tokenizer, else none.")
flags.DEFINE_string("language_vocabulary_data", "", "JSONL of readable traces whose chain-of-"
                    "thought words are the vocabulary (default: the cold-start traces); e.g. the "
                    "sft_data.jsonl a teacher was trained on.")
# -- SFT stages --------------------------------------------------------------------------------
flags.DEFINE_string("cold_start_data", "", "JSONL (prompt, completion) of cold-start traces; "
                    "default: r1jax.corpus.correct_traces of the training problems.")
flags.DEFINE_integer("cold_start_num_examples", 256, "Cold-start traces generated.")
flags.DEFINE_string("cold_start_style", "long", "corpus.correct_traces style.")
flags.DEFINE_string("cold_start_teacher", "", "HF directory of an R1-Zero policy whose outputs "
                    "become the cold-start data, as in the paper (R1-Zero outputs in a readable "
                    "format): it answers --cold_start_num_examples training problems "
                    "--cold_start_samples times, and per problem its first right completion "
                    "that corpus.readable_trace can rewrite as a long readable trace of at most "
                    "--max_completion_length tokens is kept. Default: corpus.correct_traces.")
flags.DEFINE_integer("cold_start_samples", 4, "--cold_start_teacher samples per problem.")
flags.DEFINE_float("cold_start_temperature", 0.6, "--cold_start_teacher sampling temperature.")
flags.DEFINE_enum("cold_start_search_order", "random", ["random", "systematic"],
                  "corpus.correct_traces search_order: random misses then a looked-up solution, "
                  "or a real search in corpus.systematic_attempts order up to its first hit.")
flags.DEFINE_integer("cold_start_max_misses", 2, "corpus.correct_traces max_misses: failed "
                     "attempts written before the solution, at most.")
flags.DEFINE_float("cold_start_epochs", 2.0, "Epochs of cold-start SFT.")
flags.DEFINE_integer("sft_batch_size", 16, "SFT batch size.")
flags.DEFINE_float("sft_learning_rate", 1e-3, "SFT AdamW learning rate.")
flags.DEFINE_enum("sft_lr_scheduler_type", "cosine", ["constant", "linear", "cosine"],
                  "SFT schedule after warm-up.")
flags.DEFINE_integer("sft_warmup_steps", 10, "SFT warm-up steps.")
flags.DEFINE_float("sft_weight_decay", 0.0, "SFT AdamW weight decay.")
flags.DEFINE_integer("sft_max_completion_length", 0, "SFT completion tokens (0: "
                     "--max_completion_length).")
flags.DEFINE_integer("sft_max_steps", 0, "Cap on each SFT stage's steps (0: from epochs).")
# -- rejection sampling --------------------------------------------------------------------------
flags.DEFINE_integer("rejection_num_prompts", 256, "Training prompts sampled in stage 3.")
flags.DEFINE_integer("rejection_num_samples", 8, "Samples per prompt.")
flags.DEFINE_float("rejection_temperature", 1.0, "Sampling temperature of rejection sampling.")
flags.DEFINE_float("rejection_top_p", 1.0, "Top-p of rejection sampling.")
flags.DEFINE_float("rejection_min_language_score", 0.95, "Minimum language consistency.")
flags.DEFINE_integer("rejection_max_per_prompt", 4, "Distinct completions kept per prompt.")
flags.DEFINE_integer("rejection_max_paragraph_chars", 0, "Drop CoTs with a longer paragraph.")
flags.DEFINE_float("rejection_sft_epochs", 2.0, "Epochs of SFT on the rejection samples "
                   "(the paper: two).")
flags.DEFINE_enum("rejection_sft_init", "base", ["base", "cold_start", "reasoning_rl"],
                  "Policy stage 3 fine-tunes (the paper: the base model).")
flags.DEFINE_bool("rejection_include_cold_start", False, "Add the cold-start traces to the "
                  "stage-3 SFT data.")
# -- final RL ------------------------------------------------------------------------------------
flags.DEFINE_integer("final_rl_max_steps", 0, "GRPO steps of stage 4 (0: --max_steps).")
flags.DEFINE_float("final_rl_learning_rate", 0.0, "Stage-4 learning rate (0: --learning_rate).")

STAGES = ("0_base", "1_cold_start_sft", "2_reasoning_rl", "3_rejection_sft", "4_final_rl")


# ----------------------------------------------------------------------------------------------
# Flag -> config helpers (also used by distill.py and compare_distill_rl.py)
# ----------------------------------------------------------------------------------------------
def build_task():
  """(task, train problems, held-out problems)."""
  task = tasks.get_task(FLAGS.task, data_dir=FLAGS.data_dir or None,
                        **common.parse_task_options(FLAGS.task_options))
  train = task.split("train", FLAGS.seed)
  if FLAGS.num_train_problems:
    train = train[:FLAGS.num_train_problems]
  return task, train, task.split("test", FLAGS.eval_seed)[:FLAGS.eval_num_problems]


def format_prompt(problem) -> str:
  return tasks.format_problem(problem, FLAGS.template)


def prefix() -> str:
  return tasks.completion_prefix(FLAGS.template)


def reward_fn(task, language_reward: str = "", language_weight: float = 0.0):
  """score_completions with format + accuracy (+ the named language reward)."""
  extra = ((language_reward, language_weight),) if language_reward and language_weight else ()
  cfg = rewards.RewardConfig(format_weight=FLAGS.format_weight,
                             accuracy_weight=FLAGS.accuracy_weight, extra=extra,
                             timeout_s=FLAGS.reward_timeout_s)
  return functools.partial(rewards.score_completions, reward_kind=task.reward_kind, config=cfg,
                           prefix=prefix())


def sft_config(num_examples: int, epochs: float, steps: int = 0) -> sft.SFTConfig:
  """SFT for `epochs` over `num_examples` (capped by --sft_max_steps), or exactly `steps`."""
  if not steps:
    steps = sft.steps_for_epochs(num_examples, FLAGS.sft_batch_size, epochs)
    if FLAGS.sft_max_steps:
      steps = min(steps, FLAGS.sft_max_steps)
  return sft.SFTConfig(
      batch_size=FLAGS.sft_batch_size, max_prompt_length=FLAGS.max_prompt_length,
      max_completion_length=FLAGS.sft_max_completion_length or FLAGS.max_completion_length,
      learning_rate=FLAGS.sft_learning_rate, lr_scheduler_type=FLAGS.sft_lr_scheduler_type,
      warmup_steps=min(FLAGS.sft_warmup_steps, steps // 2),
      weight_decay=FLAGS.sft_weight_decay, adam_beta1=FLAGS.adam_beta1,
      adam_beta2=FLAGS.adam_beta2, max_grad_norm=FLAGS.max_grad_norm, max_steps=steps,
      remat=FLAGS.remat, logprob_chunk_size=FLAGS.logprob_chunk_size, seed=FLAGS.seed)


class Policy:
  """Model config, tokenizer and where tokenizer files live (copied into exported policies)."""

  def __init__(self, model_config, tokenizer, tokenizer_dir=None):
    self.model_config, self.tokenizer, self.tokenizer_dir = model_config, tokenizer, tokenizer_dir
    self.add_bos = tokenizer.bos_id is not None

  def load(self, path: str):
    """Params of an exported stage policy, in the flags' dtypes."""
    config, params = hf.load_hf_checkpoint(path)
    if model.param_shapes(config) != model.param_shapes(self.model_config):
      raise ValueError(f"{path}: parameter shapes differ from the base policy's; use a fresh "
                       "--workdir for another model")
    return jax.tree.map(lambda p: p.astype(self.model_config.storage_dtype), params)

  def export(self, path: str, params):
    common.export_policy(path, self.model_config, params, self.tokenizer_dir)


def load_policy_dir(path: str, like: Policy, flag: str):
  """(Policy, params) of an exported policy directory with its own shapes, sharing `like`'s
  tokenizer (a teacher); `flag` names the flag that gave `path` in errors."""
  if not os.path.isfile(os.path.join(path, "config.json")):
    raise FileNotFoundError(f"--{flag}={path}: no config.json there (an exported policy "
                            "directory, e.g. <workdir>/policy of experiments/r1_zero.py)")
  config, params = hf.load_hf_checkpoint(path)
  config = config.replace(dtype=FLAGS.dtype, param_dtype=FLAGS.param_dtype)
  if config.vocab_size < like.tokenizer.vocab_size:
    raise ValueError(f"--{flag}={path}: vocabulary of {config.vocab_size} ids is smaller than "
                     "the policy's tokenizer")
  params = jax.tree.map(lambda p: p.astype(config.storage_dtype), params)
  return Policy(config, like.tokenizer, like.tokenizer_dir), params


def load_base_policy():
  """(Policy, base params) from --init_checkpoint / --model_preset / --tokenizer."""
  model_config, params, tokenizer = common.load_policy()
  return Policy(model_config, tokenizer, common.tokenizer_dir()), params


def make_eval_fn(policy: Policy, problems, score_fn, vocabulary=None, seed_offset: int = 1):
  """(params, step) -> (report, records) on the held-out problems, with the mean language
  consistency of the sampled chains of thought added to the report."""

  def eval_fn(params, step):
    report, records = r1eval.evaluate_policy(
        params, policy.model_config, policy.tokenizer, problems, format_prompt=format_prompt,
        score_fn=score_fn, extract_fn=rewards.extract_answer,
        num_samples=FLAGS.eval_num_samples,
        key=jax.random.fold_in(jax.random.PRNGKey(FLAGS.seed + seed_offset), step),
        temperature=FLAGS.eval_temperature, top_p=FLAGS.eval_top_p,
        max_prompt_length=FLAGS.max_prompt_length, max_new_tokens=FLAGS.max_completion_length,
        batch_size=min(FLAGS.eval_batch_size, len(problems)),
        stop_strings=FLAGS.stop_strings,
        add_bos=policy.add_bos, ks=(1, FLAGS.eval_num_samples))
    scores = [language.language_consistency(language.chain_of_thought(prefix() + c),
                                            FLAGS.language, vocabulary)
              for r in records for c in r["completions"]]
    report["language_consistency"] = float(np.mean(scores)) if scores else 0.0
    report["reflection_rate"] = runner.reflection_rate(
        [c for r in records for c in r["completions"]])
    return report, records

  return eval_fn


# ----------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------
def stage_done(stage_dir: str):
  path = os.path.join(stage_dir, "DONE.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return None


def mark_done(stage_dir: str, info: dict):
  info = dict(info, finished_at=time.strftime("%Y-%m-%d %H:%M:%S"))
  os.makedirs(stage_dir, exist_ok=True)
  from r1jax.checkpoint import save_json  # pylint: disable=import-outside-toplevel
  save_json(os.path.join(stage_dir, "DONE.json"), info)
  return info


def final_eval(stage_dir: str):
  rows = logs.read_jsonl(os.path.join(stage_dir, "eval_metrics.jsonl"))
  return rows[-1] if rows else {}


def run_sft_stage(stage_dir, policy: Policy, init_params, examples, epochs, eval_fn,
                  meta=None, steps: int = 0) -> dict:
  """SFT on `examples` (written to <stage>/sft_data.jsonl), resumable; evaluates the result,
  exports <stage>/policy and marks the stage done."""
  if not examples:
    raise ValueError(f"{stage_dir}: no SFT examples. If they come from rejection sampling, "
                     "nothing passed the filters: sample more, train the sampled policy longer, "
                     "loosen the filters or (stage 3) set --rejection_include_cold_start")
  os.makedirs(stage_dir, exist_ok=True)
  sft.write_examples(os.path.join(stage_dir, "sft_data.jsonl"), examples)
  cfg = sft_config(len(examples), epochs, steps)

  def sft_eval(params, step):
    report, records = eval_fn(params, step)
    logs.write_samples(os.path.join(stage_dir, "samples", f"step_{step:06d}.jsonl"), records)
    return report

  state = sft.run_sft(policy.model_config, init_params, policy.tokenizer, examples, cfg,
                      stage_dir, save_steps=FLAGS.save_steps,
                      save_total_limit=FLAGS.save_total_limit, add_bos=policy.add_bos,
                      meta=meta, eval_fn=sft_eval, log_every=10)
  policy.export(os.path.join(stage_dir, "policy"), state["params"])
  if FLAGS.plot:
    logs.plot_run(stage_dir)
  return mark_done(stage_dir, {"num_examples": len(examples), "steps": cfg.max_steps,
                               "eval": final_eval(stage_dir)})


def run_rl_stage(stage_dir, policy: Policy, init_params, train, score_fn, eval_fn,
                 max_steps: int, learning_rate: float, meta=None) -> dict:
  """GRPO (runner.run_grpo, resumable) from `init_params`; exports and marks the stage done."""
  cfg = common.train_config(max_steps, learning_rate)
  grpo_trainer = trainer.GRPOTrainer(policy.model_config, cfg, common.grpo_config(),
                                     policy.tokenizer, train, format_prompt, score_fn,
                                     add_bos=policy.add_bos)
  run = runner.RunConfig(workdir=stage_dir, save_steps=FLAGS.save_steps,
                         save_total_limit=FLAGS.save_total_limit, eval_steps=FLAGS.eval_steps,
                         plot=FLAGS.plot)
  state = runner.run_grpo(grpo_trainer, init_params, run, eval_fn=eval_fn, meta=meta)
  policy.export(os.path.join(stage_dir, "policy"), state["params"])
  return mark_done(stage_dir, {"steps": max_steps, "eval": final_eval(stage_dir)})


def run_eval_stage(stage_dir, params, eval_fn) -> dict:
  os.makedirs(stage_dir, exist_ok=True)
  report, records = eval_fn(params, 0)
  logs.write_samples(os.path.join(stage_dir, "samples", "step_000000.jsonl"), records)
  with open(os.path.join(stage_dir, "eval_metrics.jsonl"), "w") as f:
    f.write(json.dumps(dict(report, step=0)) + "\n")
  return mark_done(stage_dir, {"eval": dict(report, step=0)})


def cold_start_examples(train, policy: Optional[Policy] = None, task=None,
                        stage_dir: str = "") -> list[sft.Example]:
  """The cold-start traces: --cold_start_data; else, with --cold_start_teacher, an R1-Zero
  policy's right completions rewritten readable (`teacher_cold_start`); else
  corpus.correct_traces of training problems (long, readable, correct Countdown traces: the
  stand-in for the paper's few thousand human-readable long CoTs)."""
  if FLAGS.cold_start_data:
    return sft.load_examples(FLAGS.cold_start_data)
  if FLAGS.cold_start_teacher:
    return teacher_cold_start(stage_dir, policy, train, reward_fn(task))
  from r1jax import corpus  # pylint: disable=import-outside-toplevel
  problems = train[:FLAGS.cold_start_num_examples]
  pairs = corpus.correct_traces(problems, FLAGS.seed, style=FLAGS.cold_start_style,
                                max_misses=FLAGS.cold_start_max_misses, template=FLAGS.template,
                                search_order=FLAGS.cold_start_search_order)
  return [sft.Example(prompt, completion, {"question": p.question, "gold": p.answer,
                                           "source": "cold_start"})
          for p, (prompt, completion) in zip(problems, pairs)]


def teacher_cold_start(stage_dir: str, policy: Policy, train, score_fn) -> list[sft.Example]:
  """R1 §2.3.1's cold start from R1-Zero: --cold_start_teacher samples the first
  --cold_start_num_examples training problems (cached under <stage_dir>/teacher, as rejection
  sampling caches), and per problem the first right, well-formed completion that
  corpus.readable_trace rewrites (a search in the compact notation with right arithmetic) and
  that fits --max_completion_length tokens becomes a trace. Counts go to
  <stage_dir>/teacher/cold_start_stats.json."""
  from r1jax import corpus  # pylint: disable=import-outside-toplevel
  from r1jax.checkpoint import save_json  # pylint: disable=import-outside-toplevel
  teacher, params = load_policy_dir(FLAGS.cold_start_teacher, policy, "cold_start_teacher")
  problems = train[:FLAGS.cold_start_num_examples]
  rcfg = sft.RejectionConfig(min_language_score=0.0, language=FLAGS.language,
                             max_per_prompt=0)  # every right distinct one; the rewrite picks
  teacher_dir = os.path.join(stage_dir, "teacher")
  kept, stats = rejection_sample(teacher_dir, teacher, params, problems, score_fn, rcfg,
                                 FLAGS.cold_start_samples, FLAGS.cold_start_temperature,
                                 seed_offset=5)
  by_question = {p.question: p for p in problems}
  out, counts, done = [], collections.Counter(), set()
  for e in kept:
    question = e.meta["question"]
    if question in done:
      continue
    text = corpus.readable_trace(by_question[question], e.completion)
    if text is None:
      counts["not_rewritten"] += 1
    elif len(policy.tokenizer.encode(text)) > FLAGS.max_completion_length:
      counts["too_long"] += 1
    else:
      done.add(question)
      out.append(sft.Example(e.prompt, text, dict(e.meta, source="cold_start_teacher")))
  counts = dict(counts, problems=len(problems), right_samples=len(kept), traces=len(out))
  os.makedirs(teacher_dir, exist_ok=True)
  save_json(os.path.join(teacher_dir, "cold_start_stats.json"), dict(counts, teacher=stats))
  log.info("cold start from %s: %d traces for %d problems (%s)", FLAGS.cold_start_teacher,
           len(out), len(problems), counts)
  if not out:
    raise ValueError(f"--cold_start_teacher={FLAGS.cold_start_teacher}: no right completion "
                     f"could be rewritten ({counts}); sample more or train the teacher longer")
  return out


def rejection_setup(train, vocab):
  """Stage 3's prompts (a seeded draw of --rejection_num_prompts training problems) and its
  sft.RejectionConfig from the flags; experiments/rejection_sample.py uses the same."""
  order = np.random.default_rng(FLAGS.seed + 3).permutation(len(train))
  prompts = [train[i] for i in order[:FLAGS.rejection_num_prompts]]
  rcfg = sft.RejectionConfig(min_language_score=FLAGS.rejection_min_language_score,
                             language=FLAGS.language, vocabulary=vocab,
                             max_paragraph_chars=FLAGS.rejection_max_paragraph_chars,
                             max_per_prompt=FLAGS.rejection_max_per_prompt)
  return prompts, rcfg


def rejection_sample(stage_dir, policy: Policy, params, problems, score_fn, rcfg,
                     num_samples: int, temperature: float, top_p: float = 1.0,
                     seed_offset: int = 7):
  """Samples and filters (§2.3.3), caching every sample (rejection_samples.jsonl), the kept
  ones (rejection.jsonl) and the counts (rejection_stats.json), so that a resumed stage does
  not sample again; delete rejection_stats.json to re-filter the same samples with other
  filters. Returns (examples, stats)."""
  data_path = os.path.join(stage_dir, "rejection.jsonl")
  stats_path = os.path.join(stage_dir, "rejection_stats.json")
  if os.path.exists(stats_path):
    with open(stats_path) as f:
      stats = json.load(f)
    return (sft.load_examples(data_path) if stats["kept"] else []), stats
  os.makedirs(stage_dir, exist_ok=True)
  t0 = time.perf_counter()
  samples_path = os.path.join(stage_dir, "rejection_samples.jsonl")
  records = logs.read_jsonl(samples_path)  # all samples, kept so the filters can be re-run
  if len(records) != len(problems):
    _, records = r1eval.evaluate_policy(
        params, policy.model_config, policy.tokenizer, problems, format_prompt=format_prompt,
        score_fn=score_fn, extract_fn=rewards.extract_answer, num_samples=num_samples,
        key=jax.random.PRNGKey(FLAGS.seed + seed_offset), temperature=temperature, top_p=top_p,
        max_prompt_length=FLAGS.max_prompt_length, max_new_tokens=FLAGS.max_completion_length,
        batch_size=min(FLAGS.eval_batch_size, len(problems)),
        stop_strings=FLAGS.stop_strings,
        add_bos=policy.add_bos, progress=False)
    logs.write_samples(samples_path, records)
  examples, stats = sft.select_completions(records, rcfg, prefix())
  stats = dict(stats, prompts=len(problems), samples_per_prompt=num_samples,
               temperature=temperature, top_p=top_p, time_s=time.perf_counter() - t0)
  sft.write_examples(data_path, examples)
  from r1jax.checkpoint import save_json  # pylint: disable=import-outside-toplevel
  save_json(stats_path, stats)
  log.info("rejection sampling: kept %d of %d samples (%s)", stats["kept"], stats["sampled"],
           ", ".join(f"{k}={stats[k]}" for k in sft.REJECTION_REASONS if stats[k]))
  return examples, stats


def language_vocabulary(policy: Policy, cold_start):
  mode = FLAGS.language_vocabulary
  if mode == "auto":
    mode = "cold_start" if isinstance(policy.tokenizer, CharTokenizer) else "none"
  if mode == "none":
    return None
  if FLAGS.language_vocabulary_data:
    cold_start = sft.load_examples(FLAGS.language_vocabulary_data)
  return language.vocabulary_from_texts([prefix() + e.completion for e in cold_start],
                                        FLAGS.language)


def write_summary(workdir: str, infos: dict[str, dict]):
  """summary.json and a Markdown table of the held-out metrics after each stage."""
  from r1jax.checkpoint import save_json  # pylint: disable=import-outside-toplevel
  save_json(os.path.join(workdir, "summary.json"), infos)
  cols = ("pass@1", "pass@1_stderr", "cons@k", "format_rate", "language_consistency",
          "completion_length_mean")
  lines = ["| stage | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
  for stage, info in infos.items():
    ev = info.get("eval", {})
    lines.append(f"| {stage} | " + " | ".join(
        f"{ev[c]:.3f}" if isinstance(ev.get(c), float) else str(ev.get(c, "")) for c in cols)
                 + " |")
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return "\n".join(lines)


def main(argv):
  del argv
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  logging.getLogger("r1jax").setLevel(logging.INFO)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  meta = common.flag_values()
  policy, base_params = load_base_policy()
  # Host copies: the jitted steps donate their device buffers, and stage 3 restarts from these.
  base_params = jax.device_get(base_params)
  task, train, test = build_task()
  dirs = {s: os.path.join(FLAGS.workdir, s) for s in STAGES}
  infos = {}

  # Stage 1 data first: it defines the miniature's target-language vocabulary.
  cold_path = os.path.join(dirs["1_cold_start_sft"], "sft_data.jsonl")
  cold = (sft.load_examples(cold_path) if os.path.exists(cold_path)
          else cold_start_examples(train, policy, task, dirs["1_cold_start_sft"]))
  vocab = language_vocabulary(policy, cold)
  lang_reward = language.register_language_reward(FLAGS.language, vocab)
  plain_score = reward_fn(task)
  rl_score = reward_fn(task, lang_reward, FLAGS.language_weight)
  eval_fn = make_eval_fn(policy, test, plain_score, vocab)

  def stage(name, run):
    info = stage_done(dirs[name])
    if info is not None:
      log.info("stage %s: done, skipped", name)
    else:
      log.info("stage %s: running", name)
      info = run()
    infos[name] = info
    return info

  stage("0_base", lambda: run_eval_stage(dirs["0_base"], base_params, eval_fn))
  stage("1_cold_start_sft", lambda: run_sft_stage(
      dirs["1_cold_start_sft"], policy, base_params, cold, FLAGS.cold_start_epochs, eval_fn,
      meta))
  stage("2_reasoning_rl", lambda: run_rl_stage(
      dirs["2_reasoning_rl"], policy, policy.load(os.path.join(dirs["1_cold_start_sft"],
                                                               "policy")),
      train, rl_score, eval_fn, FLAGS.max_steps, FLAGS.learning_rate, meta))

  def stage3():
    rl_params = policy.load(os.path.join(dirs["2_reasoning_rl"], "policy"))
    prompts, rcfg = rejection_setup(train, vocab)
    examples, stats = rejection_sample(dirs["3_rejection_sft"], policy, rl_params, prompts,
                                       plain_score, rcfg, FLAGS.rejection_num_samples,
                                       FLAGS.rejection_temperature, FLAGS.rejection_top_p)
    if FLAGS.rejection_include_cold_start:
      examples = examples + cold
    init = {"base": lambda: base_params,
            "cold_start": lambda: policy.load(os.path.join(dirs["1_cold_start_sft"], "policy")),
            "reasoning_rl": lambda: rl_params}[FLAGS.rejection_sft_init]()
    info = run_sft_stage(dirs["3_rejection_sft"], policy, init, examples,
                         FLAGS.rejection_sft_epochs, eval_fn, meta)
    return mark_done(dirs["3_rejection_sft"], dict(info, rejection=stats))

  stage("3_rejection_sft", stage3)
  stage("4_final_rl", lambda: run_rl_stage(
      dirs["4_final_rl"], policy, policy.load(os.path.join(dirs["3_rejection_sft"], "policy")),
      train, rl_score, eval_fn, FLAGS.final_rl_max_steps or FLAGS.max_steps,
      FLAGS.final_rl_learning_rate or FLAGS.learning_rate, meta))
  print(write_summary(FLAGS.workdir, infos))


if __name__ == "__main__":
  checkpoint.run_app(main)
