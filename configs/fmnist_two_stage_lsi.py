"""002's two-stage LSI row: the regular-KL VAE, then a latent prior trained on the LSI target.

python -m experiments.run --config=configs/fmnist_two_stage_lsi.py --workdir=runs/fmnist_lsi --config.seed=0
"""

from configs import fmnist_base


def get_config():
  return fmnist_base.two_stage("lsi")
