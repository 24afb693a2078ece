"""The FID floor of a data set: FID between two disjoint random halves of one split (real against real).

python -m experiments.fid_halves --dataset=fashion_mnist --split=test --workdir=runs/fid_halves \
    --out=experiments/results/fid/fashion_mnist_test_halves.json

What a generated set's FID means depends on N: even a perfect model scores above 0. Two halves of the
real split (N/2 images each) give that floor at N/2. Inception features are saved in chunks under
--workdir, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import app, flags, logging

from cgdiff import chunks, records
from cgdiff.data import pipeline
from cgdiff.metrics import fid, inception, inception_weights

flags.DEFINE_string("dataset", "fashion_mnist", "cifar10 | fashion_mnist | synthetic")
flags.DEFINE_string("split", "test", "train | test")
flags.DEFINE_string("data_dir", None, "Where the data set's files are (default: the loader's).")
flags.DEFINE_integer("num_images", 0, "Use the first N images of the split (0: all).")
flags.DEFINE_integer("seed", 0, "Seed of the random split into halves.")
flags.DEFINE_integer("batch_size", 50, "Inception batch.")
flags.DEFINE_integer("chunk", 500, "Images per saved feature chunk.")
flags.DEFINE_string("workdir", "runs/fid_halves", "Feature chunks (resumable).")
flags.DEFINE_string("out", None, "Where to write the JSON record.")
FLAGS = flags.FLAGS


def split_features(images: np.ndarray, variables, workdir: str, chunk: int, batch_size: int) -> np.ndarray:
  """Inception features [N, 2048] of `images`, computed chunk by chunk and saved as they come in
  `workdir` (cgdiff.chunks: a rerun loads the chunks it finds)."""
  store = chunks.ChunkStore(workdir, {"num_images": len(images), "batch_size": batch_size,
                                      "inception_weights": inception_weights.weights_id()})
  return store.array("features", lambda start, stop: inception.inception_features(
      variables, images[start:stop], batch_size), len(images), chunk, label="Inception features")


def main(argv):
  del argv
  images = pipeline.load_images(FLAGS.dataset, FLAGS.split, data_dir=FLAGS.data_dir)
  if FLAGS.num_images:
    images = images[:FLAGS.num_images]
  variables = inception_weights.load_inception_params()
  workdir = os.path.join(FLAGS.workdir, f"{FLAGS.dataset}_{FLAGS.split}_n{len(images)}")
  start = time.perf_counter()
  features = split_features(images, variables, workdir, FLAGS.chunk, FLAGS.batch_size)
  seconds = time.perf_counter() - start
  order = np.random.default_rng(FLAGS.seed).permutation(len(features))
  half = len(features) // 2
  first, second = features[order[:half]], features[order[half:2 * half]]
  record = records.run_record(
      {"dataset": FLAGS.dataset, "split": FLAGS.split, "num_images": len(images), "seed": FLAGS.seed},
      stage="fid_halves", dataset=FLAGS.dataset, split=FLAGS.split, num_images=len(images),
      half_size=half, seed=FLAGS.seed,
      fid_halves=fid.fid_from_features(first, second),
      fid_self=fid.fid_from_features(features, features),
      inception_weights=inception_weights.weights_id(),
      feature_seconds=seconds, note="seconds cover only the chunks computed by this run")
  logging.info("FID between halves of %s/%s (%d each): %.4f; FID(set, set) = %.2e", FLAGS.dataset,
               FLAGS.split, half, record["fid_halves"], record["fid_self"])
  if FLAGS.out:
    records.write_json(FLAGS.out, record)


if __name__ == "__main__":
  app.run(main)
