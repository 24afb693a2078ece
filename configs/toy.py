"""Latent diffusion on 004's 2-D fractal tree, where the exact score is known: an MLP learns it with
the LSI target and is sampled with RK4; SW2 against exact samples.

python -m experiments.run --config=configs/toy.py --workdir=runs/toy

`--config=configs/toy.py:tiny`: a 2-level tree, a 16-unit MLP, 2 steps (seconds; tests and CI).
"""

import ml_collections

from configs import base


def get_config(variant: str = ""):
  config = base.get_config()
  config.stages = ("ldm", "sample")
  config.data = ml_collections.ConfigDict({
      "name": "toy2d", "num_points": 65536,
      "field": {"depth": 6, "components_per_branch": 8, "seed": 0, "data_std": 0.5}})
  config.score_net = ml_collections.ConfigDict(
      {"kind": "mlp", "hidden": 256, "num_layers": 3, "time_scale": 1000.0})
  config.gate.update(granularity="element", hidden_channels=64)
  config.ldm.target = "lsi"
  config.ldm.training = base.training(batch_size=512, num_steps=4000, learning_rate=1e-3,
                                      warmup_steps=100, lr_schedule="cosine", ema_decay=0.999,
                                      log_every=500, checkpoint_every=2000)
  config.sample.update(method="rk4", num_steps=10, num_samples=8192, batch_size=8192)
  if variant == "tiny":
    base.shrink_training(config)
    config.data.update(num_points=256, field={"depth": 2, "components_per_branch": 4, "seed": 0,
                                              "data_std": 0.5})
    config.score_net.update(hidden=16, num_layers=1)
    config.sample.update(num_steps=2, num_samples=64, batch_size=64)
  elif variant:
    raise ValueError(f"configs/toy.py has the variant 'tiny', not {variant!r}.")
  return config
