"""The training state and its optimizer: optax AdamW with clipping, warm-up and decay, plus an EMA."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

Params = Any
LR_SCHEDULES = ("constant", "cosine")  # after the warm-up


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds. step: int32 scalar; ema_params: the EMA of params (used to sample)."""

  step: jax.Array
  params: Params
  opt_state: optax.OptState
  ema_params: Params


def learning_rate_schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warm-up over config.warmup_steps to config.learning_rate, then 'constant' or 'cosine'
  decay to 0 at num_steps (001 section 5.6 allows either)."""
  warmup = optax.linear_schedule(0.0, config.learning_rate, max(config.warmup_steps, 1))
  if config.lr_schedule == "constant":
    after = optax.constant_schedule(config.learning_rate)
  elif config.lr_schedule == "cosine":
    after = optax.cosine_decay_schedule(config.learning_rate, max(num_steps - config.warmup_steps, 1))
  else:
    raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}; expected one of {LR_SCHEDULES}.")
  if config.warmup_steps == 0:
    return after
  return optax.join_schedules([warmup, after], [config.warmup_steps])


def make_optimizer(config: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  """clip_by_global_norm(config.grad_clip) then AdamW(b1, b2, weight_decay) on the schedule above."""
  adamw = optax.adamw(learning_rate_schedule(config, num_steps), b1=config.b1, b2=config.b2,
                      weight_decay=config.weight_decay)
  if config.grad_clip:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw)
  return adamw


def create_state(params: Params, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    ema_params=jax.tree.map(jnp.copy, params))


def ema_update(ema_params: Params, params: Params, decay: float) -> Params:
  """ema <- decay ema + (1 - decay) params (decay 0: the EMA is the parameters)."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
