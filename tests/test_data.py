"""The image data layer: IDX and CIFAR parsers on hand-made files, real Fashion-MNIST, the synthetic
shapes, and the Batcher's exact-resume property.

CIFAR-10 is tested on tiny fake archives in the real format (cifar10.NUM_EXAMPLES is monkeypatched
to their sizes, tensorflow_datasets is switched off); nothing here uses the network.
"""

import gzip
import hashlib
import io
import os
import pickle
import re
import tarfile
import time

import numpy as np
import pytest

from cgdiff.data import cifar10, fashion_mnist, pipeline, synthetic
from cgdiff.data.pipeline import Batcher


# --- IDX / Fashion-MNIST -------------------------------------------------------------------------
def idx_bytes(array: np.ndarray, magic: bytes | None = None) -> bytes:
  """An IDX file of a uint8 array: 0x0000 08 ndim, big-endian uint32 sizes, the values."""
  header = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
  return header + np.asarray(array.shape, ">u4").tobytes() + array.astype(np.uint8).tobytes()


def write(path, data: bytes) -> str:
  path = str(path)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(data)
  return path


def write_fake_fashion(directory, n: int, gz: bool, split_prefix: str = "train", seed: int = 0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, n, dtype=np.uint8)
  ext = ".gz" if gz else ""
  write(directory / f"{split_prefix}-images-idx3-ubyte{ext}", idx_bytes(images))
  write(directory / f"{split_prefix}-labels-idx1-ubyte{ext}", idx_bytes(labels))
  return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
  array = np.random.default_rng(0).integers(0, 256, (3, 5, 7), dtype=np.uint8)
  path = write(tmp_path / ("a.idx.gz" if gz else "a.idx"), idx_bytes(array))
  out = fashion_mnist.read_idx(path, expected_ndim=3)
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_load_from_data_dir(tmp_path, gz):
  images, labels = write_fake_fashion(tmp_path, 6, gz, "t10k")
  out_images, out_labels = fashion_mnist.load("test", data_dir=str(tmp_path))
  np.testing.assert_array_equal(out_images, images)
  np.testing.assert_array_equal(out_labels, labels)
  assert out_images.dtype == np.uint8 and out_labels.dtype == np.int64


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_file_names_the_file(tmp_path, gz):
  data = idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-10]
  path = write(tmp_path / ("t.idx.gz" if gz else "t.idx"), data)
  with pytest.raises(ValueError, match=re.escape(path) + ".*truncated"):
    fashion_mnist.read_idx(path)


def test_idx_corrupt_gzip_names_the_file(tmp_path):
  path = write(tmp_path / "c.idx.gz", idx_bytes(np.zeros((40, 28, 28), np.uint8)))
  raw = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(raw[: len(raw) // 2])  # the gzip stream itself ends early
  with pytest.raises(ValueError, match=re.escape(path)):
    fashion_mnist.read_idx(path)


def test_idx_wrong_magic_and_dims_name_the_file(tmp_path):
  array = np.zeros((2, 28, 28), np.uint8)
  bad_type = write(tmp_path / "m.idx", idx_bytes(array, magic=bytes([0, 0, 0x0D, 3])))  # float32
  with pytest.raises(ValueError, match=re.escape(bad_type) + ".*magic"):
    fashion_mnist.read_idx(bad_type)
  not_idx = write(tmp_path / "n.idx", b"\x1f\x8bjunkjunkjunk")
  with pytest.raises(ValueError, match=re.escape(not_idx) + ".*magic"):
    fashion_mnist.read_idx(not_idx)
  images_as_labels = write(tmp_path / "d.idx", idx_bytes(array))
  with pytest.raises(ValueError, match=re.escape(images_as_labels) + ".*3 dimension.*expected 1"):
    fashion_mnist.read_idx(images_as_labels, expected_ndim=1)
  # Well-formed IDX of the wrong image size, and label counts that disagree with the images.
  write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((2, 27, 28), np.uint8)))
  write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(2, np.uint8)))
  with pytest.raises(ValueError, match="train-images-idx3-ubyte.*expected \\(28, 28\\)"):
    fashion_mnist.load("train", data_dir=str(tmp_path))
  write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((3, 28, 28), np.uint8)))
  with pytest.raises(ValueError, match="2 labels for 3 images"):
    fashion_mnist.load("train", data_dir=str(tmp_path))


