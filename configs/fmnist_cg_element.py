"""Critic-gate row with a per-element gate: the regular-KL VAE, then a latent prior trained on 000's
critic-gate target (posterior CSEM) with a gate (B, 8, 8, 2), which can follow the per-element oracle
gate sigma^2 / (sigma^2 + alpha^2 v) more closely than a scalar (MATH.md identity 3).

python -m experiments.run --config=configs/fmnist_cg_element.py --workdir=runs/fmnist_cg_element --config.seed=0
"""

from configs import fmnist_base


def get_config():
  return fmnist_base.two_stage("critic_gate", granularity="element")
