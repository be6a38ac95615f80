"""GPU chunk-scan kernels (Pallas Triton): one program per (batch, head) row, a loop over its chunks.

The state lives in registers across the loop; the row's inputs stay in HBM and each iteration loads one chunk.
See chunk_scan.py for the step contract.
"""

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

_PARAMS = plgpu.CompilerParams(num_warps=4, num_stages=1)


def _row(shape: tuple[int, ...]) -> pl.BlockSpec:
  """A whole [T, F] (or [N, K, V]) row of a [R, ...] array per program."""
  return pl.BlockSpec((None, *shape[1:]), lambda r: (r,) + (0,) * (len(shape) - 1))


def forward(step, chunk, core, xs, masks, s0, *, interpret, store_states):
  """(o [R, T, V], states entering each chunk [R, N, K, V] or None unless store_states, final state [R, K, V])."""
  rows, t, _ = xs[0].shape
  n, (_, dk, dv) = t // chunk, s0.shape
  nx, nm = len(xs), len(masks)

  def kernel(*refs):
    x_refs, m_refs, s0_ref = refs[:nx], refs[nx:nx + nm], refs[nx + nm]
    o_ref, *states_ref, final_ref = refs[nx + nm + 1:]

    def body(i, s):
      at = pl.ds(i * chunk, chunk)
      if store_states:
        states_ref[0][i] = s
      o, s = core(step, s, tuple(r[at, :] for r in x_refs), tuple(r[at, :] for r in m_refs))
      o_ref[at, :] = o
      return s

    final_ref[...] = jax.lax.fori_loop(0, n, body, s0_ref[...])

  states = [jax.ShapeDtypeStruct((rows, n, dk, dv), jnp.float32)] if store_states else []
  out_shape = (jax.ShapeDtypeStruct((rows, t, dv), jnp.float32), *states,
               jax.ShapeDtypeStruct((rows, dk, dv), jnp.float32))
  o, *states, final = pl.pallas_call(
    kernel, out_shape=out_shape, grid=(rows,), in_specs=[_row(a.shape) for a in (*xs, *masks, s0)],
    out_specs=[_row(o.shape) for o in out_shape], compiler_params=_PARAMS, interpret=interpret,
    name="chunk_scan_forward")(*xs, *masks, s0)
  return o, (states[0] if store_states else None), final


def backward(step, chunk, core, xs, masks, states, do, dfinal, *, interpret):
  """(dL/dxs, each [R, T, F], dL/ds0 [R, K, V]) from the stored chunk-entry states, reverse over chunks."""
  rows, t, _ = xs[0].shape
  n = t // chunk
  nx, nm = len(xs), len(masks)

  def kernel(*refs):
    x_refs, m_refs = refs[:nx], refs[nx:nx + nm]
    states_ref, do_ref, dfinal_ref = refs[nx + nm:nx + nm + 3]
    dx_refs, ds0_ref = refs[nx + nm + 3:-1], refs[-1]

    def body(j, ds):
      i = n - 1 - j
      at = pl.ds(i * chunk, chunk)
      ds, dxs = core(step, states_ref[i], tuple(r[at, :] for r in x_refs), tuple(r[at, :] for r in m_refs),
                     do_ref[at, :], ds)
      for dx_ref, dx in zip(dx_refs, dxs, strict=True):
        dx_ref[at, :] = dx
      return ds

    ds0_ref[...] = jax.lax.fori_loop(0, n, body, dfinal_ref[...])

  out_shape = tuple(jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in (*xs, dfinal))
  *dxs, ds0 = pl.pallas_call(
    kernel, out_shape=out_shape, grid=(rows,), in_specs=[_row(a.shape) for a in (*xs, *masks, states, do, dfinal)],
    out_specs=[_row(o.shape) for o in out_shape], compiler_params=_PARAMS, interpret=interpret,
    name="chunk_scan_backward")(*xs, *masks, states, do, dfinal)
  return tuple(dxs), ds0
