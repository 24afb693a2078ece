"""The results protocol: what every Fashion-MNIST row shares (002 section 6; README "Protocol").

Every row is this config plus the few keys that define it (the KL kind, the score target, whether the
encoder sees the score loss, where its VAE comes from, the gate); `tests/test_configs.py` checks both
halves. Fixed by 002: Fashion-MNIST (28x28 padded to 32x32x1, [-1, 1]), an 8x8x2 latent, 30 epochs,
the probability-flow ODE with RK4 x 10 steps, FID / reconstruction FID / latent SW2 on the test set
with fixed noise banks. Left open by 002 and chosen here (README "Protocol" says why):
  - networks: 001's VAE and UNet shapes, scaled down (`vae.model.channels`, `score_net`) so that the
    whole program fits the time budget of a 2-core CPU; the sizes come from the pilot
    (experiments/pilot.py, record in experiments/results/fmnist/pilot/pilot.json);
  - one optimiser for every network of every row: AdamW, the same learning rate, warm-up, cosine decay
    to 0 at the last step, clipping, weight decay, EMA and batch, for the VAE whether it is trained
    alone or co-trained (a co-trained row has one optimiser over VAE + score network);
  - loss weights: KL weight 1e-3 per element (001) for both KL kinds, score weight 1, no stiffness
    penalty and no perceptual term (002's Algorithm 1 and Table 1 use neither);
  - time sampling t ~ U[t_min, t_max] of the cosine schedule (t_min = 1e-3, t_max = 0.995);
  - the RK4 grid: uniform in log-SNR from t_max to t_min (schedules.time_grid); 002 does not say.
"""

import ml_collections

from configs import base

NUM_TRAIN = 60_000
BATCH_SIZE = 128
EPOCHS = 30
EPOCH_STEPS = NUM_TRAIN // BATCH_SIZE  # 468: the last 96 images of each epoch's permutation are dropped
# Hours of the 2-core CPU the whole program (every row, seed and evaluation) was sized to fit by the pilot.
PROGRAM_BUDGET_HOURS = 36


def get_config():
  config = base.get_config()
  config.data.name = "fashion_mnist"
  config.data.kwargs = {}
  config.data.image_shape = (32, 32, 1)
  # The pilot's "small" size (experiments/pilot.py): the program fits ~31 h of the 2-core CPU for two
  # seeds; the "medium" one (channels (32, 64, 128), 2 ResBlocks per level) would take ~45 h.
  config.vae.model.update(latent_channels=2, out_channels=1, channels=(16, 32, 64))
  config.vae.kl = "regular"
  config.score_net.update(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
                          attention_resolutions=(4, 2), num_heads=4,
                          scale_shift_norm=True)  # 32 channels: GroupNorm would erase an additive time signal
  config.gate.update(granularity="element", hidden_channels=32, num_layers=2)

  for stage in (config.vae, config.ldm, config.cotrain):  # one optimiser for every network of every row
    stage.training = base.training(batch_size=BATCH_SIZE, num_steps=EPOCHS * EPOCH_STEPS, learning_rate=1e-3,
                                   warmup_steps=500, lr_schedule="cosine", weight_decay=1e-4, grad_clip=1.0,
                                   ema_decay=0.999, log_every=100, checkpoint_every=1000, keep_checkpoints=2)
  config.cotrain.update(kl_weight=config.vae.kl_weight, score_weight=1.0, stiffness_weight=0.0)

  config.sample.update(method="rk4", num_steps=10, num_samples=64, batch_size=64)
  config.eval.update(num_samples=10_000, batch_size=1000, reference_split="test", num_reference=0,
                     num_reconstructions=10_000)
  return config


def two_stage(target: str, granularity: str | None = None) -> ml_collections.ConfigDict:
  """A two-stage row: the regular-KL VAE (the same for every two-stage row of a seed), then a latent
  diffusion prior on its frozen posteriors trained on `target`, with a gate of `granularity`."""
  config = get_config()
  config.stages = (("vae", "stats", "ldm", "eval", "diagnose") if target == "critic_gate_prior"
                   else ("vae", "ldm", "eval", "diagnose"))
  config.vae.kl = "regular"
  config.ldm.update(target=target, vae_source="vae")
  if granularity is not None:
    config.gate.granularity = granularity
  return config


def cotrained(kl: str, score_target: str) -> ml_collections.ConfigDict:
  """A co-trained row (002 Algorithm 1): VAE and score network together, the score loss reaching the
  encoder, sampled from the co-trained score network."""
  config = get_config()
  config.stages = ("cotrain", "eval", "diagnose")
  config.cotrain.update(kl=kl, score_target=score_target, encoder_score_gradient=True)
  config.sample.score_source = "cotrain"
  return config
