"""Code rewards inside the GRPO trainer: scored in the sandbox, timed in the step's metrics."""

import functools

import jax
import numpy as np

from r1jax import grpo, model, rewards, tasks, trainer
from r1jax.config import get_config
from r1jax.tokenizer import CharTokenizer


def test_code_reward_routes_through_the_sandbox():
  problems = tasks.get_task("code_expression").split("train", 0)[:2]
  completions = [f" ok </think> <answer>{problems[0].answer}</answer>",  # right
                 " ok </think> <answer>x*0-12345</answer>",  # wrong on every test
                 " ok </think> <answer>__import__('os').system('echo hi')</answer>"]
  rows = [problems[0], problems[0], problems[1]]
  r, comps, stats = rewards.score_completions(completions, rows, "code",
                                              rewards.RewardConfig(timeout_s=3), prefix="<think>")
  np.testing.assert_array_equal(comps["accuracy"], [1.0, 0.0, 0.0])
  np.testing.assert_array_equal(comps["format"], [1.0, 1.0, 1.0])
  np.testing.assert_allclose(r, [2.0, 1.0, 1.0])
  assert stats["code_time_s"] > 0


def test_one_grpo_step_on_a_code_task_reports_code_time():
  task = tasks.get_task("code_expression")
  cfg = trainer.TrainConfig(prompts_per_step=2, num_generations=2, max_prompt_length=96,
                            max_completion_length=8, learning_rate=1e-3, max_steps=1)
  loss_cfg = grpo.GRPOConfig(num_generations=2, max_completion_length=8, beta=0.0)
  mcfg = get_config("tiny")
  tok = CharTokenizer()
  reward_fn = functools.partial(rewards.score_completions, reward_kind="code",
                                config=rewards.RewardConfig(timeout_s=3), prefix="<think>")
  t = trainer.GRPOTrainer(mcfg, cfg, loss_cfg, tok, task.split("train", 0)[:8],
                          lambda p: tasks.format_problem(p, "compact"), reward_fn)
  state = t.init_state(model.init_params(mcfg, jax.random.PRNGKey(0)))
  _, metrics, _ = t.step(state)
  assert metrics["code_time_s"] > 0 and metrics["reward_time_s"] >= metrics["code_time_s"]
  assert 0.0 <= metrics["accuracy"] <= 1.0
