"""The whole pipeline (VAE, latent statistics, critic-gate latent diffusion, Heun-PC samples) on the
generated shapes data set, small enough for a 2-core CPU in a few minutes.

python -m experiments.run --config=configs/quickstart.py --workdir=runs/quickstart
python -m experiments.run --config=configs/quickstart.py --workdir=runs/quickstart --stages=eval

`--config=configs/quickstart.py:tiny`: every stage at a few steps on 32 images with 8-channel networks
(seconds; what the tests and CI run). FID is off in it (the Inception weights may be absent).
"""

from configs import base


def get_config(variant: str = ""):
  config = base.get_config()
  config.data.name = "synthetic"
  config.data.kwargs = {"num_images": 4096, "channels": 3, "seed": 0}
  config.vae.model.channels = (16, 32, 64)
  config.vae.training = base.training(batch_size=32, num_steps=300, learning_rate=2e-3,
                                      warmup_steps=50, lr_schedule="cosine", log_every=100,
                                      checkpoint_every=150)
  config.score_net.update(base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
                          attention_resolutions=(4,), num_heads=2,
                          scale_shift_norm=True)  # 32 channels: GroupNorm would erase an additive time signal
  config.gate.update(granularity="element", hidden_channels=32)
  config.ldm.training = base.training(batch_size=64, num_steps=600, learning_rate=2e-3,
                                      warmup_steps=50, lr_schedule="cosine", ema_decay=0.99,
                                      log_every=100, checkpoint_every=300)
  config.sample.update(num_samples=64, batch_size=64)
  # `--stages=eval` on the trained workdir: small N for a CPU (FID is biased upwards at small N: the
  # record states N and the reference size).
  config.eval.update(num_samples=512, batch_size=128, num_reference=512, num_reconstructions=512,
                     inception_batch_size=32, profile_batch=256)
  if variant == "tiny":
    base.shrink_training(config)
    config.data.kwargs = {"num_images": 32, "channels": 3, "seed": 0}
    config.vae.model.channels = (8, 8, 8)
    config.score_net.update(base_channels=8, channel_mults=(1,), num_res_blocks=1, num_heads=1)
    config.gate.update(hidden_channels=8)
    config.sample.update(num_steps=2, num_samples=4, batch_size=4)
    config.eval.update(num_samples=8, batch_size=4, num_reconstructions=4, num_reference=8, fid=False,
                       sw2_projections=8, profile_times=3, profile_batch=4)
    config.diagnose.update(num_posteriors=8, num_times=3, field_components=8, num_points=2, num_draws=16)
  elif variant:
    raise ValueError(f"configs/quickstart.py has the variant 'tiny', not {variant!r}.")
  return config
