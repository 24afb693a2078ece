"""2-D convolutions (NHWC images, HWIO kernels) computed the way XLA:CPU runs fast; the maths of lax's.

`conv2d(x, kernel, stride, padding)` is lax.conv_general_dilated(x, kernel, stride, padding) (the map of
flax.linen.Conv and of PyTorch's Conv2d) up to float32 rounding, and `Conv` is flax.linen.Conv's module
with the same parameters ("kernel" (kh, kw, C_in, C_out), "bias" (C_out,)), the same initialisation and
the same output. Only the route differs, chosen from the static shapes (times from
benchmarks/profile_steps.py and single-op timings on a 2-core AVX2 CPU, jaxlib 0.10.2, batch 128):

  1x1 kernel              a dot on the channel axis (XLA's 1x1 convolution, and above all its kernel
                          gradient, ran 5-50x slower than the dot);
  tiny maps (2x2, 1x1;    a dense matrix: every output pixel sees every input pixel, so the convolution
  stride 1)               is one (H W C_in) x (H W C_out) product of a matrix assembled from the kernel
                          taps (XLA:CPU ran 3x3 convolutions of 2x2 maps, forward and input gradient,
                          10-30x below its matmul rate; the dense product also skips the padding);
  large maps (>= 16384    lax's convolution forward and for the input gradient, the kernel gradient as
  values per image, or    dots of the shifted inputs: nine tap(x)^T dy, or one im2col product for few
  >= 32x32; >= 64 out)    input channels (XLA's kernel gradient of 16x16 and 32x32 maps ran 3-5x slower);
  strided, output of      stride-1 convolutions of the input's stride phases x[a::s, b::s], each with the
  <= 4 pixels (4x4 ->     kernel taps that land on it (nine taps in all for 3x3): XLA:CPU's input
  2x2, 2x2 -> 1x1)        gradient of a strided convolution there (an lhs-dilated convolution) ran at
                          ~5 GFLOP/s: forward + backward of 4x4x256 -> 2x2 at batch 128 172 ms by lax,
                          20 ms by phases, 4x4x128 38 against 10 ms (benchmarks/results/
                          profile-blocks-20261201.log); from 8x8 maps on, lax's was as fast or faster;
  otherwise (4x4, 8x8)    lax's convolution (as fast as any explicit form measured).

Wherever lax's convolution runs, an unpadded (VALID) one gets one row and one column of zero padding,
the same products: XLA:CPU (its YNN convolutions, jaxlib 0.10.2) ran unpadded convolutions 1.4-4.8x
slower than padded ones (paired single-op timings, 2 loaded cores). Strided, where the last row of a
phase is never read, the padding goes at the bottom and right and changes nothing else (3x3 stride 2:
35x35x288 -> 384 at batch 32 1.56x [0.96-2.12], 35x35x96 1.37x, the 299x299x3 stem 1.64x; 17x17 maps
1.08-1.14x); otherwise (stride 1) at the top and left, and the first output row and column are dropped
(one more of each computed): 3x3 stride 1, 73x73x80 -> 192 at batch 8 3.87x [2.87-8.89], 149x149x32
3.44x, 17x17x192 at batch 32 2.55x [1.81-4.06]; maps under UNPADDED_MIN_PIXELS stay as asked.

The large-map route is a `jax.custom_jvp` whose tangent is linear in each input, so forward and reverse
mode both work; its transpose gives the dots. `upsample_conv3x3` computes a 3x3 convolution of a
nearest-upsampled (x2) map as four 2x2 convolutions of the small map (4/9 of the multiplications).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Padding = tuple[tuple[int, int], tuple[int, int]]
DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# Kernel gradients by explicit dots when the input map has at least this many elements per image
# (H W C_in) or at least this many pixels, and the convolution has >= EXPLICIT_MIN_FEATURES outputs.
EXPLICIT_MIN_MAP = 16_384
EXPLICIT_MIN_PIXELS = 1_024
EXPLICIT_MIN_FEATURES = 64
IM2COL_MAX_DEPTH = 64
# The phase convolutions of `upsample_conv3x3` (2x2 kernels, one-sided padding) take the tap-dot
# kernel gradient from maps of this many pixels on: XLA's ran at ~7 GFLOP/s on 4x4 maps (batch 128,
# 128 channels; 4x4 -> 8x8 upsampling conv fwd + bwd 124 ms by lax, 75 ms with the tap dots; at 256
# channels 445 -> 230 ms; 2x2 maps were no faster).
PHASE_EXPLICIT_MIN_PIXELS = 16
# Strided convolutions with at most this many output pixels run as convolutions of the stride phases.
STRIDE_PHASES_MAX_OUTPUT_PIXELS = 4
# Unpadded stride-1 convolutions of maps with at least this many pixels get one-sided padding (see above).
UNPADDED_MIN_PIXELS = 256


def _lax_conv(x: Array, kernel: Array, stride: int, padding: Padding) -> Array:
  """lax's convolution; unpadded ones with one row and column of padding (see the module docstring)."""
  if padding != ((0, 0), (0, 0)) or min(kernel.shape[:2]) == 1:
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                        dimension_numbers=DIMENSION_NUMBERS)
  far_end_unread = [(size - k) % stride != stride - 1 for size, k in zip(x.shape[1:3], kernel.shape[:2])]
  if all(far_end_unread):  # stride > 1 and a padded last row or column that no window reaches
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((0, 1), (0, 1)),
                                        dimension_numbers=DIMENSION_NUMBERS)
  if stride == 1 and x.shape[1] * x.shape[2] >= UNPADDED_MIN_PIXELS:
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 0), (1, 0)), dimension_numbers=DIMENSION_NUMBERS)
    return y[:, 1:, 1:]
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=DIMENSION_NUMBERS)


