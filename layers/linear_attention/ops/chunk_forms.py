"""Chunkwise-parallel forms shared by several ops (the fast forms; each op's `_recurrent` is its spec).

decayed_scores:    intra-chunk scores x_t . y_s exp(b_t − b_s) for a scalar or per-channel log decay.
chunk_scalar_gate: scalar log decay per step (simple_gla; linear_attn without gates).
chunk_delta:       the WY/UT form of the delta rule (gated_delta_rule, kda; delta_rule without gates).
"""

import math

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


def chunk_scalar_gate(
  q: jax.Array, k: jax.Array, v: jax.Array, g: jax.Array | None, s0: jax.Array, docs: common.ChunkDocuments,
  size: int,
) -> tuple[jax.Array, jax.Array]:
  """Chunkwise form for a scalar log gate per step (g None: no decay, plain linear attention).

  q, k [B, T, H, K], v [B, T, H, V], g [B, T, H] fp32 with T a multiple of `size`.
  Within a chunk, b_t = g_1 + ... + g_t (local cumsum, <= 0 and decreasing) and
    o_t     = exp(b_t) q_t S_n + sum_{s<=t} exp(b_t - b_s) (q_t . k_s) v_s
    S_{n+1} = exp(b_C) S_n + sum_s exp(b_C - b_s) k_s v_sᵀ
  Every exponent is <= 0, so nothing overflows whatever the decay. In a packed row the sums run over
  s in t's document, S_n reaches only the document continuing from before the chunk, only the last
  document writes S_{n+1}, and exp(b_C) S_n is dropped when a document starts inside the chunk (`docs`).
  """
  qc, kc, vc = (common.to_chunks(x, size) for x in (q, k, v))  # [B, H, N, C, K|V]
  if g is None:
    cum, q_in, k_out, chunk_decay = None, qc, kc, docs.carry
  else:
    cum = jnp.cumsum(common.to_chunks(g, size), axis=-1)  # [B, H, N, C]
    last = cum[..., -1:]  # [B, H, N, 1]
    q_in = qc * jnp.exp(cum)[..., None]
    k_out = kc * jnp.exp(last - cum)[..., None]
    chunk_decay = jnp.exp(last) * docs.carry  # [B, H, N, 1]
  update = jnp.einsum("bhnck,bhncv->bhnkv", k_out * docs.last, vc)  # sum_s exp(b_C - b_s) k_s v_sᵀ
  starts, final = common.scan_chunk_states(s0, chunk_decay, update)
  scores = decayed_scores(qc, kc, cum, cum, docs, strict=False)  # masked, decayed q_t . k_s
  o = jnp.einsum("bhncs,bhnsv->bhncv", scores, vc) + jnp.einsum("bhnck,bhnkv->bhncv", q_in * docs.first, starts)
  return common.from_chunks(o), final


@jax.custom_vjp
def unit_lower_inverse(a: jax.Array) -> jax.Array:
  """(I + A)⁻¹ for strictly lower-triangular A [..., C, C], by forward substitution over rows.

  Row i of the inverse is e_i − A[i, :] (I + A)⁻¹ (rows < i already known). A loop of matmuls,
  not lax.linalg.triangular_solve: on CPU that LAPACK call can deadlock when XLA runs two of them at
  once on a small thread pool. The backward pass is closed form, so the loop stores nothing.
  """
  size = a.shape[-1]
  eye = jnp.eye(size, dtype=a.dtype)

  def row(i, inv):
    new = eye[i] - jnp.einsum("...j,...jk->...k", a[..., i, :], inv)
    return inv.at[..., i, :].set(new)

  return jax.lax.fori_loop(0, size, row, jnp.zeros_like(a))


def _inverse_fwd(a):
  inv = unit_lower_inverse(a)
  return inv, inv


def _inverse_bwd(inv, grad):
  # d(M⁻¹) = −M⁻¹ dM M⁻¹  =>  dL/dA = −M⁻ᵀ (dL/dM⁻¹) M⁻ᵀ, restricted to the strictly lower part.
  inv_t = jnp.swapaxes(inv, -1, -2)
  return (jnp.tril(-(inv_t @ grad @ inv_t), -1),)


unit_lower_inverse.defvjp(_inverse_fwd, _inverse_bwd)


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
  triangular solve per chunk, all chunks at once). Then
    o_t     = (q_t ⊙ exp(b_t)) S_n + sum_{s<=t} [sum_c q_tc k_sc exp(b_tc − b_sc)] δ_s
    S_{n+1} = diag(exp(b_C)) S_n + sum_s (k_s ⊙ exp(b_C − b_s)) δ_sᵀ
  and only δ = U − W S_n and the state update run sequentially over chunks. The decayed k.k and q.k
  scores are `decayed_scores` (sub-chunks for a per-channel decay). In a packed row A and the scores keep
  only pairs within a document (I + A is block-diagonal per document), S_n reaches (through W and q) only
  the document continuing from before the chunk, only the last document writes S_{n+1}, and the decayed
  S_n is dropped when a document starts inside the chunk (`docs`).
  """
  qc, kc, vc = (common.to_chunks(x, size) for x in (q, k, v))  # [B, H, N, C, K|V]
  bc = common.to_chunks(beta, size)[..., None]  # [B, H, N, C, 1]
  cum = None if g is None else jnp.cumsum(common.to_chunks(g, size), axis=3)  # b [B, H, N, C] or [B, H, N, C, K]
  a = bc * decayed_scores(kc, kc, cum, cum, docs, strict=True)  # A [B, H, N, C, C]
  scores = decayed_scores(qc, kc, cum, cum, docs, strict=False)  # [B, H, N, C, C]
  if cum is None:
    k_in, k_out, q_in, chunk_decay = kc, kc, qc, docs.carry  # decay [B|1, 1, N, 1]
  else:
    cum = cum if cum.ndim == kc.ndim else cum[..., None]  # [B, H, N, C, K|1]
    last = cum[..., -1, :]  # b_C [B, H, N, K|1]
    k_in = kc * jnp.exp(cum)  # k_t ⊙ exp(b_t)
    k_out = kc * jnp.exp(last[..., None, :] - cum)  # k_s ⊙ exp(b_C − b_s)
    q_in = qc * jnp.exp(cum)
    chunk_decay = jnp.exp(last) * docs.carry  # [B, H, N, K|1]

  inv = unit_lower_inverse(a)  # (I + A)⁻¹
  u = jnp.einsum("bhncs,bhnsv->bhncv", inv, bc * vc)  # (I + A)⁻¹ diag(β) V
  w = jnp.einsum("bhncs,bhnsk->bhnck", inv, bc * k_in * docs.first)  # (I + A)⁻¹ diag(β) (K ⊙ exp(b))

  def step(s, x):  # s [B, H, K, V]
    u_n, w_n, k_n, d_n = x
    delta = u_n - jnp.einsum("bhck,bhkv->bhcv", w_n, s)
    nxt = d_n[..., None] * s + jnp.einsum("bhck,bhcv->bhkv", k_n, delta)
    return nxt, (s, delta)

  xs = tuple(jnp.moveaxis(x, 2, 0) for x in (u, w, k_out * docs.last, chunk_decay))
  final, (starts, delta) = jax.lax.scan(step, s0, xs)
  starts, delta = jnp.moveaxis(starts, 0, 2), jnp.moveaxis(delta, 0, 2)  # [B, H, N, K, V], [B, H, N, C, V]
  o = jnp.einsum("bhncs,bhnsv->bhncv", scores, delta) + jnp.einsum("bhnck,bhnkv->bhncv", q_in * docs.first, starts)
  return common.from_chunks(o), final
