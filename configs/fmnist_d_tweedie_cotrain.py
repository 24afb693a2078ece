"""002 row (d): co-training with the Tweedie target (encoder gradient through z_t) and the regular KL.

python -m experiments.run --config=configs/fmnist_d_tweedie_cotrain.py --workdir=runs/fmnist_d
"""

from configs import fmnist_base


def get_config():
  config = fmnist_base.get_config()
  config.stages = ("cotrain", "sample")
  config.cotrain.update(kl="regular", score_target="tweedie", encoder_score_gradient=True)
  config.sample.score_source = "cotrain"
  return config
