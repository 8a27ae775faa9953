"""Flags shared by the experiment scripts, and their translation into r1jax's frozen configs.

Only experiments/*.py read absl flags; the library takes the dataclasses built here.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
import jax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from r1jax import grpo, hf, model, sharding, trainer  # noqa: E402
from r1jax.config import get_config  # noqa: E402
from r1jax.tokenizer import load_tokenizer  # noqa: E402

FLAGS = flags.FLAGS

# -- policy -------------------------------------------------------------------------------------
flags.DEFINE_string("model_preset", "tiny", "r1jax.config preset for a randomly initialized policy "
                    "(ignored when --init_checkpoint is given).")
flags.DEFINE_string("init_checkpoint", "", "Hugging Face-format directory (config.json + "
                    "safetensors) with the base policy.")
flags.DEFINE_string("tokenizer", "", "'char', or a directory/tokenizer.json. Default: the "
                    "checkpoint's tokenizer.json if it has one, else 'char'.")
flags.DEFINE_string("dtype", "float32", "Compute dtype: float32 | bfloat16.")
flags.DEFINE_string("param_dtype", "float32", "Parameter storage dtype: float32 | bfloat16.")
# -- task and rewards ---------------------------------------------------------------------------
flags.DEFINE_string("task", "countdown", "countdown | arithmetic | gsm8k | math500 | ...")
flags.DEFINE_string("data_dir", "", "Directory with the task's JSONL files (gsm8k, math500, ...); "
                    "empty: GSM8K and MATH-500 are downloaded from their public sources.")
flags.DEFINE_list("task_options", [], "Task keyword arguments as key=value (ints/floats parsed).")
flags.DEFINE_enum("template", "compact", ["r1_zero", "plain", "compact", "chat"],
                  "Prompt template: r1_zero (DeepSeek-R1 Table 1, for base models) | plain | "
                  "compact (the tiny character-level models) | chat (the checkpoint's own chat "
                  "template, chat_template.jinja or tokenizer_config.json's 'chat_template', with "
                  "the question and the think/answer instruction as the user message; for "
                  "instruct models).")
flags.DEFINE_string("system_prompt", "", "With --template=chat: a system message before the "
                    "question (empty: none, so the template's default system prompt applies).")
flags.DEFINE_string("chat_instruction", None, "With --template=chat: the text after the question "
                    "in the user message. Default: the R1 think/answer instruction with an "
                    "answer example for the task's reward (r1jax.chat.r1_instruction); empty: "
                    "none.")
flags.DEFINE_string("chat_response_prefix", "", "With --template=chat: text written after the "
                    "assistant's header as the start of every response (e.g. '<think>'); the "
                    "format reward counts it as part of the response.")
flags.DEFINE_integer("num_train_problems", 0, "Cap on training problems (0: the whole split).")
flags.DEFINE_float("format_weight", 1.0, "Weight of the format reward.")
flags.DEFINE_float("accuracy_weight", 1.0, "Weight of the accuracy reward.")
flags.DEFINE_float("language_weight", 0.0, "Weight of the language-consistency reward "
                   "(R1 §2.3.2; share of the chain of thought in the target language).")
flags.DEFINE_float("reward_timeout_s", 5.0, "Per-completion reward time limit; over it scores 0.")
# -- GRPO loss (TRL GRPOConfig names) --------------------------------------------------------------
flags.DEFINE_float("beta", 0.04, "KL coefficient (Eq. 1); 0 computes no reference pass.")
flags.DEFINE_float("epsilon", 0.2, "Clip range of the ratio (lower).")
flags.DEFINE_float("epsilon_high", None, "Upper clip range (DAPO clip-higher); default epsilon.")
flags.DEFINE_enum("loss_type", "grpo", ["grpo", "bnpo", "dapo", "dr_grpo"], "Loss aggregation.")
flags.DEFINE_enum("scale_rewards", "group", ["group", "batch", "none"], "Advantage std scaling.")
flags.DEFINE_enum("importance_sampling_level", "token", ["token", "sequence"], "GSPO: sequence.")
flags.DEFINE_bool("mask_truncated_completions", False, "Exclude truncated completions.")
# -- rollouts and optimization ----------------------------------------------------------------------
flags.DEFINE_integer("prompts_per_step", 8, "Prompts per GRPO step (B).")
flags.DEFINE_integer("num_generations", 8, "Completions per prompt (G).")
flags.DEFINE_integer("num_iterations", 1, "μ: optimization passes per generation batch.")
flags.DEFINE_integer("num_minibatches", 1, "Optimizer steps per pass over the generation batch.")
flags.DEFINE_integer("max_prompt_length", 128, "Prompt tokens (left-padded to this).")
flags.DEFINE_integer("max_completion_length", 128, "Generated tokens per completion.")
flags.DEFINE_float("temperature", 1.0, "Sampling temperature (also used in the log-probs).")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.")
flags.DEFINE_integer("top_k", 0, "Top-k sampling (0: off).")
flags.DEFINE_list("stop_strings", [], "Strings that end a completion where its text holds one, "
                  "whatever tokens spell it (e.g. </answer>).")
flags.DEFINE_float("learning_rate", 1e-6, "AdamW learning rate.")
flags.DEFINE_enum("lr_scheduler_type", "constant", ["constant", "linear", "cosine"], "Schedule.")
flags.DEFINE_integer("warmup_steps", 0, "Linear warm-up optimizer steps.")
flags.DEFINE_float("weight_decay", 0.0, "AdamW weight decay.")
flags.DEFINE_float("adam_beta1", 0.9, "AdamW beta1.")
flags.DEFINE_float("adam_beta2", 0.99, "AdamW beta2.")
flags.DEFINE_float("max_grad_norm", 1.0, "Global-norm gradient clipping.")
flags.DEFINE_integer("max_steps", 100, "GRPO steps.")
flags.DEFINE_bool("sync_ref_model", False, "Algorithm 1: reset π_ref ← π_θ periodically.")
flags.DEFINE_integer("ref_model_sync_steps", 64, "Steps per reference reset.")
flags.DEFINE_float("ref_model_mixup_alpha", 1.0, "π_ref ← α π_θ + (1−α) π_ref (1: reset).")
flags.DEFINE_bool("dynamic_sampling", False, "DAPO: replace groups of equal rewards.")
flags.DEFINE_integer("max_resample_rounds", 4, "Dynamic sampling: extra rounds at most.")
flags.DEFINE_integer("overlong_buffer", 0, "DAPO soft overlong punishment: the last this many "
                     "tokens before max_completion_length lower the reward linearly to "
                     "-overlong_penalty at the limit (0: off).")
flags.DEFINE_float("overlong_penalty", 1.0, "Weight of the soft overlong punishment.")
flags.DEFINE_enum("remat", "none", sorted(model.REMAT_POLICIES), "Rematerialization policy.")
flags.DEFINE_integer("logprob_chunk_size", None, "Unembed in chunks of this many positions.")
flags.DEFINE_integer("seed", 0, "Seed of everything: init, data order, sampling.")
# -- devices and memory ---------------------------------------------------------------------------
flags.DEFINE_integer("mesh_data", -1, "Data-parallel mesh axis size (-1: the rest of the devices).")
flags.DEFINE_integer("mesh_fsdp", 1, "FSDP mesh axis size (params and optimizer state sharded).")
flags.DEFINE_integer("mesh_tensor", 1, "Tensor-parallel mesh axis size.")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-host runs).")
flags.DEFINE_integer("num_processes", 1, "Processes (hosts) in a multi-host run.")
flags.DEFINE_integer("process_id", 0, "This process's index in a multi-host run.")
flags.DEFINE_integer("gradient_accumulation_steps", 1, "Micro-batches per optimizer step.")
flags.DEFINE_integer("logprob_batch_size", None, "Rows per chunk of the π_old/π_ref passes.")
flags.DEFINE_integer("length_buckets", 4, "Update and π_old/π_ref passes: rows sorted by "
                     "length into micro-batches, each cut to the shortest of this many lengths "
                     "(multiples of (P + N) / length_buckets) that holds it; 0 or 1: fixed P + N.")
flags.DEFINE_string("adam_mu_dtype", None, "dtype of Adam's first moment (e.g. bfloat16).")
# -- run ----------------------------------------------------------------------------------------
flags.DEFINE_string("workdir", "", "Where the run writes; rerunning with it resumes.")
flags.DEFINE_integer("save_steps", 50, "Checkpoint every this many steps.")
flags.DEFINE_integer("save_total_limit", 3, "Checkpoints kept.")
flags.DEFINE_integer("eval_steps", 0, "Evaluate every this many steps (0: start and end only).")
flags.DEFINE_integer("eval_num_problems", 64, "Held-out problems per evaluation.")
flags.DEFINE_integer("eval_seed", 0, "Seed of the held-out problem set; fixed apart from --seed so "
                     "that runs of different seeds are evaluated on the same problems.")
flags.DEFINE_integer("eval_num_samples", 4, "Samples per problem (pass@1 averaged over k).")
flags.DEFINE_float("eval_temperature", 0.6, "Evaluation temperature (paper: 0.6).")
flags.DEFINE_float("eval_top_p", 0.95, "Evaluation top-p (paper: 0.95).")
flags.DEFINE_integer("eval_batch_size", 16, "Problems per evaluation sampler call.")
flags.DEFINE_bool("plot", True, "Write PNG plots of the curves.")


def setup_logging():
  """r1jax's per-step lines at INFO; the libraries (orbax, jax) at WARNING."""
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("r1jax").setLevel(logging.INFO)
  # The sampler's setting comes from the environment (tools/gpu_jobs/sampler_choice.sh): say which.
  from r1jax import sampling  # pylint: disable=import-outside-toplevel
  logging.getLogger("r1jax").info(
      "sampler: attention %s (R1JAX_SAMPLER_ATTENTION), XLA options %s",
      sampling.DEFAULT_ATTENTION, sampling.COMPILER_OPTIONS)


