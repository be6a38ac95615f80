"""Softmax attention with the time axis split over the "sequence" mesh axis: LASP-2H's all-gather and a ring;
forgetting attention (FoX: logits + c_i − c_j, c the cumulative log forget gate) the same way.

Each shard holds the queries of its slice (L = T / R tokens) and runs through the R key/value blocks
(one per slice) with an online softmax (running max m, normaliser l and accumulator per query, fp32):
  "all_gather"  (LASP-2H): K/V of every slice all-gathered (O(T) of K/V per device), blocks read locally;
                the backward reduce-scatters dK/dV (the transpose of the gather).
  "ring"        K/V blocks passed round the ring (R - 1 collective-permutes, O(T / R) of K/V per device);
                the backward sends dK/dV round with the blocks and home at the end.
Blocks no query of the slice can see (later slices when causal, slices beyond the window) are skipped.
The backward is flash attention's: it recomputes each block's probabilities from o and the log-sum-exp,
so no [L, T] scores or per-block state are stored. Documents (segment_ids) are numbered across slices
(layers.sequence_parallel.boundaries); causality and the window use global token indices. Forget gates:
c = cumsum(g) over the whole row as forgetting_attention takes it, each slice's local cumsum offset by the
sum of the earlier slices' gates (an all-gather of [B, H] per slice); c travels with K/V.
Memory per block step: scores [B, H, L, L] fp32, so keep T / R moderate (a few thousand tokens).
Causal load balance: slice r visits r + 1 of the R blocks (no zig-zag reordering of the slices).

Block-local softmax (block_softmax_attention, DiagAttention): a token sees only its block, which begins at most
W - 1 tokens before it, so a shard needs only the W - 1 tokens before its slice (keys, values, positions,
document ids; layers.sequence_parallel.preceding: one collective-permute of [B, W - 1, H, K + V] when
W - 1 <= L), whatever the documents: communication independent of T, and no K/V gathered. Nothing is exchanged
when the shard boundaries are block boundaries, known before tracing only when neither segment_ids nor positions
are given and W divides L; packed rows restart blocks at every document, so their blocks can straddle any
boundary, and given positions are not known until run time: both take the halo (the LM always gives positions).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from layers import segments
from layers import sequence_parallel as sp
from layers.attention.block_softmax_attention import block_softmax_attention
from layers.attention.block_softmax_attention import check_arguments as check_block_arguments
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
  forget_gates: jax.Array | None = None,
  method: str = "all_gather",
) -> jax.Array:
  """softmax_attention(q, k, v, ...) with T split over the "sequence" axis of the active mesh; with
  forget_gates g, forgetting_attention(q, k, v, g, ...).

  q [B, T, H, K]; k [B, T, Hkv, K]; v [B, T, Hkv, V] (GQA: H a multiple of Hkv); segment_ids [B, T];
  forget_gates [B, T, H] log forget gates <= 0 (needs causal); causal, window, scale as in
  layers.attention.softmax_attention. Returns o [B, T, H, V] in q's dtype, split over "sequence".
  method: "all_gather" or "ring" (module docstring). T must be a multiple of the axis size.

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
  if forget_gates is not None and (tuple(forget_gates.shape) != q.shape[:3] or not causal):
    raise ValueError(f"forget_gates must be [B, T, H] = {q.shape[:3]} with causal=True, got shape "
                     f"{tuple(forget_gates.shape)} and causal={causal}")
  where = sp.split(q.shape[0])
  if where is None:
    raise ValueError(f"sequence_parallel_attention needs a mesh with a {sp.AXIS!r} axis of size > 1 set with "
                     "jax.set_mesh; without one use layers.attention.softmax_attention")
  local = sp.check_length(q.shape[1], where.mesh, "softmax attention")
  layout = _Layout(method, q.shape[-1] ** -0.5 if scale is None else scale, causal, window,
                   where.mesh.shape[sp.AXIS], local)

  def body(q, k, v, segment_ids, gates):
    doc = cum = None
    if segment_ids is not None:
      doc = segments.document_index(segment_ids) + sp.boundaries(segment_ids).offset[:, None]  # [B, L] global
    if gates is not None:
      cum = jnp.cumsum(gates.astype(F32), axis=1)  # [B, L, H]
      totals = jax.lax.all_gather(cum[:, -1], sp.AXIS)  # [R, B, H]
      before = jnp.arange(layout.shards) < jax.lax.axis_index(sp.AXIS)
      cum = cum + jnp.sum(jnp.where(before[:, None, None], totals, 0.0), axis=0)[:, None]  # global cumsum
    keys = (k, v, doc, cum)
    if method == "all_gather":
      keys = jax.lax.all_gather(keys, sp.AXIS, axis=1, tiled=True)  # [B, T, ...]
    return _attend(layout, q, doc, cum, *keys)

  return sp.shard_map(body, where, (where.time,) * 5, where.time)(q, k, v, segment_ids, forget_gates)


