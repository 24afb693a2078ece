"""002's two-stage LSI row: VAE with the regular KL, then a latent prior trained on the LSI target.

python -m experiments.run --config=configs/fmnist_two_stage_lsi.py --workdir=runs/fmnist_lsi
"""

from configs import fmnist_base


def get_config():
  config = fmnist_base.get_config()
  config.stages = ("vae", "ldm", "sample")
  config.vae.kl = "regular"
  config.ldm.target = "lsi"
  return config