def test_fashion_missing_files_say_where_and_how(tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    fashion_mnist.load("train", data_dir=str(tmp_path))
  message = str(info.value)
  assert str(tmp_path / "train-images-idx3-ubyte") in message
  assert "apt-get install dataset-fashion-mnist" in message
  with pytest.raises(ValueError, match="split"):
    fashion_mnist.load("validation", data_dir=str(tmp_path))


REAL_FASHION = os.path.isdir(fashion_mnist.DEFAULT_DIR)


@pytest.fixture(scope="module")
def real_fashion():
  if not REAL_FASHION:
    pytest.skip(f"Fashion-MNIST not installed at {fashion_mnist.DEFAULT_DIR} "
                "(apt-get install dataset-fashion-mnist)")
  return {split: fashion_mnist.load(split) for split in ("train", "test")}


def test_real_fashion_mnist_shapes_and_labels(real_fashion):
  for split, n in (("train", 60_000), ("test", 10_000)):
    images, labels = real_fashion[split]
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    # Fashion-MNIST is balanced: n / 10 examples of each class.
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, n // 10))
    assert images.min() == 0 and images.max() == 255


def test_real_fashion_mnist_padded_to_model_range(real_fashion):
  pixels, _ = real_fashion["test"]
  images = pipeline.pad_to(pipeline.to_model_range(pixels))
  assert images.shape == (10_000, 32, 32, 1) and images.dtype == np.float32
  pipeline.check_images(images)
  np.testing.assert_array_equal(images[:, 2:30, 2:30, 0], pixels / np.float32(127.5) - 1)
  border = np.ones((32, 32), bool)
  border[2:30, 2:30] = False
  assert np.all(images[:, border] == -1.0)


# --- CIFAR-10 ------------------------------------------------------------------------------------
FAKE_PER_BATCH = 4


def fake_cifar_batches(per_batch: int = FAKE_PER_BATCH, seed: int = 0):
  """{name: (HWC uint8 images, labels)} for the six batch files, in the real file order."""
  rng = np.random.default_rng(seed)
  names = cifar10.BATCHES["train"] + cifar10.BATCHES["test"]
  return {name: (rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8),
                 [int(v) for v in rng.integers(0, 10, per_batch)]) for name in names}


def batch_pickle(images: np.ndarray, labels: list[int]) -> bytes:
  """The real format: b'data' (n, 3072) uint8, each row the CHW image, row-major."""
  data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
  return pickle.dumps({b"batch_label": b"fake", b"labels": labels, b"data": data,
                       b"filenames": [b"x.png"] * len(images)})


