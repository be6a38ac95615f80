"""Pallas kernels for chunk GLA and the chunk gated delta rule, on a CPU-only jaxlib.

Interpret mode (both grids: Triton's one-program-per-row loop and Mosaic's (row, chunk) grid) against the XLA
op and the golden vectors: outputs, final state, every gradient, packed rows. Lowering for TPU (Mosaic) and GPU
(Triton) through jax.export, forward and backward: that runs the Pallas -> Mosaic / Triton IR lowering, which
interpret mode skips; Triton -> PTX and Mosaic's TPU compiler passes need the device and are untested here.
"""

import doctest
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from layers import linear_attention as la
from layers import registry
from layers.context import LayerContext
from layers.linear_attention import pallas
from layers.linear_attention.ops import common
from tests.test_linear_attention_ops import GATES, GOLDEN, make_inputs, rel_rmse

OPS = ("gla", "gated_delta_rule")
KERNELS = {"gla": pallas.gla.chunk, "gated_delta_rule": pallas.gated_delta_rule.chunk}
# Two rows of 40 steps (padded to 64): documents crossing the kernel chunks of 16 / 32 and the op chunk of 32.
SEGMENT_IDS = np.array([[0] * 10 + [1] * 20 + [2] * 10, [0] * 33 + [1] * 7], np.int32)


def _loss_parts(fn, args, segment_ids, chunk_size):
  """(o, final state, grads of sum(o * do) + sum(ht * dht) w.r.t. every arg); args end with s0, do, dht."""
  *inputs, do, dht = args

  def forward(*xs):
    return fn(*xs[:-1], initial_state=xs[-1], output_final_state=True, chunk_size=chunk_size,
              segment_ids=segment_ids)

  (o, ht), pullback = jax.vjp(forward, *inputs)
  return o, ht, pullback((do, dht))


@functools.cache
def op_runner(op: str, implementation: str, chunk_size: int = 32):
  """The public op (implementation="pallas": Mosaic kernel in interpret mode on CPU, chosen by platform)."""
  fn = functools.partial(getattr(la, op), implementation=implementation)
  return jax.jit(lambda args, seg: _loss_parts(fn, args, seg, chunk_size))


@functools.cache
def kernel_runner(op: str, backend: str):
  """The kernel of one backend, forced, in interpret mode, behind the op's own argument handling."""
  chunk = functools.partial(KERNELS[op], backend=backend, interpret=True)

  def fn(q, k, v, *gates, **kw):
    return common.run(None, chunk, q, k, v, gates, scale=None, mode="chunk", **kw)

  return jax.jit(lambda args, seg: _loss_parts(fn, args, seg, 32))


def _assert_close(got, want, tol=2e-5):
  for i, (a, b) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=f"output {i} (o, ht, then gradients)")


@pytest.mark.parametrize("op", OPS)
def test_matches_golden_vectors(op):
  data = np.load(GOLDEN)
  names = ("q", "k", "v", *GATES[op], "initial_state")
  args = tuple(jnp.asarray(data[f"{op}/in/{n}"]) for n in (*names, "do", "dht"))
  o, ht, grads = op_runner(op, "pallas")(args, None)
  assert rel_rmse(o, data[f"{op}/out/o"]) < 2e-3
  assert rel_rmse(ht, data[f"{op}/out/ht"]) < 2e-3
  for name, grad in zip(names, grads, strict=True):
    tol = 2e-2 if name in ("g", "gk", "beta") else 5e-3
    assert rel_rmse(grad, data[f"{op}/grad/{name}"]) < tol, name


# The grids are op-agnostic (chunk_scan.py), so Triton's (slow in interpret mode) runs one op.
@pytest.mark.parametrize("op, backend", [("gla", "mosaic"), ("gated_delta_rule", "mosaic"),
                                         ("gated_delta_rule", "triton")])
def test_kernel_equals_xla_op_on_packed_rows(op, backend):
  """Padding (T = 40), three documents per row crossing chunks, an initial state: o, ht, all gradients."""
  args, do, dht = make_inputs(op, 40, key=7, b=2, dk=16, dv=16)
  args = (*args, do, dht)
  seg = jnp.asarray(SEGMENT_IDS)
  _assert_close(kernel_runner(op, backend)(args, seg), op_runner(op, "xla")(args, seg))


