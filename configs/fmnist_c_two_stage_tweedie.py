"""002 row (c): the regular-KL VAE, then a Tweedie / DSM latent diffusion prior (the baseline).

python -m experiments.run --config=configs/fmnist_c_two_stage_tweedie.py --workdir=runs/fmnist_c --config.seed=0
"""

from configs import fmnist_base


def get_config():
  return fmnist_base.two_stage("tweedie")
