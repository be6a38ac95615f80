"""Chunkwise-parallel forms shared by several ops (the fast forms; each op's recurrent form is its spec).

decayed_scores:     intra-chunk scores x_t . y_s exp(b_t − b_s) for a scalar or per-channel log decay.
unit_lower_inverse: (I + A)⁻¹ for strictly lower-triangular A, by block doubling (matmuls only).
chunk_linear:       gated linear attention, no / scalar / per-channel log decay (linear_attn, simple_gla, gla).
chunk_delta:        the WY/UT form of the delta rule (delta_rule, gated_delta_rule, kda).

Both chunk forms run through one `jax.custom_vjp` (`_chunk_recurrence`). Forward and backward walk the row
in groups of GROUP_CHUNKS chunks (an outer scan), so only one group's intra-chunk terms are live at a time.
The forward keeps only the inputs and the state entering each group ([m, B, H, K, V]); the backward
recomputes a group's chunk-entry states and intra-chunk terms, runs the state gradient backwards over its
chunks, then forms every input gradient with the group's chunks in parallel (the recompute-based backward of
the reference GPU library's chunk kernels), writing it in place into the gradients' buffers.
"""

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from layers.linear_attention.ops import common

# Secondary chunk length for per-channel decays: decays inside a sub-chunk are applied elementwise
# ([c, c, K]), between sub-chunks through matmuls with exponents relative to the sub-chunk start (<= 0).
SUB_CHUNK = 8


def decayed_scores(
  x: jax.Array, y: jax.Array, x_cum: jax.Array | None, y_cum: jax.Array | None, docs: common.ChunkDocuments, *,
  strict: bool,
) -> jax.Array:
  """Intra-chunk scores sum_k x_tk y_sk exp(x_cum_tk − y_cum_sk) over the pairs s < t (strict) or s <= t
  within one document, exactly 0 elsewhere.

  x, y [B, H, N, C, K] fp32; x_cum, y_cum in-chunk cumulative log decays: None (no decay), [B, H, N, C] (one
  per step, broadcast over K) or [B, H, N, C, K] (per channel). y_cum is non-increasing along C and every
  kept pair has x_cum_t <= y_cum_{t'} for all t' < t (x_cum = y_cum, or x_cum_t = y_cum_{t-1}), so every
  exponent below is <= 0. Returns [B, H, N, C, C].
  Per channel the decay cannot leave the K-sum as exp(x_cum_t) exp(−y_cum_s) (that overflows), so the chunk
  is cut into sub-chunks of c = SUB_CHUNK steps with r_i = y_cum at the step before sub-chunk i (0 at the
  chunk start): for t in sub-chunk i and s before it, exp(x_cum_t − y_cum_s) = exp(x_cum_t − r_i)
  exp(r_i − y_cum_s), both factors <= 1, a plain matmul; inside a sub-chunk the decay is applied
  elementwise ([c, c, K]).
  """
  size = x.shape[-2]
  same = common.same_document(docs.doc, docs.doc)  # [B|1, 1, N|1, C, C]
  pairs = jnp.tril(jnp.ones((size, size), bool), -1 if strict else 0) & same
  if x_cum is None or x_cum.ndim == x.ndim - 1:
    decay = pairs.astype(x.dtype) if x_cum is None else common.masked_exp(
      x_cum[..., :, None] - y_cum[..., None, :], pairs)
    return jnp.einsum("bhnck,bhnsk->bhncs", x, y) * decay

  c = math.gcd(size, SUB_CHUNK)
  ns = size // c
  x_s, y_s, xc_s, yc_s = (a.reshape(*a.shape[:3], ns, c, a.shape[-1]) for a in (x, y, x_cum, y_cum))  # [B,H,N,ns,c,K]
  ref = jnp.concatenate([jnp.zeros_like(yc_s[..., :1, 0, :]), yc_s[..., :-1, -1, :]], axis=-2)  # r [B,H,N,ns,K]
  x_ref = x_s * jnp.exp(xc_s - ref[..., None, :])  # x_t exp(x_cum_t − r_i)
  before = jnp.arange(size)[None, :] < (jnp.arange(ns) * c)[:, None]  # s before sub-chunk i [ns, C]
  y_ref = y[..., None, :, :] * common.masked_exp(  # y_s exp(r_i − y_cum_s) [B, H, N, ns, C, K]
    ref[..., :, None, :] - y_cum[..., None, :, :], before[:, :, None])
  doc_s = docs.doc.reshape(*docs.doc.shape[:3], ns, c)  # [B|1, 1, N|1, ns, c]
  between = jnp.where(  # [B, H, N, ns, c, C]
    common.same_document(doc_s, docs.doc[..., None, :]), jnp.einsum("bhnitk,bhnisk->bhnits", x_ref, y_ref), 0.0)
  inner = jnp.tril(jnp.ones((c, c), bool), -1 if strict else 0)[:, :, None]
  inside = jnp.where(common.same_document(doc_s, doc_s), jnp.einsum(  # [B, H, N, ns, c, c]
    "bhnitk,bhnisk,bhnitsk->bhnits", x_s, y_s,
    common.masked_exp(xc_s[..., :, None, :] - yc_s[..., None, :, :], inner)), 0.0)
  return between.reshape(*between.shape[:3], size, size) + jnp.einsum(
    "bhnits,ij->bhnitjs", inside, jnp.eye(ns, dtype=inside.dtype)).reshape(*between.shape[:3], size, size)



