"""The core library on an exact Gaussian field (004's fractal tree): target variances and samplers.

python -m experiments.run --config=configs/demo.py --workdir=runs/demo   (about 2-3 minutes on 2 CPU cores)

`--config=configs/demo.py:tiny`: a 2-level tree, 2 samplers at 4 steps (seconds; tests and CI).
"""

import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
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
  if variant == "tiny":
    config.exact_field.field.update(depth=2, components_per_branch=4)
    config.exact_field.variance.update(num_times=3, num_points=2, num_draws=64)
    config.exact_field.sampling.update(methods=("heun_pc", "rk4"), steps=(4,), num_samples=128,
                                       num_projections=16, num_null_sets=2)
  elif variant:
    raise ValueError(f"configs/demo.py has the variant 'tiny', not {variant!r}.")
  return config