def parse_task_options(items) -> dict:
  """['digits=3', 'name=x'] -> {'digits': 3, 'name': 'x'}; raises naming --task_options."""
  out = {}
  for item in items:
    if "=" not in item:
      raise ValueError(f"--task_options entry {item!r} is not key=value")
    k, v = item.split("=", 1)
    for cast in (int, float):
      try:
        v = cast(v)
        break
      except ValueError:
        continue
    out[k.strip()] = v
  return out


def load_policy():
  """(model_config, params, tokenizer) from --init_checkpoint or --model_preset."""
  if FLAGS.init_checkpoint:
    if not os.path.isdir(FLAGS.init_checkpoint):
      raise FileNotFoundError(f"--init_checkpoint={FLAGS.init_checkpoint!r} is not a directory")
    config, params = hf.load_hf_checkpoint(FLAGS.init_checkpoint)
    config = config.replace(dtype=FLAGS.dtype, param_dtype=FLAGS.param_dtype)
    params = jax.tree.map(lambda p: p.astype(config.storage_dtype), params)
    has_tok = os.path.exists(os.path.join(FLAGS.init_checkpoint, "tokenizer.json"))
    tok_spec = FLAGS.tokenizer or (FLAGS.init_checkpoint if has_tok else "char")
  else:
    config = get_config(FLAGS.model_preset, dtype=FLAGS.dtype, param_dtype=FLAGS.param_dtype)
    params = model.init_params(config, jax.random.PRNGKey(FLAGS.seed))
    tok_spec = FLAGS.tokenizer or "char"
  tokenizer = load_tokenizer(tok_spec)
  if tokenizer.vocab_size > config.vocab_size:
    raise ValueError(f"tokenizer {tok_spec!r} has {tokenizer.vocab_size} ids but the model's "
                     f"vocabulary has {config.vocab_size} (--model_preset/--init_checkpoint)")
  return config, params, tokenizer


