"""Shared settings of the five Fashion-MNIST rows of 002's ablation table (002 section 6).

002: 8x8x2 latent, 30 epochs, probability-flow RK4 with 10 steps. It does not give the network sizes,
batch or loss weights; these are ours: 001's VAE with C = 2, a base-64 UNet, batch 128
(30 epochs = 14,040 steps).
"""

from configs import base

EPOCH_STEPS = 60_000 // 128


def get_config():
  config = base.get_config()
  config.data.name = "fashion_mnist"
  config.data.kwargs = {}
  config.data.image_shape = (32, 32, 1)
  config.vae.model.update(latent_channels=2, out_channels=1)
  config.vae.training = base.training(num_steps=30 * EPOCH_STEPS, checkpoint_every=2000)
  config.score_net.update(base_channels=64)
  config.ldm.training = base.training(num_steps=30 * EPOCH_STEPS, weight_decay=1e-4, warmup_steps=1000,
                                      lr_schedule="cosine", ema_decay=0.999, checkpoint_every=2000)
  config.cotrain.training = base.training(num_steps=30 * EPOCH_STEPS, weight_decay=1e-4,
                                          warmup_steps=1000, lr_schedule="cosine", ema_decay=0.999,
                                          checkpoint_every=2000)
  config.sample.update(method="rk4", num_steps=10, num_samples=10_000, batch_size=500)
  config.eval.update(num_samples=10_000, num_reconstructions=10_000)  # against the 10k test images
  return config
