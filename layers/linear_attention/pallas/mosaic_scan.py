"""TPU chunk-scan kernels (Pallas Mosaic): a (row, chunk) grid, chunks sequential ("arbitrary"), the state in VMEM.

Each grid step sees one chunk's blocks [C, F] (C a multiple of 8, F the full feature width, as Mosaic's tiling
requires); the backward grid walks the chunks in reverse through its index maps. See chunk_scan.py for the step
contract. Per-step scalars (gates, beta, document masks) come as [R, T, 1] columns, which TPU tiling pads to 128
lanes (as the TPU flash-attention kernel's lane-broadcast segment ids): a known cost, unmeasured.
"""

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

_PARAMS = pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"))


def _chunk_spec(chunk: int, width: int, n: int, reverse: bool) -> pl.BlockSpec:
  """Chunk i (or N-1-i) of a [R, T, width] array."""
  return pl.BlockSpec((None, chunk, width), lambda r, i: (r, n - 1 - i if reverse else i, 0))


def _state_spec(shape: tuple[int, ...]) -> pl.BlockSpec:
  """The [K, V] state of row r of a [R, K, V] array."""
  return pl.BlockSpec((None, *shape[1:]), lambda r, i: (r, 0, 0))


def _chunk_state_spec(dk: int, dv: int, n: int, reverse: bool) -> pl.BlockSpec:
  """The state entering chunk i (or N-1-i) of a [R, N, K, V] array."""
  return pl.BlockSpec((None, None, dk, dv), lambda r, i: (r, n - 1 - i if reverse else i, 0, 0))


def forward(step, chunk, core, xs, masks, s0, *, interpret, store_states):
  """(o [R, T, V], states entering each chunk [R, N, K, V] or None unless store_states, final state [R, K, V])."""
  rows, t, _ = xs[0].shape
  n, (_, dk, dv) = t // chunk, s0.shape
  nx, nm = len(xs), len(masks)

  def kernel(*refs):
    x_refs, m_refs, s0_ref = refs[:nx], refs[nx:nx + nm], refs[nx + nm]
    o_ref, *states_ref, final_ref, state = refs[nx + nm + 1:]
    i = pl.program_id(1)

    @pl.when(i == 0)
    def _():
      state[...] = s0_ref[...]

    s = state[...]
    if store_states:
      states_ref[0][...] = s
    o, s = core(step, s, tuple(r[...] for r in x_refs), tuple(r[...] for r in m_refs))
    o_ref[...] = o
    state[...] = s

    @pl.when(i == n - 1)
    def _():
      final_ref[...] = s

  states = [(jax.ShapeDtypeStruct((rows, n, dk, dv), jnp.float32), _chunk_state_spec(dk, dv, n, False))
            ] if store_states else []
  o, *states, final = pl.pallas_call(
    kernel, grid=(rows, n),
    out_shape=(jax.ShapeDtypeStruct((rows, t, dv), jnp.float32), *(shape for shape, _ in states),
               jax.ShapeDtypeStruct((rows, dk, dv), jnp.float32)),
    in_specs=[*(_chunk_spec(chunk, a.shape[-1], n, False) for a in (*xs, *masks)), _state_spec(s0.shape)],
    out_specs=[_chunk_spec(chunk, dv, n, False), *(spec for _, spec in states), _state_spec(s0.shape)],
    scratch_shapes=[pltpu.VMEM((dk, dv), jnp.float32)], compiler_params=_PARAMS, interpret=interpret,
    name="chunk_scan_forward")(*xs, *masks, s0)
  return o, (states[0] if store_states else None), final


def backward(step, chunk, core, xs, masks, states, do, dfinal, *, interpret):
  """(dL/dxs, each [R, T, F], dL/ds0 [R, K, V]) from the stored chunk-entry states, reverse over chunks."""
  rows, t, _ = xs[0].shape
  n, (_, dk, dv) = t // chunk, dfinal.shape
  nx, nm = len(xs), len(masks)

  def kernel(*refs):
    x_refs, m_refs = refs[:nx], refs[nx:nx + nm]
    states_ref, do_ref, dfinal_ref = refs[nx + nm:nx + nm + 3]
    dx_refs, ds0_ref, dstate = refs[nx + nm + 3:-2], refs[-2], refs[-1]
    i = pl.program_id(1)

    @pl.when(i == 0)
    def _():
      dstate[...] = dfinal_ref[...]

    ds, dxs = core(step, states_ref[...], tuple(r[...] for r in x_refs), tuple(r[...] for r in m_refs),
                   do_ref[...], dstate[...])
    for dx_ref, dx in zip(dx_refs, dxs, strict=True):
      dx_ref[...] = dx
    dstate[...] = ds

    @pl.when(i == n - 1)
    def _():
      ds0_ref[...] = ds

  out_shape = tuple(jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in (*xs, dfinal))
  *dxs, ds0 = pl.pallas_call(
    kernel, out_shape=out_shape, grid=(rows, n),
    in_specs=[*(_chunk_spec(chunk, a.shape[-1], n, True) for a in (*xs, *masks)),
              _chunk_state_spec(dk, dv, n, True), _chunk_spec(chunk, dv, n, True), _state_spec(dfinal.shape)],
    out_specs=[*(_chunk_spec(chunk, x.shape[-1], n, True) for x in xs), _state_spec(dfinal.shape)],
    scratch_shapes=[pltpu.VMEM((dk, dv), jnp.float32)], compiler_params=_PARAMS, interpret=interpret,
    name="chunk_scan_backward")(*xs, *masks, states, do, dfinal)
  return tuple(dxs), ds0
