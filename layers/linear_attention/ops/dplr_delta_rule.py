"""Diagonal-plus-low-rank (DPLR) delta rule, the RWKV-7 state transition:
S_t = (diag(exp(gk_t)) + b_t a_tᵀ) S_{t-1} + k_t v_tᵀ."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from layers.linear_attention.ops import common
from layers.linear_attention.ops.chunk_forms import (
  decayed_scores,
  grouped_backward,
  grouped_forward,
  unit_lower_inverse,
)


def dplr_delta_rule(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  a: jax.Array,
  b: jax.Array,
  gk: jax.Array,
  *,
  scale: float | None = None,
  initial_state: jax.Array | None = None,
  output_final_state: bool = False,
  mode: str = "chunk",
  chunk_size: int = 64,
  segment_ids: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array | None]:
  """Linear recurrence whose transition is a per-channel decay plus a rank-one term read from the previous
  state (Peng et al., "RWKV-7 'Goose' with Expressive Dynamic State Evolution", 2025).

  S_t = diag(exp(gk_t)) S_{t-1} + b_t (a_tᵀ S_{t-1}) + k_t v_tᵀ,  o_t = S_tᵀ (scale q_t),  S_0 = initial_state.
  RWKV-7 writes the same update transposed (S_t = S_{t-1}(diag(w_t) + a_t b_tᵀ) + v_t k_tᵀ with a = −κ̂,
  b = κ̂ ⊙ in-context learning rate); here a = −κ̂ and b = κ̂ ⊙ lr. With gk = g (one value per head),
  a = −exp(g) k̂, b = β k̂ and k = β k̂ it is the gated delta rule.
  q, k, a, b, gk [B, T, H, K] (gk <= 0: log decay); v [B, T, H, V]; initial_state [B, H, K, V];
  segment_ids [B, T] int (packed documents: a change of id zeroes the state before that step, so
  initial_state seeds only the row's first document and the final state is that of its last document).
  Computed in fp32 whatever the input dtype. Returns o [B, T, H, V] in q's dtype and the final state
  [B, H, K, V] in fp32 (None unless output_final_state). mode: "recurrent" (scan, the specification),
  "chunk" (the WY-style chunk form derived in `_chunk`: the fast form for training), "parallel" (one
  chunk over the whole sequence).

  Example (a row holding documents of 3 and 2 tokens; the second starts afresh):
    >>> q = k = jnp.full((1, 5, 2, 4), 0.5); v = jnp.ones((1, 5, 2, 4)); gk = jnp.full((1, 5, 2, 4), -0.5)
    >>> a, b = -k, 0.5 * k
    >>> o, state = dplr_delta_rule(q, k, v, a, b, gk, segment_ids=jnp.array([[0, 0, 0, 1, 1]]),
    ...                            output_final_state=True)
    >>> o.shape, state.shape, bool(jnp.allclose(o[0, 3], o[0, 0]))
    ((1, 5, 2, 4), (1, 2, 4, 4), True)
  """
  for name, x in (("a", a), ("b", b), ("gk", gk)):
    common.check_shape(name, x, k.shape)
  return common.run(_recurrent, _chunk, q, k, v, (a, b, gk), scale=scale, initial_state=initial_state,
                    output_final_state=output_final_state, mode=mode, chunk_size=chunk_size,
                    segment_ids=segment_ids)


def _recurrent(q, k, v, a, b, gk, s0, starts):
  def step(s, x):  # s [B, H, K, V]
    q_t, k_t, v_t, a_t, b_t, g_t = x
    read = jnp.einsum("bhk,bhkv->bhv", a_t, s)  # a_tᵀ S_{t-1}
    s = jnp.exp(g_t)[..., None] * s + b_t[..., :, None] * read[..., None, :] + k_t[..., :, None] * v_t[..., None, :]
    return s, jnp.einsum("bhk,bhkv->bhv", q_t, s)

  return common.scan_time(step, s0, (q, k, v, a, b, gk), starts)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _chunk(q, k, v, a, b, gk, s0, docs, size):
  """Chunkwise DPLR delta rule. In a chunk with start state S_n, let B_t = gk_1 + ... + gk_t (per channel,
  <= 0, decreasing; B_0 = 0) and u_t = S_{t-1}ᵀ a_t [V], the value the rank-one term reads. Unrolling
  S_t = diag(exp(gk_t)) S_{t-1} + b_t u_tᵀ + k_t v_tᵀ inside the chunk,
    S_t = diag(exp(B_t)) S_n + sum_{s<=t} diag(exp(B_t − B_s)) (k_s v_sᵀ + b_s u_sᵀ),
  so the reads u_t = S_{t-1}ᵀ a_t satisfy (with B_{t-1} the exclusive cumsum)
    u_t = S_nᵀ (a_t ⊙ exp(B_{t-1})) + sum_{s<t} [a_t . (b_s ⊙ exp(B_{t-1} − B_s))] u_s
                                   + sum_{s<t} [a_t . (k_s ⊙ exp(B_{t-1} − B_s))] v_s,
  a unit lower-triangular system (I − A_ab) U = A_ak V + Ã S_n with strictly lower A_ab, A_ak and
  Ã = A ⊙ exp(B_{t-1}). Hence U = u + W S_n with u = (I − A_ab)⁻¹ A_ak V and W = (I − A_ab)⁻¹ Ã, both for all
  chunks at once (the WY-style step: one triangular solve per chunk). Then
    o_t     = (q_t ⊙ exp(B_t)) S_n + sum_{s<=t} [q_t . (k_s ⊙ exp(B_t − B_s))] v_s
                                   + sum_{s<=t} [q_t . (b_s ⊙ exp(B_t − B_s))] u_s
    S_{n+1} = diag(exp(B_C)) S_n + sum_s (k_s ⊙ exp(B_C − B_s)) v_sᵀ + sum_s (b_s ⊙ exp(B_C − B_s)) u_sᵀ
  and only U = u + W S_n and the state update run sequentially over chunks. The four decayed score
  matrices are `decayed_scores` (sub-chunks: every exponent <= 0; for the a-rows B_{t-1} <= B_s since s < t).
  In a packed row every score keeps only pairs within a document (I − A_ab is block-diagonal per document),
  S_n reaches (through Ã and q) only the document continuing from before the chunk, only the last document
  writes S_{n+1}, and the decayed S_n is dropped when a document starts inside the chunk (`docs`).
  Backward (`_chunk_bwd`): the forward keeps only the inputs and the states entering each group of chunks;
  the backward walks the groups in reverse (chunk_forms.grouped_backward), recomputes a group's chunk-entry
  states and chunk-local terms (`_terms`), runs the state gradient backwards over its chunks and pulls the terms'
  gradients back to the inputs through their VJP (`_backward`), so one group's intermediates are live at a time.
  """
  (o, final), _ = _chunk_fwd(q, k, v, a, b, gk, s0, docs, size)
  return o, final


class _Terms(NamedTuple):
  """Chunk-local terms of `_chunk` (all chunks at once), recomputed by the backward pass."""
  u: jax.Array  # (I − A_ab)⁻¹ A_ak V [B, H, N, C, V]
  w: jax.Array  # (I − A_ab)⁻¹ Ã [B, H, N, C, K]
  b_out: jax.Array  # b_s ⊙ exp(B_C − B_s), last document only [B, H, N, C, K]
  kv: jax.Array  # sum_s (k_s ⊙ exp(B_C − B_s)) v_sᵀ [B, H, N, K, V]
  decay: jax.Array  # diag(exp(B_C)), 0 where a document starts inside the chunk [B, H, N, K]
  q_in: jax.Array  # q_t ⊙ exp(B_t), continuing document only [B, H, N, C, K]
  q_b: jax.Array  # decayed q.b scores [B, H, N, C, C]
  o_v: jax.Array  # sum_{s<=t} [q_t . (k_s ⊙ exp(B_t − B_s))] v_s [B, H, N, C, V]


def _terms(q, k, v, a, b, gk, docs, size) -> _Terms:
  qc, kc, vc, ac, bc = (common.to_chunks(x, size) for x in (q, k, v, a, b))  # [B, H, N, C, K|V]
  cum = jnp.cumsum(common.to_chunks(gk, size), axis=-2)  # B_t [B, H, N, C, K]
  prev = jnp.concatenate([jnp.zeros_like(cum[..., :1, :]), cum[..., :-1, :]], axis=-2)  # B_{t-1}, exact
  last = cum[..., -1, :]  # B_C [B, H, N, K]
  a_b = decayed_scores(ac, bc, prev, cum, docs, strict=True)  # A_ab [B, H, N, C, C]
  a_k = decayed_scores(ac, kc, prev, cum, docs, strict=True)  # A_ak
  q_k = decayed_scores(qc, kc, cum, cum, docs, strict=False)
  q_b = decayed_scores(qc, bc, cum, cum, docs, strict=False)
  inv = unit_lower_inverse(-a_b)  # (I − A_ab)⁻¹
  u = jnp.einsum("bhncs,bhnsv->bhncv", inv, jnp.einsum("bhncs,bhnsv->bhncv", a_k, vc))
  w = jnp.einsum("bhncs,bhnsk->bhnck", inv, ac * jnp.exp(prev) * docs.first)
  out = jnp.exp(last[..., None, :] - cum) * docs.last  # exp(B_C − B_s), last document only
  return _Terms(u=u, w=w, b_out=bc * out, kv=jnp.einsum("bhnck,bhncv->bhnkv", kc * out, vc),
                decay=jnp.exp(last) * docs.carry, q_in=qc * jnp.exp(cum) * docs.first, q_b=q_b,
                o_v=jnp.einsum("bhncs,bhnsv->bhncv", q_k, vc))


def _output(t: _Terms, starts: jax.Array, reads: jax.Array) -> jax.Array:
  """o [B, T, H, V] from the terms, the states entering each chunk and the reads U = u + W S_n."""
  return common.from_chunks(jnp.einsum("bhnck,bhnkv->bhncv", t.q_in, starts) + t.o_v
                            + jnp.einsum("bhncs,bhnsv->bhncv", t.q_b, reads))


def _reads(t: _Terms, starts: jax.Array) -> jax.Array:
  return t.u + jnp.einsum("bhnck,bhnkv->bhncv", t.w, starts)  # U = u + W S_n [B, H, N, C, V]


def _forward(q, k, v, a, b, gk, s0, docs, size):
  """(o [B, T, H, V], final state [B, H, K, V], states entering each chunk [B, H, N, K, V]) of one group."""
  t = _terms(q, k, v, a, b, gk, docs, size)

  def step(s, x):  # s [B, H, K, V]
    u_n, w_n, b_n, kv_n, d_n = x
    reads = u_n + jnp.einsum("bhck,bhkv->bhcv", w_n, s)
    return d_n[..., None] * s + kv_n + jnp.einsum("bhck,bhcv->bhkv", b_n, reads), s

  final, starts = jax.lax.scan(step, s0, tuple(jnp.moveaxis(x, 2, 0) for x in (t.u, t.w, t.b_out, t.kv, t.decay)))
  starts = jnp.moveaxis(starts, 0, 2)  # [B, H, N, K, V]
  return _output(t, starts, _reads(t, starts)), final, starts


def _backward(q, k, v, a, b, gk, docs, starts, do, d_final, size):
  """Gradients of one group: dS runs backwards over its chunks (the only sequential part),
    dU_n = q_bᵀ do_n + b_out dS_{n+1},   dS_n = diag(decay) dS_{n+1} + q_inᵀ do_n + W_nᵀ dU_n,
  then the terms' cotangents (dW = dU S_nᵀ, d b_out = U dS_{n+1}ᵀ, d kv = dS_{n+1}, ...) go back to the
  inputs through the VJP of `_terms` (recomputed, chunk-local). Returns (dq, dk, dv, da, db, dgk, dS_0)."""
  t, terms_vjp = jax.vjp(lambda *x: _terms(*x, docs, size), q, k, v, a, b, gk)
  reads = _reads(t, starts)
  doc = common.to_chunks(do, size)  # [B, H, N, C, V]

  def step(ds, x):  # ds [B, H, K, V]: gradient w.r.t. the state leaving chunk n
    d_reads, b_n, d_n, w_n, q_n, do_n = x
    d_reads = d_reads + jnp.einsum("bhck,bhkv->bhcv", b_n, ds)
    ds_in = d_n[..., None] * ds + jnp.einsum("bhck,bhcv->bhkv", q_n, do_n) + jnp.einsum(
      "bhck,bhcv->bhkv", w_n, d_reads)
    return ds_in, (ds, d_reads)

  d_reads_o = jnp.einsum("bhncs,bhncv->bhnsv", t.q_b, doc)  # through the intra-chunk outputs
  xs = tuple(jnp.moveaxis(x, 2, 0) for x in (d_reads_o, t.b_out, t.decay, t.w, t.q_in, doc))
  d_s0, (ds_next, d_reads) = jax.lax.scan(step, d_final, xs, reverse=True)
  ds_next, d_reads = jnp.moveaxis(ds_next, 0, 2), jnp.moveaxis(d_reads, 0, 2)  # [B,H,N,K,V], [B,H,N,C,V]
  d_terms = _Terms(
    u=d_reads, w=jnp.einsum("bhncv,bhnkv->bhnck", d_reads, starts),
    b_out=jnp.einsum("bhncv,bhnkv->bhnck", reads, ds_next), kv=ds_next, decay=jnp.sum(starts * ds_next, -1),
    q_in=jnp.einsum("bhncv,bhnkv->bhnck", doc, starts), q_b=jnp.einsum("bhncv,bhnsv->bhncs", doc, reads),
    o_v=doc)
  return (*terms_vjp(d_terms), d_s0)


def _chunk_fwd(q, k, v, a, b, gk, s0, docs, size):
  """((o, final state), residuals): the inputs and the states entering each group of chunks."""
  o, final, entries = grouped_forward(_forward, (q, k, v, a, b, gk), s0, docs, size)
  return (o, final), (q, k, v, a, b, gk, docs, entries)


def _chunk_bwd(size, res, cts):
  *inputs, docs, entries = res
  grads, d_s0 = grouped_backward(_forward, _backward, tuple(inputs), docs, entries, *cts, size)
  return (*grads, d_s0, None)


_chunk.defvjp(_chunk_fwd, _chunk_bwd)