def output_size(size: int, kernel: int, stride: int, pad: tuple[int, int]) -> int:
  """Output length of a convolution along one axis."""
  return (size + pad[0] + pad[1] - kernel) // stride + 1


def _taps(x: Array, kernel_shape: tuple[int, ...], stride: int, padding: Padding):
  """[(i, j, x_ij)]: x_ij (B, H_out, W_out, C) is the map of input pixels that kernel tap (i, j)
  multiplies, x_ij[b, p, q] = pad(x)[b, stride p + i, stride q + j]."""
  kh, kw = kernel_shape[:2]
  ho = output_size(x.shape[1], kh, stride, padding[0])
  wo = output_size(x.shape[2], kw, stride, padding[1])
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  return [(i, j, xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :])
          for i in range(kh) for j in range(kw)]


def _tap_conv(x: Array, kernel: Array, stride: int, padding: Padding) -> Array:
  """The convolution written as dots that are linear in the kernel, for its transpose (the kernel
  gradient): sum_ij x_ij @ kernel[i, j], nine dots, transposed to the nine tap(x)^T dy; or, for few input
  channels (kh kw C_in <= IM2COL_MAX_DEPTH), the taps side by side (im2col) times the kernel as one
  (kh kw C_in, C_out) matrix: one dot (nine dots of depth C_in < 8 ran slowly). (Shifting dy instead of
  x when C_out < C_in, as one dot x^T [dy_ij side by side], ran 20% slower in the VAE step.)"""
  kh, kw, c_in, c_out = kernel.shape
  taps = _taps(x, kernel.shape, stride, padding)
  if kh * kw * c_in <= IM2COL_MAX_DEPTH:
    columns = jnp.concatenate([x_ij for _, _, x_ij in taps], axis=-1)      # (B, H_out, W_out, kh kw C_in)
    return jnp.einsum("bhwc,cd->bhwd", columns, kernel.reshape(kh * kw * c_in, c_out))
  return functools.reduce(jnp.add, [jnp.einsum("bhwc,cd->bhwd", x_ij, kernel[i, j]) for i, j, x_ij in taps])


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv_explicit_kernel_grad(x: Array, kernel: Array, stride: int, padding: Padding) -> Array:
  return _lax_conv(x, kernel, stride, padding)


@functools.partial(_conv_explicit_kernel_grad.defjvp, symbolic_zeros=True)
def _conv_explicit_kernel_grad_jvp(stride, padding, primals, tangents):
  x, kernel = primals
  dx, dkernel = tangents
  out = _lax_conv(x, kernel, stride, padding)
  terms = []
  if not isinstance(dx, jax.custom_derivatives.SymbolicZero):
    terms.append(_lax_conv(dx, kernel, stride, padding))  # transposes to lax's input gradient
  if not isinstance(dkernel, jax.custom_derivatives.SymbolicZero):
    terms.append(_tap_conv(x, dkernel, stride, padding))  # transposes to nine dots tap(x)^T dy
  if not terms:
    return out, jnp.zeros_like(out)
  return out, functools.reduce(jnp.add, terms)


def _dense_conv(x: Array, kernel: Array, padding: Padding) -> Array:
  """Stride-1 convolution of a map so small that every output pixel sees every input pixel (within the
  kernel window, inside the padding): out (B, P C_out) = x (B, Q C_in) @ M (Q C_in, P C_out), with
  M[q, p] = kernel[q - p + pad]."""
  b, h, w, c = x.shape
  kh, kw = kernel.shape[:2]
  ho, wo = output_size(h, kh, 1, padding[0]), output_size(w, kw, 1, padding[1])
  rows = []
  for qy in range(h):
    for qx in range(w):
      # kernel taps (i, j) = (q - p + pad): every tap is inside the kernel by the caller's check
      rows.append(jnp.concatenate([kernel[qy - py + padding[0][0], qx - px + padding[1][0]]
                                   for py in range(ho) for px in range(wo)], axis=-1))
  matrix = jnp.concatenate(rows, axis=0)                                   # (Q C_in, P C_out)
  return jnp.dot(x.reshape(b, h * w * c), matrix).reshape(b, ho, wo, kernel.shape[-1])