@jax.custom_vjp
def unit_lower_inverse(a: jax.Array) -> jax.Array:
  """(I + A)⁻¹ for strictly lower-triangular A [..., C, C], by block doubling (block forward substitution).

  Knowing the inverses X11, X22 of two diagonal blocks, [[I + A11, 0], [A21, I + A22]]⁻¹ =
  [[X11, 0], [−X22 A21 X11, X22]]; from 1 x 1 blocks (each 1), log2(C) levels of batched matmuls give the
  inverse (the row-by-row loop took C sequential steps). C is zero-padded to a power of two (identity rows).
  Matmuls, not lax.linalg.triangular_solve: on CPU that LAPACK call can deadlock when XLA runs two of them
  at once on a small thread pool. The backward pass is closed form (it stores only the inverse).

  Example:
    >>> a = jnp.tril(jnp.ones((3, 3)), -1)
    >>> bool(jnp.allclose(unit_lower_inverse(a) @ (jnp.eye(3) + a), jnp.eye(3)))
    True
  """
  size = a.shape[-1]
  n = 1 << (size - 1).bit_length()
  batch = a.shape[:-2]
  a = jnp.pad(a, [(0, 0)] * len(batch) + [(0, n - size)] * 2)
  inv = jnp.ones((*batch, n, 1, 1), a.dtype)  # inverses of the 1 x 1 diagonal blocks [..., n, 1, 1]
  s = 1
  while s < n:
    m = n // (2 * s)
    diag = jnp.diagonal(a.reshape(*batch, m, 2 * s, m, 2 * s), axis1=-4, axis2=-2)  # [..., 2s, 2s, m]
    a21 = jnp.moveaxis(diag[..., s:, :s, :], -1, -3)  # [..., m, s, s]
    pairs = inv.reshape(*batch, m, 2, s, s)
    x11, x22 = pairs[..., 0, :, :], pairs[..., 1, :, :]
    top = jnp.concatenate([x11, jnp.zeros_like(x11)], axis=-1)
    bottom = jnp.concatenate([-(x22 @ a21 @ x11), x22], axis=-1)
    inv = jnp.concatenate([top, bottom], axis=-2)  # [..., m, 2s, 2s]
    s *= 2
  return inv[..., 0, :size, :size]


def _inverse_fwd(a):
  inv = unit_lower_inverse(a)
  return inv, inv


def _inverse_bwd(inv, grad):
  # d(M⁻¹) = −M⁻¹ dM M⁻¹  =>  dL/dA = −M⁻ᵀ (dL/dM⁻¹) M⁻ᵀ, restricted to the strictly lower part.
  inv_t = jnp.swapaxes(inv, -1, -2)
  return (jnp.tril(-(inv_t @ grad @ inv_t), -1),)


unit_lower_inverse.defvjp(_inverse_fwd, _inverse_bwd)