def write_fake_cifar(directory, batches, archive: bool) -> str:
  if not archive:
    out = directory / cifar10.BATCH_DIR
    out.mkdir()
    for name, (images, labels) in batches.items():
      (out / name).write_bytes(batch_pickle(images, labels))
    return str(out)
  path = directory / cifar10.ARCHIVE
  with tarfile.open(path, "w:gz") as tar:
    for name, (images, labels) in batches.items():
      data = batch_pickle(images, labels)
      info = tarfile.TarInfo(f"{cifar10.BATCH_DIR}/{name}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return str(path)


@pytest.fixture
def fake_cifar_env(monkeypatch):
  """Counts of the fake archives; tensorflow_datasets off so that only local files are used."""
  monkeypatch.setattr(cifar10, "NUM_EXAMPLES", {"train": 5 * FAKE_PER_BATCH, "test": FAKE_PER_BATCH})
  monkeypatch.setattr(cifar10, "_import_tfds", lambda: None)


@pytest.mark.parametrize("archive", [False, True], ids=["extracted", "tar.gz"])
def test_cifar_loads_the_real_format(tmp_path, fake_cifar_env, archive):
  batches = fake_cifar_batches()
  write_fake_cifar(tmp_path, batches, archive)
  images, labels = cifar10.load("train", data_dir=str(tmp_path))
  train = [batches[name] for name in cifar10.BATCHES["train"]]
  np.testing.assert_array_equal(images, np.concatenate([b[0] for b in train]))  # CHW -> HWC
  np.testing.assert_array_equal(labels, np.concatenate([b[1] for b in train]))
  assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
  test_images, _ = cifar10.load("test", data_dir=str(tmp_path))
  np.testing.assert_array_equal(test_images, batches["test_batch"][0])
  model = pipeline.load_images("cifar10", "test", data_dir=str(tmp_path))
  assert model.shape == (FAKE_PER_BATCH, 32, 32, 3) and model.dtype == np.float32
  np.testing.assert_array_equal(model, pipeline.to_model_range(batches["test_batch"][0]))


def test_cifar_checks_the_number_of_examples(tmp_path, monkeypatch):
  monkeypatch.setattr(cifar10, "_import_tfds", lambda: None)
  directory = write_fake_cifar(tmp_path, fake_cifar_batches(), archive=False)
  with pytest.raises(ValueError, match=re.escape(directory) + ".*20 train images, expected 50000"):
    cifar10.load("train", data_dir=str(tmp_path))


def test_cifar_truncated_archive_names_the_file(tmp_path, fake_cifar_env):
  path = write_fake_cifar(tmp_path, fake_cifar_batches(per_batch=64), archive=True)
  raw = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(raw[: len(raw) // 2])
  with pytest.raises(ValueError, match=re.escape(path)):
    cifar10.load("train", data_dir=str(tmp_path))


def test_cifar_batch_of_wrong_shape_names_the_file(tmp_path, fake_cifar_env):
  batches = fake_cifar_batches()
  directory = write_fake_cifar(tmp_path, batches, archive=False)
  bad = os.path.join(directory, "data_batch_3")
  with open(bad, "wb") as f:
    pickle.dump({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4}, f)
  with pytest.raises(ValueError, match=re.escape(bad) + ".*3072"):
    cifar10.load("train", data_dir=str(tmp_path))
  with open(bad, "wb") as f:
    f.write(batch_pickle(*batches["data_batch_3"])[:100])  # a truncated pickle
  with pytest.raises(ValueError, match=re.escape(bad) + ".*truncated"):
    cifar10.load("train", data_dir=str(tmp_path))


def test_cifar_missing_says_where_to_put_the_file(tmp_path, monkeypatch):
  monkeypatch.setattr(cifar10, "_import_tfds", lambda: None)
  with pytest.raises(FileNotFoundError) as info:
    cifar10.load("train", data_dir=str(tmp_path))
  message = str(info.value)
  assert os.path.join(str(tmp_path), "cifar-10-python.tar.gz") in message
  assert os.path.join(str(tmp_path), "cifar-10-batches-py") in message
  assert cifar10.URL in message and "download=True" in message


def test_cifar_download_checks_md5(tmp_path, fake_cifar_env, monkeypatch):
  """download=True with urlretrieve replaced by a local copy: no network, the MD5 logic for real."""
  source = write_fake_cifar(tmp_path, fake_cifar_batches(), archive=True)
  target = tmp_path / "download"
  monkeypatch.setattr(cifar10.urllib.request, "urlretrieve",
                      lambda url, path: open(path, "wb").write(open(source, "rb").read()))
  with pytest.raises(ValueError, match="MD5"):  # the real MD5 is not the fake archive's
    cifar10.load("test", data_dir=str(target), download=True)
  assert not os.listdir(target)  # the bad download is removed
  monkeypatch.setattr(cifar10, "MD5", hashlib.md5(open(source, "rb").read()).hexdigest())
  images, _ = cifar10.load("test", data_dir=str(target), download=True)
  assert images.shape == (FAKE_PER_BATCH, 32, 32, 3)
  assert os.listdir(target) == [cifar10.ARCHIVE]


class FakeTfds:
  """Stands in for tensorflow_datasets: load(..., batch_size=-1) -> {'image', 'label'} arrays."""

  def __init__(self, n: int | None):
    self.n, self.calls = n, []

  def load(self, name, split, batch_size, download):
    self.calls.append((name, split, batch_size, download))
    if self.n is None:
      raise AssertionError("Dataset cifar10: could not find data in ~/tensorflow_datasets.")
    return {"image": np.zeros((self.n, 32, 32, 3), np.uint8), "label": np.zeros(self.n, np.int64)}

  def as_numpy(self, tree):
    return tree


def test_cifar_uses_tensorflow_datasets_without_local_files(tmp_path, fake_cifar_env, monkeypatch):
  fake = FakeTfds(FAKE_PER_BATCH)
  monkeypatch.setattr(cifar10, "_import_tfds", lambda: fake)
  images, labels = cifar10.load("test", data_dir=str(tmp_path))
  assert images.shape == (FAKE_PER_BATCH, 32, 32, 3) and labels.dtype == np.int64
  assert fake.calls == [("cifar10", "test", -1, False)]
  monkeypatch.setattr(cifar10, "_import_tfds", lambda: FakeTfds(None))  # installed, not prepared
  with pytest.raises(FileNotFoundError, match="tensorflow_datasets is installed but failed"):
    cifar10.load("test", data_dir=str(tmp_path))


# --- synthetic -----------------------------------------------------------------------------------
def test_synthetic_is_deterministic_and_seeded():
  a, la = synthetic.generate(64, seed=3)
  b, lb = synthetic.generate(64, seed=3)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(la, lb)
  c, _ = synthetic.generate(64, seed=4)
  assert np.mean(a != c) > 0.5
  prefix, _ = synthetic.generate(10, seed=3)  # image i depends on (seed, i) only
  np.testing.assert_array_equal(prefix, a[:10])


@pytest.mark.parametrize("channels", [1, 3])
def test_synthetic_shapes_and_range(channels):
  images, labels = synthetic.generate(500, channels=channels, seed=1)
  assert images.shape == (500, 32, 32, channels) and images.dtype == np.uint8
  assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(synthetic.NUM_CLASSES))
  assert images.min() < 40 and images.max() > 200  # dark backgrounds, light shapes
  model = pipeline.load_images("synthetic", "train", num_images=100, channels=channels, seed=1)
  assert model.shape == (100, 32, 32, channels) and model.dtype == np.float32
  np.testing.assert_array_equal(model, pipeline.to_model_range(images[:100]))
  test = pipeline.load_images("synthetic", "test", num_images=100, channels=channels, seed=1)
  assert np.mean(test != model) > 0.5  # the test split is another stream
  with pytest.raises(ValueError, match="channels"):
    synthetic.generate(4, channels=2)


def test_synthetic_classes_differ_in_mean_image():
  """R = |m_a - m_b|^2 / sum_pixels(var_a / n_a + var_b / n_b) has expectation exactly 1 when a and b
  have the same distribution; its spread is wide because the pixels of an image are strongly
  correlated (one colour per image), so the null is calibrated empirically on split halves of each
  class (R in [0.6, 1.8] there). Every pair of classes must exceed 3x the largest split-half value
  (the closest pair, disc and square or ring and stripes, is at about 12)."""
  images, labels = synthetic.generate(8000, seed=0)
  x = images.astype(np.float64)

  def ratio(xa, xb):
    diff = xa.mean(0) - xb.mean(0)
    return np.sum(diff**2) / np.sum(xa.var(0) / len(xa) + xb.var(0) / len(xb))

  classes = [x[labels == k] for k in range(synthetic.NUM_CLASSES)]
  within = [ratio(c[: len(c) // 2], c[len(c) // 2:]) for c in classes]
  between = [ratio(classes[a], classes[b]) for a in range(4) for b in range(a + 1, 4)]
  assert max(within) < 3, within
  assert min(between) > 3 * max(within), (between, within)


def test_synthetic_is_fast():
  """10000 images in < 2 s on one core; 5 s here leaves room for a slow CI machine (a per-pixel
  Python loop would take minutes)."""
  start = time.perf_counter()
  synthetic.generate(10_000, seed=0)
  assert time.perf_counter() - start < 5.0


# --- range, padding, validation ------------------------------------------------------------------
def test_to_model_range_endpoints_are_exact():
  out = pipeline.to_model_range(np.array([0, 51, 255], np.uint8))
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, np.array([-1.0, -0.6, 1.0], np.float32))
  with pytest.raises(ValueError, match="uint8"):
    pipeline.to_model_range(np.zeros(3, np.float32))


def test_pad_to_centres_with_black():
  images = np.random.default_rng(0).uniform(-1, 1, (2, 28, 28)).astype(np.float32)
  out = pipeline.pad_to(images)
  assert out.shape == (2, 32, 32, 1) and out.dtype == np.float32
  np.testing.assert_array_equal(out[:, 2:30, 2:30, 0], images)
  assert np.sum(out == -1.0) == 2 * (32 * 32 - 28 * 28)
  same = np.zeros((1, 32, 32, 3), np.float32)
  assert pipeline.pad_to(same) is same
  with pytest.raises(ValueError, match="do not fit"):
    pipeline.pad_to(np.zeros((1, 33, 33, 1)))


@pytest.mark.parametrize("images, problem", [
    (np.zeros((32, 32, 3), np.float32), "rank 4"),
    (np.zeros((0, 32, 32, 3), np.float32), "empty"),
    (np.zeros((1, 32, 32, 3), np.uint8), "floating point"),
    (np.full((1, 32, 32, 3), np.nan, np.float32), "non-finite"),
    (np.full((1, 32, 32, 3), np.inf, np.float32), "non-finite"),
    (np.full((1, 32, 32, 3), 1.5, np.float32), r"\[-1, 1\]"),
])
def test_check_images_names_the_problem(images, problem):
  with pytest.raises(ValueError, match=problem):
    pipeline.check_images(images)


def test_load_images_rejects_unknown_names_and_arguments():
  with pytest.raises(ValueError, match="unknown image source"):
    pipeline.load_images("imagenet", "train")
  with pytest.raises(TypeError, match="num_images"):
    pipeline.load_images("fashion_mnist", "train", num_images=10)
  with pytest.raises(ValueError, match="split"):
    pipeline.load_images("synthetic", "valid", num_images=10)


# --- batching ------------------------------------------------------------------------------------
def coded_images(n: int) -> np.ndarray:
  """[n, 2, 2, 1] images whose every pixel holds the image's index: a batch shows which it holds."""
  return np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 2, 2, 1)).copy()


def ids(batch: np.ndarray) -> np.ndarray:
  return batch.reshape(-1, 4)[:, 0].astype(np.int64)


@pytest.mark.parametrize("n, batch_size, drop_remainder", [(96, 12, True), (100, 12, True),
                                                             (100, 12, False)])
def test_every_image_once_per_epoch(n, batch_size, drop_remainder):
  batcher = Batcher(coded_images(n), batch_size, seed=0, drop_remainder=drop_remainder)
  steps = batcher.steps_per_epoch
  assert steps == (n // batch_size if drop_remainder else -(-n // batch_size))
  for epoch in range(3):
    seen = np.concatenate([ids(batcher.batch(epoch * steps + i)) for i in range(steps)])
    assert len(np.unique(seen)) == len(seen)  # no image twice in an epoch
    assert len(seen) == (steps * batch_size if drop_remainder else n)
    np.testing.assert_array_equal(seen, batcher.permutation(epoch)[: len(seen)])


def test_batches_depend_only_on_seed_and_step():
  """Resume: a fresh Batcher started at step 13 (mid-epoch 1) gives the uninterrupted run's batches,
  whatever order the steps are asked in."""
  images = coded_images(50)
  run = Batcher(images, 8, seed=7)
  uninterrupted = [b for _, b in zip(range(30), run)]
  resumed = Batcher(images, 8, seed=7)
  for step, batch in zip(range(13, 30), resumed.iterate(13)):
    np.testing.assert_array_equal(batch, uninterrupted[step])
  random_access = Batcher(images, 8, seed=7)
  for step in (25, 3, 17, 0, 29):
    np.testing.assert_array_equal(random_access.batch(step), uninterrupted[step])
  np.testing.assert_array_equal(run.permutation(2), np.random.default_rng([7, 2]).permutation(50))


def test_epochs_and_seeds_give_different_orders():
  batcher = Batcher(coded_images(64), 16, seed=0)
  orders = [batcher.permutation(e) for e in range(4)]
  for a in range(4):
    for b in range(a + 1, 4):
      assert not np.array_equal(orders[a], orders[b])
  spe = batcher.steps_per_epoch
  assert not np.array_equal(batcher.batch(0), batcher.batch(spe))
  assert not np.array_equal(batcher.batch(0), Batcher(coded_images(64), 16, seed=1).batch(0))


def test_sharded_batches():
  images = np.random.default_rng(0).uniform(-1, 1, (100, 4, 4, 3)).astype(np.float32)
  batcher = Batcher(images, 64, seed=0, num_devices=8)
  batch = batcher.batch(5)
  assert batch.shape == (8, 8, 4, 4, 3)
  np.testing.assert_array_equal(batch.reshape(64, 4, 4, 3), images[batcher.indices(5)])
  assert pipeline.shard(np.zeros((12, 3)), 4).shape == (4, 3, 3)
  with pytest.raises(ValueError, match="multiple"):
    pipeline.shard(np.zeros((10, 3)), 4)


@pytest.mark.parametrize("kwargs, problem", [
    (dict(batch_size=12, num_devices=8), "not divisible by num_devices 8"),
    (dict(batch_size=101), r"batch_size must be in \[1, N = 100\]"),
    (dict(batch_size=0), "batch_size must be"),
    (dict(batch_size=16, num_devices=0), "num_devices must be >= 1"),
    (dict(batch_size=16, num_devices=8, drop_remainder=False), "last batch of 4"),
    (dict(batch_size=16, seed=-1), "seed"),
])
def test_batcher_rejects_bad_arguments(kwargs, problem):
  kwargs = {"seed": 0, **kwargs}
  with pytest.raises(ValueError, match=problem):
    Batcher(coded_images(100), **kwargs)


def test_batcher_rejects_negative_steps():
  with pytest.raises(ValueError, match="step"):
    Batcher(coded_images(10), 5, seed=0).batch(-1)
