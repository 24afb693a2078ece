"""001's diffusion utilities, train steps and samplers in plain eager PyTorch: the comparator of
cgdiff.schedules, cgdiff.objectives + cgdiff.train and cgdiff.samplers, with the same maths and options.

    schedule = CosineSchedule()                       # MATH.md section 1 (001 eq. 4), continuous time
    loss_fn = diffusion_loss(schedule, "tweedie")
    trainer = Trainer(nn.ModuleDict({"score": unet}), loss_fn, config.ldm.training)
    loss = trainer.step((mean, logvar))               # one AdamW step on a (B, C, H, W) posterior batch
    z = sample(unet, schedule, (64, 4, 8, 8), method="heun_pc", num_steps=50)

Losses (MATH.md section 4; means over batch and elements, 001's F.mse_loss):
  vae:          ||decode(z0) - x||^2 + kl_weight KL(q(z0 | x) || N(0, I)),  z0 = mean + exp(logvar/2) eps_vae
  tweedie:      ||eps_hat(z_t, t) - eps||^2                                  (001's baseline, 5.6)
  critic_gate:  ||eps_hat - ((1 - g) eps_csem + g eps)||^2, eps_csem = sigma (z0 - mean) / (alpha v)
                (000's posterior CSEM, sign of MATH.md errata 1, blend of errata 5; 001 section 5.7)
  lsi:          ||eps_hat - sigma (z_t - alpha mean) / (alpha^2 v + sigma^2)||^2
  cotrain:      vae (with the regular or 002's modified KL) + score_weight * the tweedie or lsi loss on
                the encoder's posteriors, the gradient reaching the encoder (002 Algorithm 1)
with t ~ U[t_min, t_max] continuous (MATH.md: networks take continuous time; 001 draws integer steps).

Optimisation as cgdiff's `training` config groups: torch.optim.AdamW (betas, decoupled weight decay),
torch.nn.utils.clip_grad_norm_, a LambdaLR for the linear warm-up + constant / cosine decay, and an
EMA of the weights with torch.optim.swa_utils.AveragedModel when ema_decay > 0.

Samplers (MATH.md section 5, reverse time on a grid uniform in log-SNR as cgdiff.schedules.time_grid):
  heun_pc  001 section 5.5 with the corrected units (continuous beta) and one Brownian increment  2 NFE/step
  rk4      classic RK4 on the probability-flow ODE dz/dt = -1/2 beta (z + s)                        4 NFE/step
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

Tensor = torch.Tensor
LossFn = Callable[[nn.ModuleDict, Any], Tensor]
NFE_PER_STEP = {"heun_pc": 2, "rk4": 4}


class CosineSchedule:
  """The cosine VP schedule (001 eq. 4): abar(t) = f(t)/f(0), f = cos^2(pi/2 (t + c)/(1 + c)).

  alpha = sqrt(abar), sigma = sqrt(1 - abar), beta = pi/(1 + c) tan(pi/2 (t + c)/(1 + c)),
  log-SNR = log(abar / (1 - abar)). Computed in float64 (per-example vectors only), returned in t's dtype.
  """

  def __init__(self, c: float = 0.008, t_min: float = 1e-3, t_max: float = 0.995):
    self.c, self.t_min, self.t_max = c, t_min, t_max

  def _theta(self, t: Tensor) -> Tensor:
    return 0.5 * math.pi * (t.double() + self.c) / (1.0 + self.c)

  def abar(self, t: Tensor) -> Tensor:
    return (torch.cos(self._theta(t)) / math.cos(0.5 * math.pi * self.c / (1.0 + self.c))) ** 2

  def alpha(self, t: Tensor) -> Tensor:
    return torch.sqrt(self.abar(t)).to(t.dtype)

  def sigma(self, t: Tensor) -> Tensor:
    return torch.sqrt(1.0 - self.abar(t)).to(t.dtype)

  def beta(self, t: Tensor) -> Tensor:
    return (math.pi / (1.0 + self.c) * torch.tan(self._theta(t))).to(t.dtype)

  def log_snr(self, t: Tensor) -> Tensor:
    abar = self.abar(t)
    return torch.log(abar / (1.0 - abar)).to(t.dtype)

  def time_from_log_snr(self, lam: Tensor) -> Tensor:
    """Inverse of log_snr: abar = sigmoid(lam), cos(theta) = sqrt(abar) cos(theta(0))."""
    cos_theta = torch.sqrt(torch.sigmoid(lam.double())) * math.cos(0.5 * math.pi * self.c / (1.0 + self.c))
    return (torch.arccos(cos_theta) * 2.0 / math.pi * (1.0 + self.c) - self.c).to(lam.dtype)

  def time_grid(self, num_steps: int) -> Tensor:
    """t_max = t_0 > ... > t_N = t_min, uniform in log-SNR; float64 (N + 1,)."""
    ends = torch.tensor([self.t_max, self.t_min], dtype=torch.float64)
    lam = self.log_snr(ends)
    grid = self.time_from_log_snr(torch.linspace(float(lam[0]), float(lam[1]), num_steps + 1,
                                                 dtype=torch.float64))
    grid[0], grid[-1] = self.t_max, self.t_min
    return grid


def _per_example(x: Tensor) -> Tensor:
  return x.view(-1, 1, 1, 1)


def autoencoder_loss(vae: nn.Module, images: Tensor, kl: str, kl_weight: float
                     ) -> tuple[Tensor, Tensor, Tensor]:
  """(reconstruction MSE of decode(z0 ~ q) + kl_weight * mean KL, mean, logvar) of images (B, C, H, W);
  KL 'regular' (to N(0, I)) or 002's 'modified' 1/2 (mean^2 + v)."""
  mean, logvar = vae.encode(images)
  z0 = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
  kl_term = mean**2 + logvar.exp() - (1.0 + logvar if kl == "regular" else 0.0)
  return F.mse_loss(vae.decode(z0), images) + kl_weight * 0.5 * torch.mean(kl_term), mean, logvar


