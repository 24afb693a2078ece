"""001's baseline: the same VAE and UNet trained on the Tweedie / DSM eps-MSE.

python -m experiments.run --config=configs/cifar_baseline.py --workdir=runs/cifar_baseline
"""

from configs import base


def get_config():
  return base.two_stage("tweedie")
