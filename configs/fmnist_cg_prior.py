"""001's critic-gate row: the regular-KL VAE, then a latent prior trained on the critic-gate target with
001's prior CSEM (a Gaussian fit N(mu_agg, v_agg) of the aggregated posterior in place of each image's
posterior; the `stats` stage computes it) and a per-element gate. Biased, with a degenerate zero-loss
optimum at the gate sigma^2 / (sigma^2 + alpha^2 v_agg) (MATH.md errata 4): this row measures whether
training falls into it.

python -m experiments.run --config=configs/fmnist_cg_prior.py --workdir=runs/fmnist_cg_prior --config.seed=0
"""

from configs import fmnist_base


def get_config():
  return fmnist_base.two_stage("critic_gate_prior", granularity="element")