def vae_loss(kl_weight: float) -> LossFn:
  """loss(model, images (B, C, H, W)): reconstruction MSE of decode(z0 ~ q) + kl_weight * mean KL."""

  def loss(model: nn.ModuleDict, images: Tensor) -> Tensor:
    return autoencoder_loss(model["vae"], images, "regular", kl_weight)[0]

  return loss


def diffusion_loss(schedule: CosineSchedule, target: str) -> LossFn:
  """loss(model, (mean, logvar) each (B, C, H, W)): eps-MSE against `target` ('tweedie', 'critic_gate',
  'lsi'); model["score"] the UNet, model["gate"] the gate (critic_gate only)."""
  if target not in ("tweedie", "critic_gate", "lsi"):
    raise ValueError(f"unknown target {target!r}")

  def loss(model: nn.ModuleDict, posterior: tuple[Tensor, Tensor]) -> Tensor:
    return score_matching_loss(model, schedule, target, *posterior)

  return loss


def cotrain_loss(schedule: CosineSchedule, kl: str, kl_weight: float, score_target: str,
                 score_weight: float = 1.0) -> LossFn:
  """loss(model, images (B, C, H, W)): 002's Algorithm 1 as cgdiff.objectives.cotrain_loss, the score
  loss reaching the encoder: reconstruction MSE of decode(z0) + kl_weight * KL ('regular' or 002's
  'modified' 1/2 (mean^2 + v)) + score_weight * eps-MSE against `score_target` ('tweedie' or 'lsi') on
  its own z0 draw; model["vae"] and model["score"]."""
  if kl not in ("regular", "modified") or score_target not in ("tweedie", "lsi"):
    raise ValueError(f"unknown KL {kl!r} or co-training target {score_target!r}")

  def loss(model: nn.ModuleDict, images: Tensor) -> Tensor:
    autoencoder, mean, logvar = autoencoder_loss(model["vae"], images, kl, kl_weight)
    return autoencoder + score_weight * score_matching_loss(model, schedule, score_target, mean, logvar)

  return loss


def score_matching_loss(model: nn.ModuleDict, schedule: CosineSchedule, target: str, mean: Tensor,
                        logvar: Tensor) -> Tensor:
  """eps-MSE of model["score"] against `target` for posteriors N(mean, exp(logvar)), (B, C, H, W)."""
  t = torch.empty(mean.shape[0], device=mean.device).uniform_(schedule.t_min, schedule.t_max)
  alpha, sigma = _per_example(schedule.alpha(t)), _per_example(schedule.sigma(t))
  z0 = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
  eps = torch.randn_like(mean)
  z_t = alpha * z0 + sigma * eps
  if target == "tweedie":
    eps_star = eps
  elif target == "lsi":
    eps_star = sigma * (z_t - alpha * mean) / (alpha**2 * logvar.exp() + sigma**2)
  else:
    g = model["gate"](z_t, t)
    eps_csem = sigma * (z0 - mean) * torch.exp(-logvar) / alpha
    eps_star = (1.0 - g) * eps_csem + g * eps
  return F.mse_loss(model["score"](z_t, t), eps_star)


