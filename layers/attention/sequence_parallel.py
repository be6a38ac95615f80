"""Softmax attention with the time axis split over the "sequence" mesh axis: LASP-2H's all-gather and a ring.

Each shard holds the queries of its slice (L = T / R tokens) and runs through the R key/value blocks
(one per slice) with an online softmax (running max m, normaliser l and accumulator per query, fp32):
  "all_gather"  (LASP-2H): K/V of every slice all-gathered (O(T) of K/V per device), blocks read locally;
                the backward reduce-scatters dK/dV (the transpose of the gather).
  "ring"        K/V blocks passed round the ring (R - 1 collective-permutes, O(T / R) of K/V per device);
                the backward sends dK/dV round with the blocks and home at the end.
Blocks no query of the slice can see (later slices when causal, slices beyond the window) are skipped.
The backward is flash attention's: it recomputes each block's probabilities from o and the log-sum-exp,
so no [L, T] scores or per-block state are stored. Documents (segment_ids) are numbered across slices
(layers.sequence_parallel.boundaries); causality and the window use global token indices.
Memory per block step: scores [B, H, L, L] fp32, so keep T / R moderate (a few thousand tokens).
Causal load balance: slice r visits r + 1 of the R blocks (no zig-zag reordering of the slices).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from layers import segments
from layers import sequence_parallel as sp
from layers.attention.softmax_attention import check_arguments

METHODS = ("all_gather", "ring")
F32 = jnp.float32


class _Layout(NamedTuple):
  method: str
  scale: float
  causal: bool
  window: int | None
  shards: int
  local: int  # L = T / R


def sequence_parallel_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  scale: float | None = None,
  causal: bool = True,
  window: int | None = None,
  segment_ids: jax.Array | None = None,
  method: str = "all_gather",
) -> jax.Array:
  """softmax_attention(q, k, v, ...) with T split over the "sequence" axis of the active mesh.

  q [B, T, H, K]; k [B, T, Hkv, K]; v [B, T, Hkv, V] (GQA: H a multiple of Hkv); segment_ids [B, T];
  causal, window, scale as in layers.attention.softmax_attention. Returns o [B, T, H, V] in q's dtype,
  split over "sequence". method: "all_gather" or "ring" (module docstring). T must be a multiple of the
  axis size.

  Example (4 shards of 8 tokens, a document crossing a shard boundary):
    >>> mesh = jax.make_mesh((4,), ("sequence",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:4])
    >>> q = k = v = jax.random.normal(jax.random.key(0), (1, 32, 2, 8))
    >>> seg = jnp.repeat(jnp.array([[0, 1]]), jnp.array([12, 20]), axis=1, total_repeat_length=32)
    >>> with jax.set_mesh(mesh):
    ...   o = jax.jit(sequence_parallel_attention, static_argnames="method")(q, k, v, segment_ids=seg, method="ring")
    >>> bool(jnp.allclose(o, softmax_attention(q, k, v, segment_ids=seg), atol=1e-5))
    True
  """
  if method not in METHODS:
    raise ValueError(f"sequence-parallel attention method must be one of {METHODS}, got {method!r}")
  check_arguments(q, k, v, causal, window, segment_ids)
  mesh = sp.active_mesh()
  if mesh is None:
    raise ValueError(f"sequence_parallel_attention needs a mesh with a {sp.AXIS!r} axis of size > 1 set with "
                     "jax.set_mesh; without one use layers.attention.softmax_attention")
  local = sp.check_length(q.shape[1], mesh, "softmax attention")
  layout = _Layout(method, q.shape[-1] ** -0.5 if scale is None else scale, causal, window, mesh.shape[sp.AXIS],
                   local)

  def body(q, k, v, segment_ids):
    doc = None
    if segment_ids is not None:
      doc = segments.document_index(segment_ids) + sp.boundaries(segment_ids).offset[:, None]  # [B, L] global
    key_doc = doc
    if method == "all_gather":
      k, v, key_doc = jax.lax.all_gather((k, v, doc), sp.AXIS, axis=1, tiled=True)  # [B, T, ...]
    return _attend(layout, q, k, v, doc, key_doc)

  return sp.shard_map(body, mesh, (sp.TIME,) * 4, sp.TIME)(q, k, v, segment_ids)


def _heads(x: jax.Array, kv_heads: int) -> jax.Array:
  """[B, L, H, E] -> [B, Hkv, H / Hkv, L, E] fp32 (query head i reads kv head i // (H / Hkv))."""
  b, t, h, e = x.shape
  return jnp.moveaxis(x.astype(F32).reshape(b, t, kv_heads, h // kv_heads, e), 1, 3)


def _unheads(x: jax.Array, dtype) -> jax.Array:
  """[B, Hkv, G, L, E] -> [B, L, Hkv * G, E] in dtype."""
  b, hkv, g, t, e = x.shape
  return jnp.moveaxis(x, 3, 1).reshape(b, t, hkv * g, e).astype(dtype)


def _visible(layout: _Layout, r: jax.Array, src: jax.Array) -> jax.Array:
  """Whether any query of slice r may see a key of slice src (by position; documents aside)."""
  ok = jnp.bool_(True)
  if layout.causal:
    ok &= src <= r
  if layout.window is not None:
    ok &= (src + 1) * layout.local - 1 > r * layout.local - layout.window
  return ok


def _mask(layout: _Layout, r, src, q_doc, k_doc) -> jax.Array:
  """[B|1, 1, 1, L, L] bool: query t of slice r sees key s of slice src."""
  idx = jnp.arange(layout.local)
  q_pos, k_pos = r * layout.local + idx, src * layout.local + idx
  ok = jnp.ones((layout.local, layout.local), bool)
  if layout.causal:
    ok &= k_pos[None, :] <= q_pos[:, None]
  if layout.window is not None:
    ok &= k_pos[None, :] > q_pos[:, None] - layout.window
  ok = ok[None, None, None]
  if q_doc is not None:
    ok = ok & (q_doc[:, :, None] == k_doc[:, None, :])[:, None, None]
  return ok


def _block(layout: _Layout, blocks, src):
  """Key block src [B, Hkv, L, E] (and its documents [B, L]) out of `blocks` (the ring's current block, or
  all of them after the all-gather)."""
  k, v, doc = blocks
  if layout.method == "ring":
    return k, v, doc
  start = src * layout.local
  take = lambda x, axis: jax.lax.dynamic_slice_in_dim(x, start, layout.local, axis)  # noqa: E731
  return take(k, 2), take(v, 2), None if doc is None else take(doc, 1)


def _pass_on(layout: _Layout, x):
  """x sent to the next slice round the ring."""
  return jax.lax.ppermute(x, sp.AXIS, [(i, (i + 1) % layout.shards) for i in range(layout.shards)])


def _forward(layout: _Layout, q, k, v, q_doc, k_doc):
  """(o [B, L, H, V] in q's dtype, log-sum-exp [B, Hkv, G, L] fp32)."""
  r = jax.lax.axis_index(sp.AXIS)
  qh = _heads(q, k.shape[2])  # [B, Hkv, G, L, K]
  blocks = (jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), k_doc)  # [B, Hkv, L|T, *]
  state = tuple(sp.varying(x) for x in (jnp.full(qh.shape[:-1], -jnp.inf, F32), jnp.zeros(qh.shape[:-1], F32),
                                        jnp.zeros((*qh.shape[:-1], v.shape[-1]), F32)))

  def update(state, kb, vb, kdoc, src):
    m, l, acc = state
    s = jnp.einsum("bhgqk,bhsk->bhgqs", qh, kb.astype(F32)) * layout.scale
    s = jnp.where(_mask(layout, r, src, q_doc, kdoc), s, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # -inf while nothing is visible yet
    p = jnp.exp(s - m_safe[..., None])
    alpha = jnp.exp(m - m_safe)
    return m_new, alpha * l + jnp.sum(p, -1), alpha[..., None] * acc + jnp.einsum("bhgqs,bhsv->bhgqv", p,
                                                                                   vb.astype(F32))

  for step in range(layout.shards):
    src = (r - step) % layout.shards
    kb, vb, kdoc = _block(layout, blocks, src)
    state = jax.lax.cond(_visible(layout, r, src), update, lambda state, *_: state, state, kb, vb, kdoc, src)
    if layout.method == "ring" and step < layout.shards - 1:
      blocks = _pass_on(layout, blocks)
  m, l, acc = state
  return _unheads(acc / l[..., None], q.dtype), m + jnp.log(l)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(layout: _Layout, q, k, v, q_doc, k_doc):
  """Local queries q [B, L, H, K] over the key blocks (k, v [B, L or T, Hkv, *]) -> o [B, L, H, V]."""
  return _forward(layout, q, k, v, q_doc, k_doc)[0]


def _attend_fwd(layout, q, k, v, q_doc, k_doc):
  o, lse = _forward(layout, q, k, v, q_doc, k_doc)
  return o, (q, k, v, q_doc, k_doc, o, lse)


def _attend_bwd(layout, residuals, do):
  q, k, v, q_doc, k_doc, o, lse = residuals
  r = jax.lax.axis_index(sp.AXIS)
  hkv = k.shape[2]
  qh, doh = _heads(q, hkv), _heads(do, hkv)  # [B, Hkv, G, L, K|V]
  delta = jnp.sum(doh * _heads(o, hkv), axis=-1)  # [B, Hkv, G, L]
  kt, vt = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [B, Hkv, L|T, *]
  dq = sp.varying(jnp.zeros(qh.shape, F32))
  dk, dv = (sp.varying(jnp.zeros(x.shape, F32)) for x in (kt, vt))  # the ring's block, or all blocks

  def grads(kb, vb, kdoc, src):
    s = jnp.einsum("bhgqk,bhsk->bhgqs", qh, kb.astype(F32)) * layout.scale
    p = jnp.exp(jnp.where(_mask(layout, r, src, q_doc, kdoc), s - lse[..., None], -jnp.inf))
    dp = jnp.einsum("bhgqv,bhsv->bhgqs", doh, vb.astype(F32))
    ds = p * (dp - delta[..., None]) * layout.scale
    return (jnp.einsum("bhgqs,bhsk->bhgqk", ds, kb.astype(F32)), jnp.einsum("bhgqs,bhgqk->bhsk", ds, qh),
            jnp.einsum("bhgqs,bhgqv->bhsv", p, doh))

  def skip(kb, vb, kdoc, src):
    return tuple(sp.varying(jnp.zeros(x.shape, F32)) for x in (qh, kb, vb))

  blocks = (kt, vt, k_doc)
  for step in range(layout.shards):
    src = (r - step) % layout.shards
    kb, vb, kdoc = _block(layout, blocks, src)
    dq_b, dk_b, dv_b = jax.lax.cond(_visible(layout, r, src), grads, skip, kb, vb, kdoc, src)
    dq = dq + dq_b
    if layout.method == "ring":
      dk, dv = dk + dk_b, dv + dv_b
      if step < layout.shards - 1:
        blocks = _pass_on(layout, blocks)
      dk, dv = _pass_on(layout, (dk, dv))  # after the last step: home to the block's slice
    else:
      start = src * layout.local
      dk = jax.lax.dynamic_update_slice_in_dim(dk, dk_b, start, axis=2)
      dv = jax.lax.dynamic_update_slice_in_dim(dv, dv_b, start, axis=2)
  return (_unheads(dq, q.dtype), jnp.swapaxes(dk, 1, 2).astype(k.dtype), jnp.swapaxes(dv, 1, 2).astype(v.dtype),
          None, None)


_attend.defvjp(_attend_fwd, _attend_bwd)
