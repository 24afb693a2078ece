"""benchmarks.xla_cost.op_kinds: each instruction of an optimised HLO module labelled with the work it does
(what benchmarks/profile_steps.py --ops groups the op time by). No torch needed."""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.xla_cost import KINDS, op_kinds

# A module as compiled.as_text() prints one: a convolution inside a custom fusion (XLA:CPU's YNN
# fusions), an elementwise op, a data-movement fusion and the entry's tuple.
HLO = """HloModule jit_f, entry_computation_layout={()}

%fused_conv (param_0: f32[1,4,4,2], param_1: f32[3,3,2,2]) -> f32[1,4,4,2] {
  %param_0 = f32[1,4,4,2]{3,2,1,0} parameter(0)
  %param_1 = f32[3,3,2,2]{3,2,1,0} parameter(1)
  ROOT %convolution.1 = f32[1,4,4,2]{3,2,1,0} convolution(%param_0, %param_1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(f)/conv_general_dilated"}
}

%fused_move (param_0.1: f32[1,4,4,2]) -> f32[1,2,4,4] {
  %param_0.1 = f32[1,4,4,2]{3,2,1,0} parameter(0)
  ROOT %transpose.1 = f32[1,2,4,4]{3,2,1,0} transpose(%param_0.1), dimensions={0,3,1,2}
}

ENTRY %main.9 (x: f32[1,4,4,2], k: f32[3,3,2,2]) -> (f32[1,4,4,2], f32[1,2,4,4]) {
  %x = f32[1,4,4,2]{3,2,1,0} parameter(0)
  %k = f32[3,3,2,2]{3,2,1,0} parameter(1)
  %ynn_fusion.3 = f32[1,4,4,2]{3,2,1,0} fusion(%x, %k), kind=kCustom, calls=%fused_conv
  %exponential.2 = f32[1,4,4,2]{3,2,1,0} exponential(%ynn_fusion.3), metadata={op_name="jit(f)/exp"}
  %transpose_fusion = f32[1,2,4,4]{3,2,1,0} fusion(%x), kind=kLoop, calls=%fused_move
  ROOT %tuple.4 = (f32[1,4,4,2]{3,2,1,0}, f32[1,2,4,4]{3,2,1,0}) tuple(%exponential.2, %transpose_fusion)
}
"""


def test_op_kinds_reads_fusions_shapes_and_op_names():
  kinds = op_kinds(HLO)
  assert kinds["ynn_fusion.3"] == {"kind": "convolution", "shape": "f32[1,4,4,2]{3,2,1,0}",
                                   "op_name": "jit(f)/conv_general_dilated"}  # from the called body
  assert kinds["exponential.2"] == {"kind": "elementwise", "shape": "f32[1,4,4,2]{3,2,1,0}",
                                    "op_name": "jit(f)/exp"}
  assert kinds["transpose_fusion"]["kind"] == "data movement"
  assert kinds["tuple.4"]["kind"] == "data movement"
  assert kinds["convolution.1"]["kind"] == "convolution"  # instructions inside fusions are listed too


def test_op_kinds_of_a_compiled_program():
  # Whatever XLA fuses, the convolution, the dot and the reduction of this program stay visible.
  def f(x, kernel, w):
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    z = jnp.tanh(y.reshape(y.shape[0], -1)) @ w
    return jnp.sum(z, axis=0)

  args = [jnp.asarray(np.random.default_rng(i).standard_normal(shape), jnp.float32)
          for i, shape in enumerate([(2, 4, 4, 3), (3, 3, 3, 5), (80, 6)])]
  kinds = op_kinds(jax.jit(f).lower(*args).compile().as_text())
  found = {info["kind"] for info in kinds.values()}
  assert {"convolution", "dot", "reduction"} <= found, kinds
  assert found <= set(KINDS)
  assert any("conv_general_dilated" in info["op_name"] for info in kinds.values()
             if info["kind"] == "convolution")