def _dense_applies(x_shape, kernel_shape, stride: int, padding: Padding) -> bool:
  """Stride 1 and every (input q, output p) pair within the kernel window: 0 <= q - p + pad < k."""
  if stride != 1:
    return False
  for size, k, pad in zip(x_shape[1:3], kernel_shape[:2], padding):
    out = output_size(size, k, 1, pad)
    if size - 1 + pad[0] >= k or pad[0] - (out - 1) < 0:
      return False
  return True


def _axis_phases(size: int, k: int, stride: int, pad: tuple[int, int]):
  """Along one axis of a strided convolution: [(a, i0, pad_a)] for each input phase x[a::stride] that
  some kernel tap lands on. Output p takes padded input stride p + i, i.e. x[stride p + i - pad_lo]: the
  taps i0, i0 + stride, ... of phase a read x_a[p + d] for consecutive d, a stride-1 convolution of x_a
  with those taps and padding pad_a (a negative side crops x_a)."""
  out = output_size(size, k, stride, pad)
  phases = []
  for a in range(min(stride, size)):
    i0 = (pad[0] + a) % stride
    if i0 >= k:
      continue
    first = (i0 - pad[0] - a) // stride                         # x_a offsets of the taps: first, first + 1, ...
    last = first + len(range(i0, k, stride)) - 1
    length = len(range(a, size, stride))
    phases.append((a, i0, (-first, out - 1 + last - (length - 1))))
  return phases


def _stride_phase_conv(x: Array, kernel: Array, stride: int, padding: Padding) -> Array:
  """The strided convolution as the sum over input phases (a, b) of the stride-1 convolutions
  conv2d(x[a::s, b::s], kernel[i0::s, j0::s]): the same products, each kernel tap used once; their
  transposes are stride-1 convolutions too (no lhs-dilated convolution)."""
  terms = []
  for a, i0, (top, bottom) in _axis_phases(x.shape[1], kernel.shape[0], stride, padding[0]):
    for b, j0, (left, right) in _axis_phases(x.shape[2], kernel.shape[1], stride, padding[1]):
      phase = x[:, a::stride, b::stride, :]
      phase = phase[:, :phase.shape[1] + min(bottom, 0), :phase.shape[2] + min(right, 0), :]
      if phase.shape[1] > 0 and phase.shape[2] > 0:  # a cropped-away phase meets only padding
        terms.append(conv2d(phase, kernel[i0::stride, j0::stride], 1,
                            ((top, max(bottom, 0)), (left, max(right, 0)))))
  if not terms:  # every output reads padding along some axis
    b, h, w, _ = x.shape
    out_hw = [output_size(n, k, stride, pad) for n, k, pad in zip((h, w), kernel.shape[:2], padding)]
    return jnp.zeros((b, *out_hw, kernel.shape[-1]), jnp.result_type(x, kernel))
  return functools.reduce(jnp.add, terms)


def route(x_shape, kernel_shape, stride: int, padding: Padding) -> str:
  """Which computation `conv2d` uses for these static shapes: "dot" (1x1 kernel), "dense" (tiny map),
  "stride_phases" (strided, tiny output), "explicit_kernel_grad" (large map) or "lax" (see the module
  docstring)."""
  _, h, w, c_in = x_shape
  kh, kw, _, c_out = kernel_shape
  if kh == kw == 1 and tuple(map(tuple, padding)) == ((0, 0), (0, 0)):
    return "dot"
  if _dense_applies(x_shape, kernel_shape, stride, padding):
    return "dense"
  out_pixels = output_size(h, kh, stride, padding[0]) * output_size(w, kw, stride, padding[1])
  if stride > 1 and out_pixels <= STRIDE_PHASES_MAX_OUTPUT_PIXELS:
    return "stride_phases"
  large = h * w * c_in >= EXPLICIT_MIN_MAP or h * w >= EXPLICIT_MIN_PIXELS
  if large and c_out >= EXPLICIT_MIN_FEATURES:
    return "explicit_kernel_grad"
  return "lax"


