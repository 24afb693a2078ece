"""The networks of cgdiff.models: shapes, parameter counts, the logvar floor, the gate's range and start,
time dependence of the noise predictors, GroupNorm against flax, every convolution route of
cgdiff.models.conv against lax / nn.Conv (values, gradients, forward mode), the networks against their
all-lax reference, and the input checks.

Cost: on a 2-core CPU the time goes to XLA compiles, not to running. So networks are tiny, shapes and
input checks use jax.eval_shape (a trace, no compile), the full-size parameter counts too, and every
compiled test function is built by `jit` below, which asks XLA for LLVM -O0: compiles (above all of
jax.random's init kernels) get 5-10x faster and the arithmetic is the same up to float32 rounding.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgdiff.models import (GRANULARITIES, AttentionBlock, Conv, ConvBlock, CriticGate, Downsample,
                           GroupNorm, MLPScoreNet, ResBlock, UNet, Upsample, VAE, conv2d, group_count,
                           sinusoidal_embedding, soft_floor)
from cgdiff.models import conv as conv_lib
from cgdiff.models.layers import upsample_nearest

KEY = jax.random.PRNGKey(0)
FAST_COMPILE = {"xla_backend_optimization_level": 0}
SMALL_VAE = dict(latent_channels=2, out_channels=1, channels=(8, 16, 32))
# 16 and 32 channels: one channel per GroupNorm group, so time enters by scale and shift (see ResBlock)
SMALL_UNET = dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                  num_heads=2, scale_shift_norm=True)
SMALL_GATE = dict(hidden_channels=16, num_layers=2)


def jit(fn, **kwargs):
  """jax.jit with fast (unoptimised) XLA:CPU code generation: see the module docstring."""
  return jax.jit(fn, compiler_options=FAST_COMPILE, **kwargs)


def num_params(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def max_abs(tree) -> float:
  return max(float(np.max(np.abs(np.asarray(leaf)))) for leaf in jax.tree.leaves(tree))


def normal(seed: int, shape: tuple[int, ...], scale: float = 1.0, offset: float = 0.0) -> jax.Array:
  """offset + scale * N(0, 1) as float32, drawn by numpy (eager jax.random compiles per shape)."""
  return jnp.asarray(offset + scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def random_params(module: nn.Module, *args, seed: int = 0):
  """Parameters of the shapes `module.init` would give, filled without compiling init: kernels
  N(0, 1 / fan_in), GroupNorm scales 1, biases N(0, 0.1^2) (nonzero, so no output is trivially zero)."""
  shapes = jax.eval_shape(module.init, KEY, *args)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = getattr(path[-1], "key", "")
    if name == "scale":
      return jnp.ones(leaf.shape, leaf.dtype)
    std = 0.1 if name == "bias" else 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
    return jnp.asarray(std * rng.standard_normal(leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def replace_leaf(params, path: tuple[str, ...], fn):
  """A copy of `params` with the leaf at `path` (dict keys) replaced by fn(leaf)."""
  def replace(p, leaf):
    return fn(leaf) if tuple(getattr(k, "key", None) for k in p) == path else leaf
  return jax.tree_util.tree_map_with_path(replace, params)


def perturb(params, path: tuple[str, ...], seed: int, scale: float = 0.1):
  """A copy of `params` with the leaf at `path` replaced by scale * N(0, 1) noise."""
  return replace_leaf(params, path, lambda leaf: normal(seed, leaf.shape, scale))


# --- layers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels, groups", [(1, 1), (3, 3), (4, 4), (32, 32), (48, 24), (64, 32),
                                              (96, 32), (192, 32), (384, 32), (100, 25)])
def test_group_count_is_the_largest_divisor_up_to_32(channels, groups):
  assert group_count(channels) == groups
  assert channels % groups == 0


@pytest.mark.parametrize("shape", [(2, 8, 8, 64), (3, 4, 4, 6), (2, 4, 4, 48), (2, 5, 16), (4, 12)])
def test_group_norm_matches_flax(shape):
  # The same formula (E[x^2] - E[x]^2 in float32, then (x - mean) * scale / sqrt(var + eps) + bias)
  # reduced in another order: float32 rounding of means of <= 4096 terms of size ~10 is ~1e-6 relative,
  # under the brief's 1e-5. (4, 12) has one element per group: var = 0, output = bias exactly.
  x = normal(0, shape, scale=2.0, offset=3.0)  # an offset, to exercise the one-pass variance
  c = shape[-1]
  params = {"params": {"scale": normal(1, (c,), scale=0.1, offset=1.0), "bias": normal(2, (c,), 0.1)}}
  ours = jit(GroupNorm().apply)(params, x)
  ref = jit(nn.GroupNorm(num_groups=group_count(c), epsilon=1e-6).apply)(params, x)
  chex.assert_shape(ours, shape)
  chex.assert_trees_all_close(ours, ref, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_equal_shapes(jax.eval_shape(GroupNorm().init, KEY, x), params)


def test_group_norm_is_no_less_accurate_than_flax():
  # A large mean (30 std) makes E[x^2] - E[x]^2 cancel: both lose digits; the per-channel partial sums
  # of ours must not lose more than flax's reduction (errors against a float64 reference).
  shape, groups = (2, 32, 32, 64), 32
  x = normal(0, shape, scale=1.0, offset=30.0)
  params = {"params": {"scale": jnp.ones((64,)), "bias": jnp.zeros((64,))}}
  x64 = np.asarray(x, np.float64).reshape(2, -1, groups, 2)
  ref = ((x64 - x64.mean(axis=(1, 3), keepdims=True))
         / np.sqrt(x64.var(axis=(1, 3), keepdims=True) + 1e-6)).reshape(shape)
  err_ours = max_abs(np.asarray(jit(GroupNorm().apply)(params, x)) - ref)
  err_flax = max_abs(np.asarray(jit(nn.GroupNorm(num_groups=groups, epsilon=1e-6).apply)(params, x)) - ref)
  assert err_ours <= err_flax + 1e-6, (err_ours, err_flax)


def test_group_norm_rejects_groups_that_do_not_divide():
  with pytest.raises(ValueError, match="do not divide"):
    jax.eval_shape(GroupNorm(num_groups=5).init, KEY, jnp.zeros((1, 2, 2, 8)))


def test_sinusoidal_embedding_values_and_scale():
  t = jnp.array([0.0, 0.3, 1.0])
  emb = sinusoidal_embedding(t, 16, scale=1000.0)
  chex.assert_shape(emb, (3, 16))
  chex.assert_trees_all_close(emb[0], jnp.concatenate([jnp.zeros(8), jnp.ones(8)]))  # t = 0
  chex.assert_trees_all_close(emb, sinusoidal_embedding(1000.0 * t, 16), atol=1e-6)
  chex.assert_trees_all_close(jnp.sum(emb**2, axis=-1), jnp.full(3, 8.0), rtol=1e-6)  # sin^2 + cos^2
  odd = sinusoidal_embedding(t, 7)
  chex.assert_shape(odd, (3, 7))
  chex.assert_trees_all_equal(odd[:, -1], jnp.zeros(3))
  with pytest.raises(ValueError, match="shape \\(B,\\)"):
    sinusoidal_embedding(jnp.zeros((3, 1)), 8)


def test_layer_shapes():
  x = jnp.zeros((2, 8, 8, 8))
  temb = jnp.zeros((2, 12))
  for module, args, out_shape in [
      (ConvBlock(16), (x,), (2, 8, 8, 16)),
      (ConvBlock(16, stride=2), (x,), (2, 4, 4, 16)),
      (ResBlock(64), (x, temb), (2, 8, 8, 64)),
      (ResBlock(16, scale_shift_norm=True), (x, temb), (2, 8, 8, 16)),
      (ResBlock(), (x,), (2, 8, 8, 8)),
      (AttentionBlock(num_heads=2), (x,), (2, 8, 8, 8)),
      (Downsample(), (x,), (2, 4, 4, 8)),
      (Upsample(4), (x,), (2, 16, 16, 4)),
  ]:
    out, _ = jax.eval_shape(module.init_with_output, KEY, *args)
    chex.assert_shape(out, out_shape)
  res_params = jax.eval_shape(ResBlock(64).init, KEY, x, temb)["params"]
  assert set(res_params) == {"norm1", "conv1", "time_proj", "norm2", "conv2", "skip"}
  with pytest.raises(ValueError, match="must divide"):
    jax.eval_shape(AttentionBlock(num_heads=3).init, KEY, x)


def test_resblock_time_conditioning_survives_group_norm():
  # Additive conditioning needs >= 2 channels per group (64 channels: 32 groups of 2); with one channel
  # per group GroupNorm removes a per-channel shift exactly, so that configuration is refused.
  x = normal(0, (2, 4, 4, 64))
  temb_a, temb_b = jnp.ones((2, 8)), -jnp.ones((2, 8))
  for block in (ResBlock(64), ResBlock(16, scale_shift_norm=True)):
    params = jit(block.init)(KEY, x, temb_a)
    apply = jit(block.apply)
    assert max_abs(apply(params, x, temb_a) - apply(params, x, temb_b)) > 1e-3
  with pytest.raises(ValueError, match="scale_shift_norm=True"):
    jax.eval_shape(ResBlock(32).init, KEY, x, temb_a)
  additive = dict(SMALL_UNET, scale_shift_norm=False)
  with pytest.raises(ValueError, match="scale_shift_norm=True"):
    jax.eval_shape(UNet(**additive).init, KEY, jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)))


# --- convolutions: each route of cgdiff.models.conv against lax / flax ------------------------------------
# The routes compute the same sums in another order, so they differ by float32 rounding: in the usual
# random-walk model a sum of n terms in another order moves by ~sqrt(n) u |terms| (u = 2^-24). Outputs
# and gradients are compared with max|ours - ref| <= 16 sqrt(n) u max|ref|, n the number of products per
# entry (a wrong tap, stride or padding gives errors of order max|ref|, ~1e5 times more).
U32 = 2.0**-24


def assert_rounding_close(ours, ref, n_terms: int):
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    chex.assert_equal_shape([a, b])
    scale = float(np.max(np.abs(np.asarray(b))))
    err = float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    assert err <= 16 * np.sqrt(n_terms) * U32 * scale, (err, scale, n_terms)


# (x shape, kernel size, C_out, stride, padding, route taken by conv2d, case name)
CONV_CASES = [
    ((2, 5, 4, 8), 1, 6, 1, 0, "dot", "1x1 kernel"),
    ((2, 2, 2, 8), 3, 6, 1, 1, "dense", "2x2 map"),
    ((2, 1, 1, 8), 3, 6, 1, 1, "dense", "1x1 map"),
    ((2, 2, 3, 8), 3, 6, 1, 1, "lax", "2x3 map: corner pixels outside each other's window"),
    ((2, 6, 4, 8), 3, 6, 1, 1, "lax", "6x4 map"),
    ((2, 6, 6, 8), 3, 6, 2, 1, "lax", "stride 2"),
    ((2, 4, 4, 8), 3, 6, 2, 1, "stride_phases", "stride 2, 4x4 -> 2x2 map"),
    ((2, 2, 2, 8), 3, 6, 2, 1, "stride_phases", "stride 2, 2x2 -> 1x1 map"),
    ((2, 6, 6, 8), 3, 6, 2, 0, "stride_phases", "stride 2, no padding: the last row of a phase unread"),
    ((2, 6, 5, 8), 4, 6, 3, 1, "stride_phases", "stride 3, 4x4 kernel, 6x5 map"),
    ((2, 1, 1, 8), 1, 6, 2, 1, "stride_phases", "every output reads padding only: zeros"),
    ((2, 32, 32, 3), 3, 64, 1, 1, "explicit_kernel_grad", "32x32 map, im2col (3 input channels)"),
    ((2, 16, 16, 64), 3, 64, 2, 1, "explicit_kernel_grad", "16x16x64 map, nine tap dots, stride 2"),
    ((2, 16, 17, 3), 3, 6, 1, 0, "lax", "16x17 map, no padding: padded one-sided, first row and column dropped"),
    ((1, 33, 32, 4), 3, 64, 1, 0, "explicit_kernel_grad", "33x32 map, no padding: one-sided padding too"),
    ((2, 35, 33, 4), 3, 6, 2, 0, "lax", "stride 2, no padding, last row and column unread: padded there"),
]


@pytest.mark.parametrize("x_shape, k, c_out, stride, pad, route", [case[:-1] for case in CONV_CASES],
                         ids=[f"{case[-2]}: {case[-1]}" for case in CONV_CASES])
def test_conv2d_matches_lax_values_and_derivatives(x_shape, k, c_out, stride, pad, route):
  x = normal(0, x_shape)
  kernel = normal(1, (k, k, x_shape[-1], c_out), scale=1.0 / np.sqrt(k * k * x_shape[-1]))
  padding = ((pad, pad), (pad, pad))
  assert conv_lib.route(x.shape, kernel.shape, stride, padding) == route
  ours = lambda x, w: conv2d(x, w, stride, padding)
  ref = lambda x, w: jax.lax.conv_general_dilated(x, w, (stride, stride), padding,
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
  out = jit(ref)(x, kernel)
  cotangent = normal(2, out.shape)
  grad = lambda f: jit(jax.grad(lambda x, w: jnp.vdot(f(x, w), cotangent), argnums=(0, 1)))(x, kernel)
  tangents = (normal(3, x.shape), normal(4, kernel.shape))
  jvp = lambda f: jit(lambda x, w: jax.jvp(f, (x, w), tangents)[1])(x, kernel)
  per_output = k * k * x_shape[-1]                       # products summed per output / input-gradient entry
  per_kernel_entry = x_shape[0] * out.shape[1] * out.shape[2]  # per kernel-gradient entry
  assert_rounding_close(jit(ours)(x, kernel), out, per_output)
  grads_ours, grads_ref = grad(ours), grad(ref)
  assert_rounding_close(grads_ours[0], grads_ref[0], k * k * c_out)
  assert_rounding_close(grads_ours[1], grads_ref[1], per_kernel_entry)
  assert_rounding_close(jvp(ours), jvp(ref), 2 * per_output)  # forward mode too (custom_jvp route)


@pytest.mark.parametrize("x_shape, stride, padding, expected", [
    ((1, 16, 16, 3), 1, 0, ((1, 0), (1, 0))),  # unpadded, 256 pixels: one row and column more, dropped
    ((1, 15, 17, 3), 1, 0, ((0, 0), (0, 0))),  # 255 pixels: as asked
    ((1, 35, 35, 3), 2, 0, ((0, 1), (0, 1))),  # stride 2, the last row and column unread: padded there
    ((1, 35, 36, 3), 2, 0, ((0, 0), (0, 0))),  # stride 2, column 35 read by the last window: as asked
    ((1, 32, 32, 3), 1, 1, ((1, 1), (1, 1)))])  # padded: as asked
def test_unpadded_convolutions_get_one_row_and_column_of_padding(x_shape, stride, padding, expected):
  # Which convolution XLA is handed (the values: conv2d's "no padding" cases above).
  kernel = jnp.zeros((3, 3, x_shape[-1], 6))
  jaxpr = jax.make_jaxpr(lambda x: conv2d(x, kernel, stride, ((padding, padding),) * 2))(jnp.zeros(x_shape))
  convs = [eqn for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == "conv_general_dilated"]
  assert [tuple(map(tuple, eqn.params["padding"])) for eqn in convs] == [expected]


@pytest.mark.parametrize("x_shape, k, stride, upsample, features", [
    ((2, 6, 6, 8), 3, 1, 1, 16), ((2, 6, 6, 8), 3, 2, 1, 16), ((2, 4, 4, 8), 1, 1, 1, 16),
    ((2, 3, 4, 8), 3, 1, 2, 16), ((2, 2, 2, 8), 3, 1, 2, 16),
    ((2, 4, 4, 8), 3, 1, 2, 64)])  # phase convolutions with the tap-dot kernel gradient
def test_conv_module_is_flax_conv(x_shape, k, stride, upsample, features):
  # The same parameter tree and initial draws as nn.Conv from the same key, and the same map (of the
  # nearest-upsampled input when upsample=2: four 2x2 phase convolutions with summed taps).
  x = normal(0, x_shape)
  pad = (k - 1) // 2
  ours = Conv(features, k, stride, padding=pad, upsample=upsample, bias_init=nn.initializers.constant(0.3))
  ref = nn.Conv(features, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                bias_init=nn.initializers.constant(0.3))
  x_ref = upsample_nearest(x, upsample) if upsample > 1 else x
  params = jit(ours.init)(KEY, x)
  chex.assert_trees_all_equal(params, jit(ref.init)(KEY, x_ref))
  cotangent = normal(1, jax.eval_shape(ref.apply, params, x_ref).shape)
  value_and_grads = lambda f: jit(jax.value_and_grad(lambda p, x: jnp.vdot(f(p, x), cotangent),
                                                     argnums=(0, 1)))(params, x)
  out, grads = value_and_grads(ours.apply)
  out_ref, grads_ref = value_and_grads(lambda p, x: ref.apply(p, upsample_nearest(x, upsample)))
  n_terms = k * k * x_shape[-1] * cotangent.size  # <out, cotangent> sums every output's products
  assert_rounding_close(out, out_ref, n_terms)
  assert_rounding_close(grads, grads_ref, cotangent.size)
  with pytest.raises(ValueError, match="upsample"):
    jax.eval_shape(Conv(4, 1, padding=0, upsample=2).init, KEY, x)


def test_vae_matches_its_lax_convolution_reference(monkeypatch):
  # End to end through a network: a VAE with a 32x32 -> 64-channel first conv (explicit kernel-gradient
  # route), stride-2 convs, 1x1 convs and upsampling decoder blocks (phase convolutions), against the same
  # network with every convolution done by lax on the explicitly upsampled input (nn.Conv's maths). Each
  # route is tested alone above; this checks the wiring. (A UNet adds ~20 s of compiles on 2 cores and
  # only routes tested above.)
  vae = VAE(latent_channels=2, out_channels=1, channels=(64, 8, 8))
  x = jnp.tanh(normal(1, (2, 32, 32, 1)))
  params = random_params(vae, x, seed=3)

  def loss(p):
    mean, logvar, x_hat = vae.apply(p, x)
    return jnp.sum(x_hat ** 2) + jnp.sum(mean ** 2) + jnp.sum(logvar)

  loss_ours, grads = jit(jax.value_and_grad(loss))(params)
  lax_conv = lambda x, w, stride=1, padding=((0, 0), (0, 0)): jax.lax.conv_general_dilated(
      x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  monkeypatch.setattr(conv_lib, "conv2d", lax_conv)
  monkeypatch.setattr(conv_lib, "upsample_conv3x3",
                      lambda x, w: lax_conv(upsample_nearest(x), w, 1, ((1, 1), (1, 1))))
  loss_ref, grads_ref = jit(jax.value_and_grad(loss))(params)
  # Through a dozen layers the per-op rounding differences above (<= 16 sqrt(n) u relative, n <= 9 * 64)
  # compound through each layer's gain; 1e-4 relative (~1.7e3 u, a dozen layers at ~140 u each) bounds
  # the loss and, against the largest gradient, every gradient: gradients that are zero in exact
  # arithmetic (a conv bias just before a GroupNorm) are rounding noise in both and meet the same
  # absolute bound. A wrong tap, padding or stride changes the loss by O(1).
  chex.assert_trees_all_close(loss_ours, loss_ref, rtol=1e-4)
  assert max_abs(jax.tree.map(jnp.subtract, grads, grads_ref)) <= 1e-4 * max_abs(grads_ref)


# --- parameter counts at 001's full size ------------------------------------------------------------
# GN(c) = 2c; conv kxk (ci -> co) = k^2 ci co + co; Dense(i -> o) = i o + o.
def _conv3(ci: int, co: int) -> int:
  return 9 * ci * co + co


def _resblock(ci: int, co: int, e: int) -> int:
  """GN(ci) conv3(ci,co) Dense(e,co) GN(co) conv3(co,co) [+ conv1(ci,co) if ci != co]."""
  skip = ci * co + co if ci != co else 0
  return 2 * ci + _conv3(ci, co) + (e * co + co) + 2 * co + _conv3(co, co) + skip


def _attention(c: int) -> int:
  """GN(c), qkv Dense(c, 3c), proj Dense(c, c): 4 c^2 + 6 c."""
  return 2 * c + (3 * c * c + 3 * c) + (c * c + c)


def _unet(b: int, c: int = 4) -> int:
  """001 section 3.2: mults (1, 2, 2), 2 ResBlocks per level, attention at 8, 4, 2 and in the middle."""
  e, c1, c2 = 4 * b, b, 2 * b
  time = (b * e + e) + (e * e + e)
  conv_in = _conv3(c, b)
  down = (2 * (_resblock(c1, c1, e) + _attention(c1)) + _conv3(c1, c1)                   # 8x8, Downsample
          + _resblock(c1, c2, e) + _resblock(c2, c2, e) + 2 * _attention(c2) + _conv3(c2, c2)  # 4x4, Down
          + 2 * (_resblock(c2, c2, e) + _attention(c2)))                                 # 2x2
  mid = 2 * _resblock(c2, c2, e) + _attention(c2)
  # skip channels pushed: [c1 (conv_in), c1, c1, c1 (down), c2, c2, c2 (down), c2, c2], popped in reverse
  up = (3 * (_resblock(2 * c2, c2, e) + _attention(c2)) + _conv3(c2, c2)                 # 2x2, Upsample
        + 2 * _resblock(2 * c2, c2, e) + _resblock(c2 + c1, c2, e) + 3 * _attention(c2)   # 4x4
        + _conv3(c2, c2)                                                                  # Upsample
        + _resblock(c2 + c1, c1, e) + 2 * _resblock(2 * c1, c1, e) + 3 * _attention(c1))  # 8x8
  out = 2 * b + _conv3(b, c)
  return time + conv_in + down + mid + up + out


def _vae(c: int, img: int) -> int:
  """001 section 3.1: ConvBlocks 64, 128 (s2), 256 (s2), 1x1 head to 2c; decoder 256, 128, 64, conv3 out."""
  block = lambda ci, co: _conv3(ci, co) + 2 * co
  encoder = block(img, 64) + block(64, 128) + block(128, 256) + (256 * 2 * c + 2 * c)
  decoder = block(c, 256) + block(256, 128) + block(128, 64) + _conv3(64, img)
  return encoder + decoder


@pytest.mark.parametrize("name, module, args, expected, recorded", [
    ("vae cifar C=4", VAE(latent_channels=4, out_channels=3), (jnp.zeros((1, 32, 32, 3)),),
     _vae(4, 3), 754_699),
    ("vae fashion C=2", VAE(latent_channels=2, out_channels=1), (jnp.zeros((1, 32, 32, 1)),),
     _vae(2, 1), 746_757),
    ("unet base 128", UNet(base_channels=128), (jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,))),
     _unet(128), 27_490_820),
    ("unet base 64", UNet(base_channels=64), (jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,))),
     _unet(64), 6_888_708),
    # time MLP 16 -> 64 -> 64, 2 x (conv3 + GN + time Dense), head Dense(64 -> 1)
    ("gate example", CriticGate(), (jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,))),
     (16 * 64 + 64 + 64 * 64 + 64) + _conv3(4, 64) + _conv3(64, 64) + 2 * (128 + 64 * 64 + 64) + 65,
     53_185),
    # time MLP 256 -> 256 -> 256, Dense 2 -> 256, 3 x (time Dense + Dense), Dense 256 -> 2
    ("mlp", MLPScoreNet(), (jnp.zeros((1, 2)), jnp.zeros((1,))),
     2 * (256 * 256 + 256) + (2 * 256 + 256) + 6 * (256 * 256 + 256) + (256 * 2 + 2), 527_618),
])
def test_full_size_parameter_counts(name, module, args, expected, recorded):
  # 001 states no parameter count; `expected` is derived from its architecture above, `recorded` is the
  # number measured when the models were written (a change of either means the architecture changed).
  assert expected == recorded, name
  assert num_params(jax.eval_shape(module.init, KEY, *args)) == expected, name


# --- VAE ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("latent_channels, img_channels, size", [(4, 3, (32, 32)), (2, 1, (32, 32)),
                                                                 (4, 3, (16, 12))])
def test_vae_shapes(latent_channels, img_channels, size):
  vae = VAE(latent_channels=latent_channels, out_channels=img_channels, channels=(8, 16, 32))
  x = jnp.zeros((2, *size, img_channels))
  (mean, logvar, x_hat), _ = jax.eval_shape(vae.init_with_output, KEY, x)
  latent = (2, size[0] // 4, size[1] // 4, latent_channels)  # only divisibility by 4 is required
  chex.assert_shape([mean, logvar], latent)
  chex.assert_shape(x_hat, x.shape)


@pytest.fixture(scope="module")
def small_vae():
  """A small Fashion-MNIST-like VAE (C = 2, one image channel), its params and jitted encode / decode."""
  vae = VAE(**SMALL_VAE)
  x = jnp.tanh(normal(0, (2, 32, 32, 1)))
  params = jit(vae.init)(KEY, x)
  encode = jit(functools.partial(vae.apply, method=VAE.encode))
  decode = jit(functools.partial(vae.apply, method=VAE.decode))
  return vae, x, params, encode, decode


def test_vae_decoder_range(small_vae):
  _, _, params, _, decode = small_vae
  z = normal(1, (2, 8, 8, 2), 100.0)  # far out: tanh saturates
  x_far = decode(params, z)
  chex.assert_shape(x_far, (2, 32, 32, 1))
  chex.assert_tree_all_finite(x_far)
  assert max_abs(x_far) <= 1.0
  assert max_abs(x_far) > 0.99  # saturated: the bound is tanh's, not that of small weights


def test_vae_logvar_floor_is_respected_and_keeps_gradient(small_vae):
  vae, x, params, encode, _ = small_vae
  min_logvar = vae.min_logvar
  # push the raw logvar (second half of the head's outputs) about 15 below the floor
  low = replace_leaf(params, ("params", "enc_head", "bias"), lambda b: b.at[2:].set(min_logvar - 15.0))
  _, logvar = encode(low, x)
  assert float(jnp.min(logvar)) >= min_logvar
  assert float(jnp.max(logvar)) < min_logvar + 1e-3  # pinned at the floor
  total_logvar = lambda p: jnp.sum(vae.apply(p, x, method=VAE.encode)[1])
  grads = jit(jax.grad(total_logvar))(low)
  # d logvar / d raw = sigmoid(raw - min_logvar) ~ e^-15 ~ 3e-7 per element: small, never zero
  assert bool(jnp.all(grads["params"]["enc_head"]["bias"][2:] > 0.0))


def test_soft_floor():
  raw = jnp.array([-200.0, -30.0, -10.0, 0.0, 5.0, 50.0])
  floored = soft_floor(raw, -10.0)
  assert bool(jnp.all(floored >= -10.0))
  chex.assert_trees_all_close(floored[3:], raw[3:], atol=1e-4)  # softplus(r) - r = log1p(e^-r) < 5e-5
  chex.assert_trees_all_close(floored[2], -10.0 + jnp.log(2.0))
  slope = jax.vmap(jax.grad(lambda r: soft_floor(r, -10.0)))(raw)
  chex.assert_trees_all_close(slope, jax.nn.sigmoid(raw + 10.0))
  assert bool(jnp.all(slope[1:] > 0.0))  # sigmoid(-190) underflows float32; sigmoid(-20) does not


def test_vae_input_checks():
  vae = VAE(**SMALL_VAE)
  params = jax.eval_shape(vae.init, KEY, jnp.zeros((1, 32, 32, 1)))
  encode = functools.partial(vae.apply, method=VAE.encode)
  decode = functools.partial(vae.apply, method=VAE.decode)
  with pytest.raises(ValueError, match="rank 4"):
    jax.eval_shape(encode, params, jnp.zeros((32, 32, 1)))
  with pytest.raises(ValueError, match="divisible by 4"):
    jax.eval_shape(encode, params, jnp.zeros((1, 30, 32, 1)))
  with pytest.raises(ValueError, match="expected 1 channels"):
    jax.eval_shape(encode, params, jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="expected 2 channels"):
    jax.eval_shape(decode, params, jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="rank 4"):
    jax.eval_shape(decode, params, jnp.zeros((8, 8, 2)))


# --- UNet -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_unet():
  """A small UNet with dropout, random params (`random_params`: init itself is tested below on a smaller
  one), a batch that holds one latent twice, at two times (examples are independent), and its jitted
  apply (one compile per value of `train`, shared by the tests)."""
  unet = UNet(dropout=0.5, **SMALL_UNET)
  z1 = normal(0, (1, 8, 8, 4))
  z = jnp.concatenate([z1, z1])
  t = jnp.array([0.1, 0.9])
  return unet, z, t, random_params(unet, z, t), jit(unet.apply, static_argnames="train")


def test_unet_init_and_shapes(small_unet):
  unet, z, t, params, _ = small_unet
  # real init on a one-level UNet (a compiled init costs ~0.3 s per conv on this CPU): the last conv is
  # zero, so eps_hat = 0 at init
  tiny = UNet(base_channels=16, channel_mults=(1,), num_res_blocks=1, attention_resolutions=(),
              scale_shift_norm=True)
  tiny_params = jit(tiny.init)(KEY, z, t)["params"]
  assert max_abs(tiny_params["conv_out"]) == 0.0
  assert max_abs(tiny_params["conv_in"]["kernel"]) > 0.0
  wide = jax.eval_shape(UNet(out_channels=3, **SMALL_UNET).init_with_output, KEY, z, t)[0]
  chex.assert_shape(wide, (2, 8, 8, 3))
  bigger = jax.eval_shape(unet.apply, params, jnp.zeros((3, 16, 12, 4)), jnp.float32(0.5))
  chex.assert_shape(bigger, (3, 16, 12, 4))  # any H, W divisible by 2; a scalar t broadcasts


def test_unet_output_depends_on_time(small_unet):
  unet, z, t, params, apply = small_unet
  eps = apply(params, z, t, train=False)
  chex.assert_shape(eps, z.shape)
  chex.assert_tree_all_finite(eps)
  assert max_abs(eps[0] - eps[1]) > 1e-3  # the same latent at t = 0.1 and t = 0.9
  # and the time-embedding MLP gets a gradient (the other parameters held fixed)
  def loss(time_params):
    p = {"params": {**params["params"], "time_embed": time_params}}
    return jnp.sum(unet.apply(p, z, t) ** 2)

  grads = jit(jax.grad(loss))(params["params"]["time_embed"])
  for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
    assert max_abs(leaf) > 0.0, jax.tree_util.keystr(path)


def test_unet_dropout_only_in_training(small_unet):
  _, z, t, params, apply = small_unet
  eval_out = apply(params, z, t, train=False)
  train_a = apply(params, z, t, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  train_b = apply(params, z, t, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
  chex.assert_trees_all_equal(eval_out, apply(params, z, t, train=False))
  chex.assert_shape(train_a, z.shape)
  assert max_abs(train_a - train_b) > 1e-4  # the dropout masks differ
  assert max_abs(train_a - eval_out) > 1e-4


def test_unet_input_checks():
  init = UNet(**SMALL_UNET).init
  with pytest.raises(ValueError, match="rank 4"):
    jax.eval_shape(init, KEY, jnp.zeros((8, 8, 4)), jnp.zeros((1,)))
  with pytest.raises(ValueError, match="divisible by 2"):
    jax.eval_shape(init, KEY, jnp.zeros((1, 5, 8, 4)), jnp.zeros((1,)))
  with pytest.raises(ValueError, match="divisible by 4"):
    jax.eval_shape(UNet().init, KEY, jnp.zeros((1, 6, 8, 4)), jnp.zeros((1,)))
  with pytest.raises(ValueError, match="t must have shape \\(2,\\)"):
    jax.eval_shape(init, KEY, jnp.zeros((2, 8, 8, 4)), jnp.zeros((3,)))


# --- critic gate ------------------------------------------------------------------------------------
GATE_CASES = [((2, 8, 8, 4), "example", (2, 1, 1, 1)), ((2, 8, 8, 4), "channel", (2, 1, 1, 4)),
              ((2, 8, 8, 4), "element", (2, 8, 8, 4)), ((5, 3), "example", (5, 1)),
              ((5, 3), "channel", (5, 3)), ((5, 3), "element", (5, 3))]


@pytest.mark.parametrize("z_shape, granularity, g_shape", GATE_CASES)
def test_gate_shape_range_and_start(z_shape, granularity, g_shape):
  init_logit = 2.0
  gate = CriticGate(granularity=granularity, init_logit=init_logit, hidden_channels=16, num_layers=1)
  z = normal(0, z_shape, 3.0)
  t = jnp.asarray(np.linspace(0.01, 0.99, z_shape[0]), jnp.float32)
  g, params = jit(gate.init_with_output)(KEY, z, t)
  chex.assert_shape(g, g_shape)
  # zero head kernel: g = sigmoid(init_logit) for every input, to float32 rounding
  chex.assert_trees_all_close(g, jnp.full(g_shape, jax.nn.sigmoid(init_logit)), atol=1e-6)
  apply = jit(gate.apply)
  for scale in (0.3, 100.0):  # a moderate head, then one that saturates the sigmoid
    g = apply(perturb(params, ("params", "head", "kernel"), 1, scale), z, t)
    chex.assert_tree_all_finite(g)
    assert 0.0 <= float(jnp.min(g)) and float(jnp.max(g)) <= 1.0
    if scale < 1.0:
      assert float(jnp.std(g)) > 1e-4  # now depends on the input


@pytest.mark.parametrize("z_shape", [(2, 8, 8, 4), (5, 3)])
def test_gate_receives_gradients(z_shape):
  gate = CriticGate(granularity="element", **SMALL_GATE)
  z = normal(0, z_shape)
  t = jnp.asarray(np.linspace(0.01, 0.99, z_shape[0]), jnp.float32)
  target = jnp.asarray(np.random.default_rng(3).uniform(size=z_shape), jnp.float32)
  params = jit(gate.init)(KEY, z, t)
  grad_fn = jit(jax.grad(lambda p: jnp.mean((gate.apply(p, z, t) - target) ** 2)))
  # at init only the head gets a gradient (its zero kernel blocks the rest) ...
  head_grads = grad_fn(params)["params"]["head"]
  assert all(max_abs(leaf) > 0.0 for leaf in jax.tree.leaves(head_grads))
  # ... once the head is nonzero, every parameter, time embedding included, gets one
  grads = grad_fn(perturb(params, ("params", "head", "kernel"), 1))
  for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
    assert max_abs(leaf) > 0.0, jax.tree_util.keystr(path)


def test_gate_input_checks():
  z, t = jnp.zeros((2, 8, 8, 4)), jnp.zeros((2,))
  assert GRANULARITIES == ("example", "channel", "element")
  with pytest.raises(ValueError, match="granularity"):
    jax.eval_shape(CriticGate(granularity="pixel").init, KEY, z, t)
  with pytest.raises(ValueError, match="rank 4"):
    jax.eval_shape(CriticGate().init, KEY, jnp.zeros((2, 8, 4)), t)


# --- MLP ------------------------------------------------------------------------------------------------
def test_mlp_score_net_shape_and_time_dependence():
  net = MLPScoreNet(hidden=32, num_layers=2)
  z1 = normal(0, (4, 2))
  z, t = jnp.concatenate([z1, z1]), jnp.repeat(jnp.array([0.1, 0.9]), 4)  # each point at two times
  eps, _ = jit(net.init_with_output)(KEY, z, t)
  chex.assert_shape(eps, (8, 2))
  assert max_abs(eps[:4] - eps[4:]) > 1e-4
  with pytest.raises(ValueError, match="rank 2"):
    jax.eval_shape(net.init, KEY, jnp.zeros((2, 8, 8, 4)), jnp.zeros((2,)))
