"""Data sources, one file each, and the common image layer (`pipeline`).

Images leave this package as float32 NHWC in [-1, 1] at 32x32: `load_images(name, split)` for
"cifar10", "fashion_mnist" or "synthetic", then `Batcher(images, batch_size, seed).batch(step)`.
`toy2d` is the 2-D Gaussian-mixture toy of the exact-field experiments.
"""

from cgdiff.data import cifar10, fashion_mnist, pipeline, synthetic, toy2d
from cgdiff.data.pipeline import Batcher, check_images, load_images, pad_to, shard, to_model_range

__all__ = ["Batcher", "check_images", "cifar10", "fashion_mnist", "load_images", "pad_to",
           "pipeline", "shard", "synthetic", "to_model_range", "toy2d"]