def conv2d(x: Array, kernel: Array, stride: int = 1, padding: Padding = ((0, 0), (0, 0))) -> Array:
  """lax.conv_general_dilated(x, kernel, (stride, stride), padding), NHWC / HWIO, routed by shape.

  Args:
    x: (B, H, W, C_in) float array.
    kernel: (kh, kw, C_in, C_out).
    stride: the same in both directions.
    padding: ((top, bottom), (left, right)) zero padding.

  Returns:
    (B, H_out, W_out, C_out), H_out = (H + top + bottom - kh) // stride + 1 (W_out likewise).
  """
  if x.ndim != 4 or kernel.ndim != 4 or x.shape[-1] != kernel.shape[2]:
    raise ValueError(f"conv2d expects x (B, H, W, C) and kernel (kh, kw, C, C_out), got {x.shape} "
                     f"and {kernel.shape}.")
  padding = tuple(tuple(int(p) for p in pad) for pad in padding)
  how = route(x.shape, kernel.shape, stride, padding)
  if how == "dot":
    return jnp.einsum("bhwc,cd->bhwd", x[:, ::stride, ::stride, :], kernel[0, 0])
  if how == "dense":
    return _dense_conv(x, kernel, padding)
  if how == "stride_phases":
    return _stride_phase_conv(x, kernel, stride, padding)
  if how == "explicit_kernel_grad":
    return _conv_explicit_kernel_grad(x, kernel, stride, padding)
  return _lax_conv(x, kernel, stride, padding)


# Nearest-neighbour x2 then a 3x3 convolution (padding 1), per output phase (a, b) = (row, column) parity:
# output pixel (2i + a, 2j + b) sees input rows i - 1 + a .. i + a and columns likewise, the kernel rows
# that land on the same input row summed: a = 0 -> (k0, k1 + k2), a = 1 -> (k0 + k1, k2).
_PHASE_TAPS = (((1, 0, 0), (0, 1, 1)), ((1, 1, 0), (0, 0, 1)))  # [a][u][i]: kernel row i -> tap u


def upsample_conv3x3(x: Array, kernel: Array) -> Array:
  """conv2d(nearest_upsample_x2(x), kernel, 1, padding 1) as four 2x2 convolutions of x, one per output
  phase, with the kernel taps that fall on the same input pixel summed: 4 / 9 of the multiplications.

  Args:
    x: (B, H, W, C_in).
    kernel: (3, 3, C_in, C_out).

  Returns:
    (B, 2H, 2W, C_out): the same map as the convolution of the upsampled image (to float32 rounding).
  """
  if kernel.shape[:2] != (3, 3):
    raise ValueError(f"upsample_conv3x3 expects a (3, 3, C_in, C_out) kernel, got {kernel.shape}.")
  b, h, w, _ = x.shape
  taps = jnp.asarray(_PHASE_TAPS, kernel.dtype)                                  # (2, 2, 3)
  phase_conv = conv2d
  if h * w >= PHASE_EXPLICIT_MIN_PIXELS and kernel.shape[-1] >= EXPLICIT_MIN_FEATURES:
    phase_conv = _conv_explicit_kernel_grad
  rows = []
  for a in range(2):
    phases = []
    for c in range(2):
      phase_kernel = jnp.einsum("ui,vj,ijcd->uvcd", taps[a], taps[c], kernel)   # (2, 2, C_in, C_out)
      phases.append(phase_conv(x, phase_kernel, 1, ((1 - a, a), (1 - c, c))))   # (B, H, W, C_out)
    rows.append(jnp.stack(phases, axis=3))                                      # (B, H, W, 2, C_out)
  return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, kernel.shape[-1])     # via (B, H, 2, W, 2, C)


class Conv(nn.Module):
  """flax.linen.Conv with square kernels, integer padding and a bias, computed by `conv2d`.

  The parameters ("kernel" (k, k, C_in, features), "bias" (features,)), their initialisation (the same
  random draws from the same key) and the output are those of
  nn.Conv(features, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad))).

  Attributes:
    features: output channels.
    kernel_size: k, the kernel's height and width.
    stride: the same in both directions.
    padding: pixels of zero padding on each side.
    kernel_init: initialiser of the kernel (flax's default, LeCun normal).
    bias_init: initialiser of the bias (flax's default, zeros).
    upsample: 2 applies nearest-neighbour x2 upsampling to the input first (3x3 kernel, padding 1
      only), computed by `upsample_conv3x3`; 1 (default) does not.
  """

  features: int
  kernel_size: int = 3
  stride: int = 1
  padding: int = 1
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros
  upsample: int = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: (B, H, W, C_in) -> (B, H_out, W_out, features) (H_out = 2H with upsample=2)."""
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
    dtype = jnp.result_type(x.dtype, kernel.dtype)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if self.upsample == 1:
      pad = (self.padding, self.padding)
      y = conv2d(x, kernel, self.stride, (pad, pad))
    elif self.upsample == 2 and (k, self.stride, self.padding) == (3, 1, 1):
      y = upsample_conv3x3(x, kernel)
    else:
      raise ValueError(f"Conv: upsample={self.upsample} is supported only as 2 with a 3x3 kernel, stride "
                       f"1 and padding 1 (or 1: no upsampling).")
    return y + bias.astype(dtype)
