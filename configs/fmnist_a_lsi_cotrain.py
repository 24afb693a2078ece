"""002 row (a): VAE and score network co-trained with the LSI target and the modified KL.

python -m experiments.run --config=configs/fmnist_a_lsi_cotrain.py --workdir=runs/fmnist_a
"""

from configs import fmnist_base


def get_config():
  config = fmnist_base.get_config()
  config.stages = ("cotrain", "sample")
  config.cotrain.update(kl="modified", score_target="lsi", encoder_score_gradient=True)
  config.sample.score_source = "cotrain"
  return config
