"""002 row (d): co-training with the Tweedie target (the encoder's gradient through z_t) and the regular KL.

python -m experiments.run --config=configs/fmnist_d_tweedie_cotrain.py --workdir=runs/fmnist_d --config.seed=0
"""

from configs import fmnist_base


def get_config():
  return fmnist_base.cotrained(kl="regular", score_target="tweedie")
