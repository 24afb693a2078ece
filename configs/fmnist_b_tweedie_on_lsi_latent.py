"""002 row (b): a Tweedie prior trained on the frozen VAE of row (a).

Run it in row (a)'s workdir: its finished `cotrain` stage is found and not trained again.
python -m experiments.run --config=configs/fmnist_b_tweedie_on_lsi_latent.py --workdir=runs/fmnist_a
"""

from configs import fmnist_a_lsi_cotrain


def get_config():
  config = fmnist_a_lsi_cotrain.get_config()
  config.stages = ("cotrain", "ldm", "sample")
  config.ldm.update(target="tweedie", vae_source="cotrain")
  config.sample.score_source = "ldm"
  return config