def sequence_parallel_block_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  block_size: int,
  positions: jax.Array | None = None,
  segment_ids: jax.Array | None = None,
  scale: float | None = None,
) -> jax.Array:
  """block_softmax_attention(q, k, v, ...) with T split over the "sequence" axis of the active mesh: same
  arguments, same result.

  q, k [B, T, H, K]; v [B, T, H, V]; positions [B, T] or [T] (None: per-document positions from segment_ids,
  layers.sequence_parallel.document_positions); segment_ids [B, T]; block_size W; scale as
  block_softmax_attention takes them. Returns o [B, T, H, V] in q's dtype, split over "sequence". Each shard
  attends its slice preceded by the W - 1 tokens before it (their keys, values, positions and documents; zero
  queries, outputs dropped), so the blocks that straddle a shard boundary are whole there (module docstring).
  T must be a multiple of the axis size; T / R may be shorter than W (the halo then spans several slices).

  Example (4 shards of 8 tokens, blocks of 5, a document crossing a shard boundary):
    >>> mesh = jax.make_mesh((4,), ("sequence",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:4])
    >>> q = k = v = jax.random.normal(jax.random.key(0), (1, 32, 2, 8))
    >>> seg = jnp.repeat(jnp.array([[0, 1]]), jnp.array([13, 19]), axis=1, total_repeat_length=32)
    >>> with jax.set_mesh(mesh):
    ...   o = jax.jit(sequence_parallel_block_attention, static_argnames="block_size")(q, k, v, block_size=5,
    ...                                                                            segment_ids=seg)
    >>> want = jax.jit(block_softmax_attention, static_argnames="block_size")(q, k, v, block_size=5, segment_ids=seg)
    >>> bool(jnp.allclose(o, want, atol=1e-5))
    True
  """
  check_block_arguments(q, k, v, block_size, segment_ids)
  b, t = q.shape[:2]
  where = sp.split(b)
  if where is None:
    raise ValueError(f"sequence_parallel_block_attention needs a mesh with a {sp.AXIS!r} axis of size > 1 set with "
                     "jax.set_mesh; without one use layers.attention.block_softmax_attention")
  local = sp.check_length(t, where.mesh, "block softmax attention")
  width = 0 if segment_ids is None and positions is None and local % block_size == 0 else block_size - 1
  if positions is not None or segment_ids is None:
    positions = jnp.broadcast_to(segments.forward_positions(t, None, positions), (b, t)).astype(jnp.int32)
  docs = jnp.zeros((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
  attend = functools.partial(block_softmax_attention, block_size=block_size, scale=scale)

  def body(q, k, v, positions, docs):
    if positions is None:  # per-document positions of the slice, from the documents of the slices before it
      positions = sp.document_positions(docs)
    if width == 0:
      return attend(q, k, v, positions=positions, segment_ids=docs)
    hk, hv, hpositions, hdocs = sp.preceding((k, v, positions, docs), width)  # [B, W - 1, ...]
    extend = lambda h, x: jnp.concatenate([h, x], axis=1)  # noqa: E731
    ext_docs = extend(hdocs, docs)  # [B, W - 1 + L]
    # Steps before the row's first token: a document other than the first real token's, so never seen.
    first_real = jnp.maximum(width - jax.lax.axis_index(sp.AXIS) * local, 0)
    before_row = jnp.arange(width + local) < first_real
    ext_docs = jnp.where(before_row, ~jax.lax.dynamic_slice_in_dim(ext_docs, first_real, 1, axis=1), ext_docs)
    no_queries = sp.varying(jnp.zeros((q.shape[0], width, *q.shape[2:]), q.dtype))
    o = attend(extend(no_queries, q), extend(hk, k), extend(hv, v), positions=extend(hpositions, positions),
               segment_ids=ext_docs)
    return o[:, width:]

  return sp.shard_map(body, where, (where.time,) * 5, where.time)(q, k, v, positions, docs)


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


def _logits(layout: _Layout, r, src, q, q_doc, q_cum, k, k_doc, k_cum):
  """Logits [B, Hkv, G, L, L] of slice r's queries for key block src, -inf where hidden."""
  s = jnp.einsum("bhgqk,bhsk->bhgqs", q, k.astype(F32)) * layout.scale
  if q_cum is not None:
    s = s + q_cum[..., :, None] - k_cum[..., None, :]  # <= the plain logit where visible (causal)
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
  return jnp.where(ok, s, -jnp.inf)


def _key_blocks(k, v, doc, cum, kv_heads: int):
  """Key blocks in the layout the loops use: k, v [B, Hkv, L|T, *], doc [B, L|T], cum [B, Hkv, G, L|T]."""
  cum = None if cum is None else jnp.moveaxis(cum.reshape(*cum.shape[:2], kv_heads, -1), 1, 3)
  return jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), doc, cum


def _block(layout: _Layout, blocks, src):
  """Key block src (k, v [B, Hkv, L, E], doc [B, L], cum [B, Hkv, G, L]) out of `blocks` (the ring's current
  block, or all of them after the all-gather)."""
  if layout.method == "ring":
    return blocks
  take = lambda x, axis: None if x is None else jax.lax.dynamic_slice_in_dim(  # noqa: E731
    x, src * layout.local, layout.local, axis)
  k, v, doc, cum = blocks
  return take(k, 2), take(v, 2), take(doc, 1), take(cum, 3)


def _put(layout: _Layout, whole, part, src, axis: int):
  """whole (every block's gradient, after the all-gather) with block src's (along `axis`) set to part."""
  return jax.lax.dynamic_update_slice_in_dim(whole, part, src * layout.local, axis)


def _pass_on(layout: _Layout, x):
  """x sent to the next slice round the ring."""
  return jax.lax.ppermute(x, sp.AXIS, [(i, (i + 1) % layout.shards) for i in range(layout.shards)])


def _forward(layout: _Layout, q, q_doc, q_cum, k, v, k_doc, k_cum):
  """(o [B, L, H, V] in q's dtype, log-sum-exp [B, Hkv, G, L] fp32)."""
  r = jax.lax.axis_index(sp.AXIS)
  hkv = k.shape[2]
  qh = _heads(q, hkv)  # [B, Hkv, G, L, K]
  qc = None if q_cum is None else _heads(q_cum[..., None], hkv)[..., 0]  # [B, Hkv, G, L]
  blocks = _key_blocks(k, v, k_doc, k_cum, hkv)
  state = tuple(sp.varying(x) for x in (jnp.full(qh.shape[:-1], -jnp.inf, F32), jnp.zeros(qh.shape[:-1], F32),
                                        jnp.zeros((*qh.shape[:-1], v.shape[-1]), F32)))

  def update(state, src, kb, vb, kdoc, kcum):
    m, l, acc = state
    s = _logits(layout, r, src, qh, q_doc, qc, kb, kdoc, kcum)
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # -inf while nothing is visible yet
    p = jnp.exp(s - m_safe[..., None])
    alpha = jnp.exp(m - m_safe)
    return m_new, alpha * l + jnp.sum(p, -1), alpha[..., None] * acc + jnp.einsum("bhgqs,bhsv->bhgqv", p,
                                                                                   vb.astype(F32))

  for step in range(layout.shards):
    src = (r - step) % layout.shards
    state = jax.lax.cond(_visible(layout, r, src), update, lambda state, *_: state, state, src,
                         *_block(layout, blocks, src))
    if layout.method == "ring" and step < layout.shards - 1:
      blocks = _pass_on(layout, blocks)
  m, l, acc = state
  return _unheads(acc / l[..., None], q.dtype), m + jnp.log(l)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(layout: _Layout, q, q_doc, q_cum, k, v, k_doc, k_cum):
  """Local queries q [B, L, H, K] (documents [B, L], cumulative gates [B, L, H] or None) over the key blocks
  (k, v [B, L or T, Hkv, *], their documents and cumulative gates) -> o [B, L, H, V]."""
  return _forward(layout, q, q_doc, q_cum, k, v, k_doc, k_cum)[0]


def _attend_fwd(layout, q, q_doc, q_cum, k, v, k_doc, k_cum):
  o, lse = _forward(layout, q, q_doc, q_cum, k, v, k_doc, k_cum)
  return o, (q, q_doc, q_cum, k, v, k_doc, k_cum, o, lse)


def _attend_bwd(layout, residuals, do):
  q, q_doc, q_cum, k, v, k_doc, k_cum, o, lse = residuals
  r = jax.lax.axis_index(sp.AXIS)
  hkv = k.shape[2]
  qh, doh = _heads(q, hkv), _heads(do, hkv)  # [B, Hkv, G, L, K|V]
  qc = None if q_cum is None else _heads(q_cum[..., None], hkv)[..., 0]
  delta = jnp.sum(doh * _heads(o, hkv), axis=-1)  # [B, Hkv, G, L]
  blocks = _key_blocks(k, v, k_doc, k_cum, hkv)
  zeros = lambda x: None if x is None else sp.varying(jnp.zeros(x.shape, F32))  # noqa: E731
  dq, dqc = zeros(qh), zeros(qc)
  dk, dv, dkc = zeros(blocks[0]), zeros(blocks[1]), zeros(blocks[3])  # the ring's block, or all blocks

  def grads(src, kb, vb, kdoc, kcum):
    s = _logits(layout, r, src, qh, q_doc, qc, kb, kdoc, kcum)
    p = jnp.exp(s - lse[..., None])
    dp = jnp.einsum("bhgqv,bhsv->bhgqs", doh, vb.astype(F32))
    ds = p * (dp - delta[..., None])  # d loss / d logit
    out = (jnp.einsum("bhgqs,bhsk->bhgqk", ds, kb.astype(F32)) * layout.scale,
           jnp.einsum("bhgqs,bhgqk->bhsk", ds, qh) * layout.scale, jnp.einsum("bhgqs,bhgqv->bhsv", p, doh))
    return out + (() if qc is None else (jnp.sum(ds, -1), -jnp.sum(ds, -2)))

  def skip(src, kb, vb, kdoc, kcum):
    return tuple(zeros(x) for x in (qh, kb, vb) + (() if qc is None else (qc, kcum)))

  for step in range(layout.shards):
    src = (r - step) % layout.shards
    got = jax.lax.cond(_visible(layout, r, src), grads, skip, src, *_block(layout, blocks, src))
    dq = dq + got[0]
    if qc is not None:
      dqc = dqc + got[3]
    if layout.method == "ring":
      dk, dv = dk + got[1], dv + got[2]
      dkc = None if qc is None else dkc + got[4]
      if step < layout.shards - 1:
        blocks = _pass_on(layout, blocks)
      dk, dv, dkc = _pass_on(layout, (dk, dv, dkc))  # after the last step: home to the block's slice
    else:
      dk, dv = _put(layout, dk, got[1], src, 2), _put(layout, dv, got[2], src, 2)
      dkc = None if qc is None else _put(layout, dkc, got[4], src, 3)
  cum_grad = lambda x: None if x is None else jnp.moveaxis(x, 3, 1).reshape(*x.shape[:1], x.shape[3], -1)  # noqa: E731
  return (_unheads(dq, q.dtype), None, cum_grad(dqc), jnp.swapaxes(dk, 1, 2).astype(k.dtype),
          jnp.swapaxes(dv, 1, 2).astype(v.dtype), None, cum_grad(dkc))


_attend.defvjp(_attend_fwd, _attend_bwd)
