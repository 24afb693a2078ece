"""002 row (a): VAE and score network co-trained with the LSI target and 002's modified KL.

python -m experiments.run --config=configs/fmnist_a_lsi_cotrain.py --workdir=runs/fmnist_a --config.seed=0
"""

from configs import fmnist_base


def get_config():
  return fmnist_base.cotrained(kl="modified", score_target="lsi")