def tokenizer_dir():
  """The directory whose tokenizer files an exported policy copies (None for the char
  tokenizer): --init_checkpoint when it holds tokenizer.json, else a --tokenizer path."""
  if FLAGS.init_checkpoint and os.path.exists(os.path.join(FLAGS.init_checkpoint,
                                                           "tokenizer.json")):
    return FLAGS.init_checkpoint
  if FLAGS.tokenizer and FLAGS.tokenizer != "char":
    return FLAGS.tokenizer if os.path.isdir(FLAGS.tokenizer) else os.path.dirname(FLAGS.tokenizer)
  return None


def prompt_formatter(reward_kind: str):
  """problem -> prompt text under --template (and --system_prompt); `chat` reads the chat
  template from tokenizer_dir() and words the answer instruction for `reward_kind`."""
  from r1jax import tasks  # pylint: disable=import-outside-toplevel
  return tasks.prompt_formatter(FLAGS.template,
                                checkpoint_dir=tokenizer_dir() or FLAGS.init_checkpoint or None,
                                system_prompt=FLAGS.system_prompt, reward_kind=reward_kind,
                                instruction=FLAGS.chat_instruction,
                                response_prefix=FLAGS.chat_response_prefix)


def completion_prefix() -> str:
  """The response text the prompt already wrote, for the format reward's `prefix`."""
  from r1jax import tasks  # pylint: disable=import-outside-toplevel
  return tasks.completion_prefix(FLAGS.template, FLAGS.chat_response_prefix)


