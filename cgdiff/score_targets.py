"""The registry of training score targets: what each needs and its eps-space target (MATH.md sections 2-4).

    spec = TARGETS["critic_gate"]     # ScoreTarget(needs_gate=True, needs_prior=False, eps_target=...)
    eps_star = spec.eps_target(draw, gate, prior)

Every question about a target (does it need a gate network, the latent statistics, what is its eps*)
is answered here, as samplers.METHODS answers them for samplers (the score_sde pattern). A network
regresses eps_hat(z_t, t) on eps* = -sigma s*, where s* is the target score; all targets share
E[eps* | z_t] and differ in their variance around it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax

from cgdiff import targets

Array = jax.Array
Prior = tuple[Array, Array]  # (mean, logvar) of the global Gaussian fit to the latents, each z.shape[1:]


class DiffusionDraw(NamedTuple):
  """One draw per example: posterior N(mean, exp(logvar)), z0 from it, z_t = alpha z0 + sigma eps.
  Arrays [B, ...]; alpha, sigma broadcast to them ([B, 1, ...] or scalars)."""

  z0: Array
  z_t: Array
  eps: Array
  mean: Array
  logvar: Array
  alpha: Array
  sigma: Array


def tweedie_eps(draw: DiffusionDraw) -> Array:
  """Tweedie / DSM: eps itself (= -sigma b exactly, MATH.md section 2)."""
  return draw.eps


def csem_eps(draw: DiffusionDraw) -> Array:
  """-sigma a, a the posterior's score transported to time t (CSEM, MATH.md section 3)."""
  return targets.score_to_eps(targets.csem_score(draw.z0, draw.mean, draw.logvar, draw.alpha), draw.sigma)


def prior_csem_eps(draw: DiffusionDraw, prior: Prior) -> Array:
  """001's CSEM with the global Gaussian fit in place of the posterior (biased; MATH.md errata 4)."""
  return targets.score_to_eps(targets.prior_csem_score(draw.z0, prior[0], prior[1], draw.alpha), draw.sigma)


def lsi_eps(draw: DiffusionDraw) -> Array:
  """-sigma l, l the exact score of the diffused posterior component (LSI, MATH.md section 4)."""
  return targets.score_to_eps(
      targets.lsi_score(draw.z_t, draw.mean, draw.logvar, draw.alpha, draw.sigma), draw.sigma)


EpsTarget = Callable[[DiffusionDraw, "Array | None", "Prior | None"], Array]


@dataclasses.dataclass(frozen=True)
class ScoreTarget:
  """A registered training target: eps_target(draw, gate, prior) -> eps* (z's shape). gate: g(z_t, t) in
  [0, 1] broadcasting to z (None unless needs_gate); prior: the latent statistics (None unless
  needs_prior)."""

  name: str
  needs_gate: bool
  needs_prior: bool
  eps_target: EpsTarget


TARGETS: dict[str, ScoreTarget] = {}


def register(name: str, *, needs_gate: bool = False, needs_prior: bool = False):
  """Registers an eps-target function (draw, gate, prior) -> eps* under `name`."""

  def wrap(fn: EpsTarget) -> EpsTarget:
    TARGETS[name] = ScoreTarget(name, needs_gate, needs_prior, fn)
    return fn

  return wrap


@register("tweedie")
def _tweedie(draw, gate, prior):
  del gate, prior
  return tweedie_eps(draw)


@register("lsi")
def _lsi(draw, gate, prior):
  del gate, prior
  return lsi_eps(draw)


# The critic-gate blends are linear, so they are taken in eps space, where Tweedie's part is eps itself.
@register("critic_gate", needs_gate=True)
def _critic_gate(draw, gate, prior):
  del prior
  return targets.blend(csem_eps(draw), tweedie_eps(draw), gate)


@register("critic_gate_prior", needs_gate=True, needs_prior=True)
def _critic_gate_prior(draw, gate, prior):
  return targets.blend(prior_csem_eps(draw, prior), tweedie_eps(draw), gate)


def get(name: str) -> ScoreTarget:
  """TARGETS[name], or a ValueError that lists the registered names."""
  if name not in TARGETS:
    raise ValueError(f"unknown score target {name!r}; expected one of {tuple(TARGETS)}.")
  return TARGETS[name]


def names(*, gate: bool | None = None, prior: bool | None = None) -> tuple[str, ...]:
  """The registered targets, optionally only those that do (True) or do not (False) need a gate / prior."""
  return tuple(name for name, spec in TARGETS.items()
               if (gate is None or spec.needs_gate == gate) and (prior is None or spec.needs_prior == prior))


def eps_target(name: str, draw: DiffusionDraw, *, gate: Array | None = None,
               prior: Prior | None = None) -> Array:
  """eps* of target `name` for `draw`, after checking that what it needs was given."""
  spec = get(name)
  if spec.needs_gate and gate is None:
    raise ValueError(f"target {name!r} needs a gate value.")
  if spec.needs_prior and prior is None:
    raise ValueError(f"target {name!r} needs the latent statistics (prior mean, logvar).")
  return spec.eps_target(draw, gate, prior)
