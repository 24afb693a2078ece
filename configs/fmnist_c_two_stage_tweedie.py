"""002 row (c): VAE with the regular KL, then a Tweedie / DSM latent diffusion prior.

python -m experiments.run --config=configs/fmnist_c_two_stage_tweedie.py --workdir=runs/fmnist_c
"""

from configs import fmnist_base


def get_config():
  config = fmnist_base.get_config()
  config.stages = ("vae", "ldm", "sample")
  config.vae.kl = "regular"
  config.ldm.target = "tweedie"
  return config