def prompt_add_bos(tokenizer) -> bool:
  """Whether prompts get a BOS token in front: when the tokenizer has one, except under
  --template=chat, whose template writes the BOS itself (as transformers' apply_chat_template)."""
  from r1jax import tasks  # pylint: disable=import-outside-toplevel
  return tokenizer.bos_id is not None and tasks.template_adds_bos(FLAGS.template)


def export_policy(path: str, model_config, params, tok_dir=None):
  """Writes `params` as a Hugging Face directory (config.json, safetensors, the tokenizer files
  of `tok_dir`). Sharded params are gathered first; with several processes, process 0 writes."""
  if jax.process_count() > 1:
    params = multihost_utils.process_allgather(params, tiled=True)
  params = jax.device_get(params)
  if jax.process_index() == 0:
    hf.save_hf_checkpoint(path, model_config, params, tokenizer_dir=tok_dir)


def make_mesh():
  """Starts the multi-host runtime if asked, and returns the device mesh (None on one device:
  plain jit, no sharding)."""
  sharding.initialize_distributed(FLAGS.coordinator_address or None, FLAGS.num_processes,
                                  FLAGS.process_id)
  if jax.device_count() == 1:
    return None
  return sharding.make_mesh(sharding.MeshConfig(data=FLAGS.mesh_data, fsdp=FLAGS.mesh_fsdp,
                                                tensor=FLAGS.mesh_tensor))


def train_config(max_steps: Optional[int] = None,
                 learning_rate: Optional[float] = None) -> trainer.TrainConfig:
  """The GRPO trainer's config from the flags (an R1 stage passes its own steps and rate)."""
  return trainer.TrainConfig(
      prompts_per_step=FLAGS.prompts_per_step, num_generations=FLAGS.num_generations,
      max_prompt_length=FLAGS.max_prompt_length,
      max_completion_length=FLAGS.max_completion_length, temperature=FLAGS.temperature,
      top_p=FLAGS.top_p, top_k=FLAGS.top_k, stop_strings=tuple(FLAGS.stop_strings),
      learning_rate=FLAGS.learning_rate if learning_rate is None else learning_rate,
      lr_scheduler_type=FLAGS.lr_scheduler_type,
      warmup_steps=FLAGS.warmup_steps, weight_decay=FLAGS.weight_decay,
      adam_beta1=FLAGS.adam_beta1, adam_beta2=FLAGS.adam_beta2,
      max_grad_norm=FLAGS.max_grad_norm,
      max_steps=FLAGS.max_steps if max_steps is None else max_steps,
      num_iterations=FLAGS.num_iterations, num_minibatches=FLAGS.num_minibatches,
      sync_ref_model=FLAGS.sync_ref_model, ref_model_sync_steps=FLAGS.ref_model_sync_steps,
      ref_model_mixup_alpha=FLAGS.ref_model_mixup_alpha,
      dynamic_sampling=FLAGS.dynamic_sampling, max_resample_rounds=FLAGS.max_resample_rounds,
      overlong_buffer=FLAGS.overlong_buffer, overlong_penalty=FLAGS.overlong_penalty,
      remat=FLAGS.remat, logprob_chunk_size=FLAGS.logprob_chunk_size, seed=FLAGS.seed,
      gradient_accumulation_steps=FLAGS.gradient_accumulation_steps,
      logprob_batch_size=FLAGS.logprob_batch_size, length_buckets=FLAGS.length_buckets,
      adam_mu_dtype=FLAGS.adam_mu_dtype)


def grpo_config() -> grpo.GRPOConfig:
  return grpo.GRPOConfig(
      beta=FLAGS.beta, epsilon=FLAGS.epsilon, epsilon_high=FLAGS.epsilon_high,
      loss_type=FLAGS.loss_type, scale_rewards=FLAGS.scale_rewards,
      importance_sampling_level=FLAGS.importance_sampling_level,
      max_completion_length=FLAGS.max_completion_length,
      mask_truncated_completions=FLAGS.mask_truncated_completions,
      num_generations=FLAGS.num_generations)


def flag_values(program_only: bool = False) -> dict:
  """All flags of this program's modules, for saving with checkpoints; `program_only` leaves
  out absl's own (logging, flagfile)."""
  out = {}
  for module, module_flags in FLAGS.flags_by_module_dict().items():
    if program_only and module.startswith("absl."):
      continue
    for f in module_flags:
      out[f.name] = f.value
  return out
