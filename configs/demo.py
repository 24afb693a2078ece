"""The core library on an exact Gaussian field (004's fractal tree): target variances and samplers.

python -m experiments.run --config=configs/demo.py --workdir=runs/demo   (about 2-3 minutes on 2 CPU cores)
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.stages = ("exact_field",)

  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = "cosine"
  config.schedule.kwargs = ml_collections.ConfigDict({"t_min": 1e-3, "t_max": 0.995})

  config.exact_field = ml_collections.ConfigDict()
  config.exact_field.field = ml_collections.ConfigDict(
      {"depth": 6, "components_per_branch": 8, "seed": 0, "data_std": 0.5})
  config.exact_field.variance = ml_collections.ConfigDict(
      {"num_times": 24, "num_points": 16, "num_draws": 512})
  config.exact_field.sampling = ml_collections.ConfigDict({
      "methods": ("euler_maruyama", "heun_pc", "heun_pc_seed", "euler_ode", "heun_ode", "rk4"),
      "steps": (10, 20, 50),
      "num_samples": 2048,
      "num_projections": 128,
      "num_null_sets": 8,
  })
  return config
