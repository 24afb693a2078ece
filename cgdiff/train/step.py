"""The training step: one pure function, pmapped over local devices at the call site."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from cgdiff.train.state import TrainState, ema_update

Array = jax.Array
# loss_fn(params, batch, keys [B]) -> (loss, metrics): batch and keys hold this device's examples.
LossFn = Callable[[Any, Any, Array], tuple[Array, dict[str, Array]]]


def _reduce_metrics(metrics: dict[str, Array], axis_name: str) -> dict[str, Array]:
  """Means across devices, except *_min / *_max, which take the min / max."""
  out = {}
  for name, value in metrics.items():
    if name.endswith("_min"):
      out[name] = jax.lax.pmin(value, axis_name)
    elif name.endswith("_max"):
      out[name] = jax.lax.pmax(value, axis_name)
    else:
      out[name] = jax.lax.pmean(value, axis_name)
  return out


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *, ema_decay: float,
                    axis_name: str = "batch"):
  """Returns train_step(state, batch, example_ids [b], base_key) -> (state, metrics), to be pmapped
  with `axis_name`.

  Example i's key is fold_in(fold_in(base_key, step), i) with i its index in the GLOBAL batch, and
  per-device losses are means over equally many examples, so pmean-ed gradients equal the gradient
  of the global mean: the step gives the same result on any number of devices. A step whose loss or
  gradients are not finite leaves the state unchanged and reports nonfinite = 1.
  """

  def train_step(state: TrainState, batch: Any, example_ids: Array, base_key: Array):
    step_key = jax.random.fold_in(base_key, state.step)
    keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(example_ids)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, keys)
    grads = jax.lax.pmean(grads, axis_name)
    metrics = _reduce_metrics({**metrics, "loss": loss}, axis_name)
    metrics["grad_norm"] = optax.tree.norm(grads)
    # A NaN or inf anywhere in the gradients makes their norm non-finite. (A per-leaf isfinite check
    # says the same but triples the XLA compile time of a UNet step on CPU.)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                           ema_params=ema_update(state.ema_params, params, ema_decay))
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
    return new_state, metrics

  return train_step