def lr_factor(training: Mapping[str, Any]) -> Callable[[int], float]:
  """step -> learning-rate multiplier: linear warm-up from 0, then constant or cosine decay to 0."""
  warmup, total = int(training["warmup_steps"]), int(training["num_steps"])
  decay_steps = max(total - warmup, 1)

  def factor(step: int) -> float:
    if step < warmup:
      return step / warmup
    if training["lr_schedule"] == "cosine":
      return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, decay_steps) / decay_steps))
    return 1.0

  return factor


class Trainer:
  """One optimisation step of `model` (an nn.ModuleDict) on loss_fn, configured by a cgdiff `training`
  group (learning_rate, b1, b2, weight_decay, grad_clip, warmup_steps, lr_schedule, num_steps, ema_decay)."""

  def __init__(self, model: nn.ModuleDict, loss_fn: LossFn, training: Mapping[str, Any]):
    self.model, self.loss_fn, self.grad_clip = model, loss_fn, float(training["grad_clip"])
    self.optimizer = torch.optim.AdamW(model.parameters(), lr=training["learning_rate"],
                                       betas=(training["b1"], training["b2"]),
                                       weight_decay=training["weight_decay"])
    self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(training))
    decay = float(training["ema_decay"])
    self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay)) if decay > 0 else None
    model.train()

  def step(self, batch: Any) -> Tensor:
    """zero_grad, loss, backward, clip, AdamW step, LR schedule step, EMA update; returns the loss."""
    self.optimizer.zero_grad(set_to_none=True)
    loss = self.loss_fn(self.model, batch)
    loss.backward()
    if self.grad_clip:
      torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
    self.optimizer.step()
    self.scheduler.step()
    if self.ema is not None:
      self.ema.update_parameters(self.model)
    return loss.detach()


@torch.inference_mode()
def sample(eps_model: nn.Module, schedule: CosineSchedule, shape: tuple[int, ...], *, method: str,
           num_steps: int, device: torch.device | str = "cpu",
           generator: torch.Generator | None = None, z_init: Tensor | None = None) -> Tensor:
  """Reverse-time sampling from N(0, I) at t_max to t_min; score s = -eps_model(z, t) / sigma(t).

  heun_pc (MATH.md section 5): dW = sqrt(|dt|) xi, z~ = z + f(z, t) dt + g(t) dW,
  z <- z + dt/2 (f(z, t) + f(z~, t')) + (g(t) + g(t'))/2 dW, f = -beta/2 z - beta s, g = sqrt(beta).
  rk4: classic RK4 on F(z, t) = -beta/2 (z + s). z_init: a start instead of a prior draw.
  Returns (B, C, H, W) latents.
  """
  if method not in NFE_PER_STEP:
    raise ValueError(f"unknown method {method!r}; expected one of {sorted(NFE_PER_STEP)}")
  times = schedule.time_grid(num_steps).tolist()
  z = torch.randn(shape, device=device, generator=generator) if z_init is None else z_init.to(device)

  def diffusion(t: float) -> float:
    return math.sqrt(float(schedule.beta(torch.tensor(t, dtype=torch.float64))))

  def drift(z: Tensor, t: float, sde: bool) -> Tensor:
    """f(z, t) = -beta/2 z - beta s (sde) or F(z, t) = -beta/2 (z + s) (probability flow)."""
    t64 = torch.tensor(t, dtype=torch.float64)
    beta, sigma = float(schedule.beta(t64)), float(schedule.sigma(t64))
    s = -eps_model(z, torch.full(shape[:1], t, device=device)) / sigma
    return -0.5 * beta * z - beta * s if sde else -0.5 * beta * (z + s)

  for t, t_next in zip(times[:-1], times[1:]):
    dt = t_next - t  # < 0
    if method == "heun_pc":
      dw = math.sqrt(-dt) * torch.randn(shape, device=device, generator=generator)
      f = drift(z, t, sde=True)
      z_pred = z + f * dt + diffusion(t) * dw
      z = z + 0.5 * dt * (f + drift(z_pred, t_next, sde=True)) + 0.5 * (diffusion(t) + diffusion(t_next)) * dw
    else:
      k1 = drift(z, t, sde=False)
      k2 = drift(z + 0.5 * dt * k1, t + 0.5 * dt, sde=False)
      k3 = drift(z + 0.5 * dt * k2, t + 0.5 * dt, sde=False)
      k4 = drift(z + dt * k3, t_next, sde=False)
      z = z + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
  return z