def chunk_linear(
  q: jax.Array, k: jax.Array, v: jax.Array, g: jax.Array | None, s0: jax.Array, docs: common.ChunkDocuments,
  size: int,
) -> tuple[jax.Array, jax.Array]:
  """Chunkwise gated linear attention S_t = diag(exp(g_t)) S_{t-1} + k_t v_tᵀ, o_t = S_tᵀ q_t.

  q, k [B, T, H, K], v [B, T, H, V], fp32 with T a multiple of `size`; g the log decay: None (linear_attn),
  [B, T, H] (one per head: simple_gla) or [B, T, H, K] (per key channel: gla). Within a chunk with start
  state S_n and b_t = g_1 + ... + g_t (local cumsum, per channel, <= 0 and decreasing),
    o_t     = (q_t ⊙ exp(b_t)) S_n + sum_{s<=t} [sum_c q_tc k_sc exp(b_tc − b_sc)] v_s
    S_{n+1} = diag(exp(b_C)) S_n + sum_s (k_s ⊙ exp(b_C − b_s)) v_sᵀ
  Every exponent is <= 0, so nothing overflows whatever the decay; the intra-chunk scores are
  `decayed_scores` (sub-chunks for a per-channel decay). In a packed row the sums run over s in t's
  document, S_n reaches only the document continuing from before the chunk, only the last document writes
  S_{n+1}, and the decayed S_n is dropped when a document starts inside the chunk (`docs`).
  Returns o [B, T, H, V] and the final state [B, H, K, V].
  """
  return _chunk_recurrence(q, k, v, g, None, s0, docs, size)


def chunk_delta(
  q: jax.Array, k: jax.Array, v: jax.Array, g: jax.Array | None, beta: jax.Array, s0: jax.Array,
  docs: common.ChunkDocuments, size: int,
) -> tuple[jax.Array, jax.Array]:
  """Chunkwise (gated) delta rule through the WY/UT transform.

  q, k [B, T, H, K], v [B, T, H, V], beta [B, T, H] fp32 with T a multiple of `size`; g the log decay:
  None (ungated DeltaNet), [B, T, H] (one per head: gated_delta_rule) or [B, T, H, K] (per key channel: kda).
  The recurrence S'_t = diag(exp(g_t)) S_{t-1}, S_t = S'_t + β_t k_t (v_t − S'_tᵀ k_t)ᵀ. In a chunk with
  start state S_n and b_t = g_1 + ... + g_t (per channel), the corrections δ_t = β_t (v_t − S'_tᵀ k_t) solve
  the unit lower-triangular system
    (I + A) δ = diag(β) V − diag(β) (K ⊙ exp(b)) S_n,   A_ts = β_t sum_c k_tc k_sc exp(b_tc − b_sc) for s < t,
  i.e. δ = U − W S_n with U = (I + A)⁻¹ diag(β) V and W = (I + A)⁻¹ diag(β) (K ⊙ exp(b)) (one
  `unit_lower_inverse` per chunk, a group of chunks at once). Then
    o_t     = (q_t ⊙ exp(b_t)) S_n + sum_{s<=t} [sum_c q_tc k_sc exp(b_tc − b_sc)] δ_s
    S_{n+1} = diag(exp(b_C)) S_n + sum_s (k_s ⊙ exp(b_C − b_s)) δ_sᵀ
  and only δ = U − W S_n and the state update run sequentially over chunks. The decayed k.k and q.k
  scores are `decayed_scores`. In a packed row A and the scores keep only pairs within a document
  (I + A is block-diagonal per document), S_n reaches (through W and q) only the document continuing from
  before the chunk, only the last document writes S_{n+1}, and the decayed S_n is dropped when a document
  starts inside the chunk (`docs`). Returns o [B, T, H, V] and the final state [B, H, K, V].
  """
  return _chunk_recurrence(q, k, v, g, beta, s0, docs, size)


