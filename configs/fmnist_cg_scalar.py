"""Critic-gate row with 001's granularity: the regular-KL VAE, then a latent prior trained on 000's
critic-gate target (posterior CSEM, sign corrected) with one gate value per example, (B, 1, 1, 1).

python -m experiments.run --config=configs/fmnist_cg_scalar.py --workdir=runs/fmnist_cg_scalar --config.seed=0
"""

from configs import fmnist_base


def get_config():
  return fmnist_base.two_stage("critic_gate", granularity="example")
