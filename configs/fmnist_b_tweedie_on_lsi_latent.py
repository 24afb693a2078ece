"""002 row (b): a Tweedie prior trained on the frozen VAE of row (a) (co-trained with LSI + modified KL).

Its `cotrain` stage is row (a)'s: with --config.vae_workdir pointing at row (a)'s workdir (of the same
seed) it is found there, finished, and not trained again; without it, it is trained here, identically.
python -m experiments.run --config=configs/fmnist_b_tweedie_on_lsi_latent.py --workdir=runs/fmnist_b \
    --config.seed=0 --config.vae_workdir=runs/fmnist_a
"""

from configs import fmnist_a_lsi_cotrain


def get_config():
  config = fmnist_a_lsi_cotrain.get_config()
  config.stages = ("cotrain", "ldm", "eval", "diagnose")
  config.ldm.update(target="tweedie", vae_source="cotrain")
  config.sample.score_source = "ldm"
  return config