class _Terms(NamedTuple):
  """Intra-chunk terms of the chunk recurrence (all chunks at once), recomputed by the backward pass."""
  grow: jax.Array | None  # exp(b_t) [B, H, N, C, K|1]; None without decay
  fade: jax.Array | None  # exp(b_C − b_s) [B, H, N, C, K|1]
  chunk_decay: jax.Array  # diag(exp(b_C)), 0 where a document starts inside the chunk [B|1, H|1, N, K|1]
  q_in: jax.Array  # q_t ⊙ exp(b_t), on the continuing document [B, H, N, C, K]
  k_out: jax.Array  # k_s ⊙ exp(b_C − b_s), on the last document [B, H, N, C, K]
  u: jax.Array  # what each step writes given S_n = 0: v (linear) or U (delta) [B, H, N, C, V]
  w: jax.Array | None  # W of the delta rule [B, H, N, C, K]; None for linear attention
  inv: jax.Array | None  # (I + A)⁻¹ [B, H, N, C, C]


def _scaled(x: jax.Array, factor: jax.Array | None) -> jax.Array:
  return x if factor is None else x * factor


def _cumulative(g: jax.Array | None, size: int) -> jax.Array | None:
  """In-chunk cumulative log decay b [B, H, N, C] or [B, H, N, C, K] from g [B, T, H] or [B, T, H, K]."""
  return None if g is None else jnp.cumsum(common.to_chunks(g, size), axis=3)


def _scores(x, y, cum, docs, strict):
  return decayed_scores(x, y, cum, cum, docs, strict=strict)


def _terms(qc, kc, vc, cum, bc, kk, docs) -> _Terms:
  """qc, kc [B, H, N, C, K], vc [B, H, N, C, V], cum from `_cumulative`, bc β [B, H, N, C, 1] or None
  (linear attention), kk the strict decayed k.k scores [B, H, N, C, C] (delta rule)."""
  if cum is None:
    grow = fade = None
    chunk_decay = docs.carry
  else:
    c = cum if cum.ndim == kc.ndim else cum[..., None]  # [B, H, N, C, K|1]
    last = c[..., -1:, :]  # b_C [B, H, N, 1, K|1]
    grow, fade = jnp.exp(c), jnp.exp(last - c)
    chunk_decay = jnp.exp(last[..., 0, :]) * docs.carry
  q_in, k_out = _scaled(qc, grow) * docs.first, _scaled(kc, fade) * docs.last
  if bc is None:
    return _Terms(grow, fade, chunk_decay, q_in, k_out, vc, None, None)
  inv = unit_lower_inverse(bc * kk)  # (I + A)⁻¹
  u = jnp.einsum("bhncs,bhnsv->bhncv", inv, bc * vc)
  w = jnp.einsum("bhncs,bhnsk->bhnck", inv, bc * _scaled(kc, grow) * docs.first)
  return _Terms(grow, fade, chunk_decay, q_in, k_out, u, w, inv)


def _corrections(t: _Terms, starts: jax.Array) -> jax.Array:
  """What each step writes, δ = U − W S_n (v for linear attention) [B, H, N, C, V]."""
  return t.u if t.w is None else t.u - jnp.einsum("bhnck,bhnkv->bhncv", t.w, starts)


def _time_major(x: jax.Array | None) -> jax.Array | None:
  return None if x is None else jnp.moveaxis(x, 2, 0)


def _chunk_forward(q, k, v, g, beta, s0, docs, size):
  """(o [B, T, H, V], final state [B, H, K, V], states entering each chunk [B, H, N, K, V])."""
  qc, kc, vc = (common.to_chunks(x, size) for x in (q, k, v))  # [B, H, N, C, K|V]
  bc = None if beta is None else common.to_chunks(beta, size)[..., None]  # [B, H, N, C, 1]
  cum = _cumulative(g, size)
  scores = _scores(qc, kc, cum, docs, strict=False)  # masked, decayed q_t . k_s [B, H, N, C, C]
  kk = None if bc is None else _scores(kc, kc, cum, docs, strict=True)
  t = _terms(qc, kc, vc, cum, bc, kk, docs)

  def step(s, x):  # s [B, H, K, V]: the state entering chunk n
    u_n, w_n, k_n, d_n = x
    delta = u_n if w_n is None else u_n - jnp.einsum("bhck,bhkv->bhcv", w_n, s)
    return d_n[..., None] * s + jnp.einsum("bhck,bhcv->bhkv", k_n, delta), s

  final, starts = jax.lax.scan(step, s0, tuple(map(_time_major, (t.u, t.w, t.k_out, t.chunk_decay))))
  starts = jnp.moveaxis(starts, 0, 2)  # [B, H, N, K, V]
  o = jnp.einsum("bhncs,bhnsv->bhncv", scores, _corrections(t, starts)) + jnp.einsum(
    "bhnck,bhnkv->bhncv", t.q_in, starts)
  return common.from_chunks(o), final, starts


