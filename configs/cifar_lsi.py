"""001's VAE and UNet with the LSI target of 002 (two-stage).

python -m experiments.run --config=configs/cifar_lsi.py --workdir=runs/cifar_lsi
"""

from configs import base


def get_config():
  return base.two_stage("lsi")
