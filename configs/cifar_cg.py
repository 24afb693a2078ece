"""001's CIFAR-10 recipe with 000's critic-gate target (posterior CSEM, sign corrected), at full size.

VAE (200 epochs) -> latent statistics -> critic-gate LDM (UNet base 128, 200 epochs, EMA) -> Heun-PC.
For 001's own variant with the global-Gaussian (biased) CSEM: --config.ldm.target=critic_gate_prior.

python -m experiments.run --config=configs/cifar_cg.py --workdir=runs/cifar_cg [--config.data.data_dir=DIR]
"""

from configs import base


def get_config():
  return base.get_config()