# Chunks per step of the outer scan of `_chunk_recurrence` (the largest divisor of N up to this): the
# intra-chunk terms of one group are live at a time, so memory does not grow with T beyond the inputs, the
# group-entry states and the gradients, and each step's work stays cache-sized on CPU.
GROUP_CHUNKS = 16


def _group_count(n: int) -> int:
  """Number of groups of at most GROUP_CHUNKS chunks that N chunks split into evenly."""
  return n // max(d for d in range(1, min(n, GROUP_CHUNKS) + 1) if n % d == 0)


def _to_groups(x: jax.Array | None, m: int, axis: int) -> jax.Array | None:
  """Split `axis` into m groups and lead with them: [..., m*L, ...] -> [m, ..., L, ...] (None stays None)."""
  if x is None:
    return None
  return jnp.moveaxis(x.reshape(*x.shape[:axis], m, x.shape[axis] // m, *x.shape[axis + 1:]), axis, 0)


def _group(x: jax.Array | None, j: jax.Array, length: int) -> jax.Array | None:
  """Group j of the time axis (axis 1) of x [B, T, ...]: [B, length, ...] (None stays None)."""
  return None if x is None else jax.lax.dynamic_slice_in_dim(x, j * length, length, 1)


def _put_group(buffer: jax.Array | None, x: jax.Array | None, j: jax.Array, length: int) -> jax.Array | None:
  """buffer [B, T, ...] with group j replaced by x (in place in the scan's carry)."""
  return None if buffer is None else jax.lax.dynamic_update_slice_in_dim(buffer, x, j * length, 1)


def _grouped_documents(docs: common.ChunkDocuments, m: int) -> tuple[common.ChunkDocuments, common.ChunkDocuments]:
  """(per-group fields [m, B|1, 1, N/m, ...] or None, constant fields or None): fields with one chunk
  (a row without segment_ids) broadcast over every group."""
  split = [None if x.shape[2] == 1 and m > 1 else _to_groups(x, m, 2) for x in docs]
  return common.ChunkDocuments(*split), common.ChunkDocuments(*(
    x if y is None else None for x, y in zip(docs, split)))


def _merge(per_group: common.ChunkDocuments, constant: common.ChunkDocuments) -> common.ChunkDocuments:
  return common.ChunkDocuments(*(c if x is None else x for x, c in zip(per_group, constant)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _chunk_recurrence(q, k, v, g, beta, s0, docs, size):
  """chunk_linear (beta None) or chunk_delta: (o, final state); see those for the math."""
  (o, final), _ = _chunk_recurrence_fwd(q, k, v, g, beta, s0, docs, size)
  return o, final


def _chunk_recurrence_fwd(q, k, v, g, beta, s0, docs, size):
  """`grouped_forward` of `_chunk_forward`; residuals: the inputs and the states entering each group."""
  o, final, entries = grouped_forward(_chunk_forward, (q, k, v, g, beta), s0, docs, size)
  return (o, final), (q, k, v, g, beta, docs, entries)


def _chunk_recurrence_bwd(size, res, cts):
  """`grouped_backward` of `_chunk_backward` (docs get no gradient)."""
  q, k, v, g, beta, docs, entries = res
  grads, d_s0 = grouped_backward(_chunk_forward, _chunk_backward, (q, k, v, g, beta), docs, entries, *cts, size)
  return (*grads, d_s0, None)


def grouped_forward(forward: Callable, inputs: tuple, s0: jax.Array, docs: common.ChunkDocuments, size: int):
  """A scan over groups of chunks (`GROUP_CHUNKS`), each `forward(*inputs_j, s, docs_j, size) -> (o_j, final_j,
  starts_j)` (chunkwise parallel inside the group): only one group's intra-chunk terms are live at a time.
  inputs [B, T, H, ...] (None passes through). Returns o [B, T, H, V], the final state [B, H, K, V] and the
  states entering each group [m, B, H, K, V] (the residual of the recompute-based backward: one state per
  group, not per chunk)."""
  m = _group_count(inputs[0].shape[1] // size)
  length = inputs[0].shape[1] // m
  per_group, constant = _grouped_documents(docs, m)

  def run(j, s, docs_j):
    return forward(*(_group(x, j, length) for x in inputs), s, _merge(docs_j, constant), size)

  o_group = jax.eval_shape(run, 0, s0, jax.tree.map(lambda x: x[0], per_group))[0]  # [B, length, H, V]
  # zeros_like keeps the inputs' shard_map axis types (a scan's carry must keep its type)
  o = jnp.zeros_like(inputs[0], o_group.dtype, (o_group.shape[0], inputs[0].shape[1], *o_group.shape[2:]))

  def body(carry, x):
    s, o = carry
    j, docs_j = x
    o_j, final, _ = run(j, s, docs_j)
    return (final, _put_group(o, o_j, j, length)), s

  (final, o), entries = jax.lax.scan(body, (s0, o), (jnp.arange(m), per_group))
  return o, final, entries


def grouped_backward(forward: Callable, backward: Callable, inputs: tuple, docs: common.ChunkDocuments,
                     entries: jax.Array, do: jax.Array, d_final: jax.Array, size: int) -> tuple[tuple, jax.Array]:
  """`grouped_forward`'s scan in reverse: each group recomputes its chunk-entry states from the state
  entering it (`forward`, whose output is dropped) and goes through `backward(*inputs_j, docs_j, starts_j,
  do_j, ds, size) -> (*input grads, d state entering the group)`; the gradients are written in place into
  [B, T, ...] buffers. Returns (the inputs' gradients, d s0)."""
  m = entries.shape[0]
  length = inputs[0].shape[1] // m
  per_group, constant = _grouped_documents(docs, m)

  def body(carry, x):
    ds, grads = carry
    j, docs_j, s_j = x
    xs, docs_j = tuple(_group(x, j, length) for x in inputs), _merge(docs_j, constant)
    starts = forward(*xs, s_j, docs_j, size)[2]
    *grads_j, d_s = backward(*xs, docs_j, starts, _group(do, j, length), ds, size)
    return (d_s, tuple(_put_group(b, x, j, length) for b, x in zip(grads, grads_j))), None

  zeros = tuple(None if x is None else jnp.zeros_like(x) for x in inputs)
  (d_s0, grads), _ = jax.lax.scan(body, (d_final, zeros), (jnp.arange(m), per_group, entries), reverse=True)
  return grads, d_s0


_chunk_recurrence.defvjp(_chunk_recurrence_fwd, _chunk_recurrence_bwd)


def _chunk_backward(q, k, v, g, beta, docs, starts, do, d_final, size):
  """Recompute the intra-chunk terms, run dS backwards over chunks, then every input gradient in parallel.

  With δ the per-step writes and dS_{n+1} the gradient w.r.t. the state leaving chunk n:
    dδ_n   = scoresᵀ do_n + K_out dS_{n+1}          dS_n = diag(exp(b_C)) dS_{n+1} + Q_inᵀ do_n − W_nᵀ dδ_n
  (the only sequential part), then dU = dδ, dW = −dδ S_nᵀ, through U = (I + A)⁻¹ diag(β) V:
  d(diag(β) V) = (I + A)⁻ᵀ dU and dA = −(I + A)⁻ᵀ dU Uᵀ (likewise for W), and the log decays collect
  dx ⊙ x of every exp(±b) factor, summed back over the chunk (reverse cumsum). The decayed scores'
  backward is the autodiff of `decayed_scores` (recomputed, chunk-local).
  """
  qc, kc, vc, doc = (common.to_chunks(x, size) for x in (q, k, v, do))  # [B, H, N, C, K|V]
  bc = None if beta is None else common.to_chunks(beta, size)[..., None]  # [B, H, N, C, 1]
  cum = _cumulative(g, size)
  scores, scores_vjp = jax.vjp(functools.partial(_scores, docs=docs, strict=False), qc, kc, cum)
  kk, kk_vjp = (None, None) if bc is None else jax.vjp(
    functools.partial(_scores, docs=docs, strict=True), kc, kc, cum)
  t = _terms(qc, kc, vc, cum, bc, kk, docs)
  delta = _corrections(t, starts)  # [B, H, N, C, V]

  def step(ds, x):  # ds [B, H, K, V]: gradient w.r.t. the state leaving chunk n
    d_delta, k_n, d_n, w_n, q_n, do_n = x
    d_delta = d_delta + jnp.einsum("bhck,bhkv->bhcv", k_n, ds)
    ds_in = d_n[..., None] * ds + jnp.einsum("bhck,bhcv->bhkv", q_n, do_n)
    if w_n is not None:
      ds_in = ds_in - jnp.einsum("bhck,bhcv->bhkv", w_n, d_delta)
    return ds_in, (ds, d_delta)

  d_delta_o = jnp.einsum("bhncs,bhncv->bhnsv", scores, doc)  # through the intra-chunk outputs
  xs = tuple(map(_time_major, (d_delta_o, t.k_out, t.chunk_decay, t.w, t.q_in, doc)))
  d_s0, (ds_next, d_delta) = jax.lax.scan(step, d_final, xs, reverse=True)
  ds_next, d_delta = jnp.moveaxis(ds_next, 0, 2), jnp.moveaxis(d_delta, 0, 2)  # [B,H,N,K,V], [B,H,N,C,V]

  dq, dk, d_cum = scores_vjp(jnp.einsum("bhncv,bhnsv->bhncs", doc, delta))
  d_q_in = jnp.einsum("bhncv,bhnkv->bhnck", doc, starts) * docs.first  # d(q ⊙ exp(b))
  d_k_out = jnp.einsum("bhncv,bhnkv->bhnck", delta, ds_next) * docs.last  # d(k ⊙ exp(b_C − b))
  d_k_in = None  # d(k ⊙ exp(b)) through W
  if bc is None:
    dv, d_beta = d_delta, None
  else:
    inv_t = jnp.swapaxes(t.inv, -1, -2)
    d_bv = jnp.einsum("bhncs,bhnsv->bhncv", inv_t, d_delta)  # d(diag(β) V)
    d_bk = -jnp.einsum("bhncs,bhnsv,bhnkv->bhnck", inv_t, d_delta, starts)  # d(diag(β) (K ⊙ exp(b)))
    d_a = -(jnp.einsum("bhncv,bhnsv->bhncs", d_bv, t.u) + jnp.einsum("bhnck,bhnsk->bhncs", d_bk, t.w))
    k_in = _scaled(kc, t.grow) * docs.first
    dv = bc * d_bv
    d_beta = jnp.sum(vc * d_bv, -1) + jnp.sum(k_in * d_bk, -1) + jnp.sum(d_a * kk, -1)  # [B, H, N, C]
    d_k_in = bc * docs.first * d_bk
    dx, dy, d_cum_kk = kk_vjp(bc * d_a)  # A = diag(β) kk: dA outside the strict lower part meets kk = 0
    dk = dk + dx + dy
    d_cum = None if cum is None else d_cum + d_cum_kk
    d_beta = common.from_chunks(d_beta)
  dq = dq + _scaled(d_q_in, t.grow)
  dk = dk + _scaled(d_k_out, t.fade) + (0.0 if d_k_in is None else _scaled(d_k_in, t.grow))
  dg = None
  if cum is not None:
    d_grow = d_q_in * qc + (0.0 if d_k_in is None else d_k_in * kc)  # [B, H, N, C, K]
    d_fade = d_k_out * kc * t.fade
    d_last = jnp.sum(d_fade, axis=3) + jnp.sum(starts * ds_next, -1) * t.chunk_decay  # [B, H, N, K]
    dc = (d_grow * t.grow - d_fade).at[..., -1, :].add(d_last)
    dc = d_cum + (dc if cum.ndim == kc.ndim else jnp.sum(dc, -1))
    dg = common.from_chunks(jnp.flip(jnp.cumsum(jnp.flip(dc, 3), axis=3), 3))  # b_t sums g_1..g_t
  return common.from_chunks(dq), common.from_chunks(dk), common.from_chunks(dv), dg, d_beta, d_s0