@pytest.mark.parametrize("backend", pallas.chunk_scan.BACKENDS)
def test_forward_alone_equals_xla_op(backend):
  """Without a gradient the forward kernel stores no chunk states (a different kernel from the VJP's forward)."""
  (q, k, v, g, beta, s0), _, _ = make_inputs("gated_delta_rule", 40, key=8, b=2, dk=16, dv=16)
  chunk = functools.partial(KERNELS["gated_delta_rule"], backend=backend, interpret=True)
  kw = dict(initial_state=s0, output_final_state=True, chunk_size=32, segment_ids=jnp.asarray(SEGMENT_IDS))
  got = jax.jit(lambda *a: common.run(None, chunk, *a[:3], a[3:], scale=None, mode="chunk", **kw))(q, k, v, g, beta)
  _assert_close(got, jax.jit(lambda *a: la.gated_delta_rule(*a, **kw))(q, k, v, g, beta))


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("op", OPS)
def test_lowers_for_accelerators(op, platform):
  """Forward and backward kernels lower to Mosaic (tpu) / Triton (cuda) IR, packed rows included; nothing falls
  back to XLA."""
  b, t, h, dk, dv = 1, 128, 2, 64, 64
  shapes = [(b, t, h, dk), (b, t, h, dk), (b, t, h, dv), *((b, t, h, dk) if n == "gk" else (b, t, h)
                                                           for n in GATES[op]), (b, h, dk, dv)]
  fn = getattr(la, op)

  def loss(*xs, segment_ids):
    o, ht = fn(*xs[:-1], initial_state=xs[-1], output_final_state=True, segment_ids=segment_ids,
               implementation="pallas")
    return jnp.sum(o) + jnp.sum(ht)

  specs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
  target = "tpu_custom_call" if platform == "tpu" else "__gpu$xla.gpu.triton"
  # with a gradient: the VJP's forward (storing chunk states) and the backward; without: the plain forward
  for program, kernels in ((jax.grad(loss, argnums=tuple(range(len(shapes)))), 2), (loss, 1)):
    exported = jax.export.export(
      jax.jit(program), platforms=[platform],
      disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(*specs, segment_ids=jax.ShapeDtypeStruct((b, t), jnp.int32))
    assert exported.mlir_module().count(target) == kernels, f"expected {kernels} {target} kernel(s)"


def test_rejects_unsupported_arguments():
  args, _, _ = make_inputs("gla", 8, dk=16, dv=16)
  with pytest.raises(ValueError, match="implementation must be one of"):
    la.gla(*args[:-1], implementation="triton")
  with pytest.raises(ValueError, match="use mode='chunk'"):
    la.gla(*args[:-1], mode="recurrent", implementation="pallas")
  with pytest.raises(ValueError, match="chunk_size a multiple of 16"):
    la.gla(*args[:-1], chunk_size=24, implementation="pallas")
  args, _, _ = make_inputs("gated_delta_rule", 8, dk=24, dv=16)
  with pytest.raises(ValueError, match=r"K \(q/k head dim\) a power of two >= 16"):
    la.gated_delta_rule(*args[:-1], implementation="pallas")
  with pytest.raises(ValueError, match="'pallas' is not implemented"):  # no Pallas kernel for the plain delta rule
    registry.build("mixer", "delta_net", LayerContext(d_model=32, n_heads=2), rngs=nnx.Rngs(0),
                   implementation="pallas")


@pytest.mark.parametrize("name, options", [("gla", {"expand_k": 1.0}), ("gated_delta_net", {})])
def test_mixer_option_reaches_the_op(name, options):
  """The mixers' implementation option runs the kernel (traced only: the op's numbers are tested above)."""
  ctx = LayerContext(d_model=32, n_heads=2)  # head_dim 16
  x = jnp.zeros((2, 40, 32))
  for implementation in ("xla", "pallas"):
    model = registry.build("mixer", name, ctx, rngs=nnx.Rngs(0), chunk_size=32, implementation=implementation,
                           **options)
    jaxpr = str(jax.make_jaxpr(lambda x, m=model: m(x, segment_ids=jnp.asarray(SEGMENT_IDS)))(x))
    assert ("pallas_call" in jaxpr) == (implementation == "pallas"), implementation


def test_docstring_example_runs():
  runner = doctest.DocTestRunner()
  for test in doctest.DocTestFinder().find(pallas.chunk_scan.chunk_scan, "chunk_scan",
                                           globs=vars(pallas.chunk_scan)):
    runner.run(test)
  assert runner.summarize().failed == 0 and runner.summarize().attempted > 0
