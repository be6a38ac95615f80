"""Chunkwise-parallel forms shared by several ops (the fast forms; each op's `_recurrent` is its spec).

chunk_scalar_gate: scalar log decay per step (simple_gla; linear_attn without gates).
chunk_delta:       the WY/UT form of the delta rule (gated_delta_rule; delta_rule without gates).
"""

import jax
import jax.numpy as jnp

from layers.linear_attention.ops import common


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
  same = common.same_document(docs.doc, docs.doc)  # [B|1, 1, N|1, C, C]
  pairs = jnp.tril(jnp.ones((size, size), bool)) & same  # s <= t in one document
  if g is None:
    decay_qk, q_in, k_out, chunk_decay = pairs.astype(q.dtype), qc, kc, docs.carry
  else:
    cum = jnp.cumsum(common.to_chunks(g, size), axis=-1)  # [B, H, N, C]
    last = cum[..., -1:]  # [B, H, N, 1]
    decay_qk = common.masked_exp(cum[..., :, None] - cum[..., None, :], pairs)  # [B, H, N, C, C]
    q_in = qc * jnp.exp(cum)[..., None]
    k_out = kc * jnp.exp(last - cum)[..., None]
    chunk_decay = jnp.exp(last) * docs.carry  # [B, H, N, 1]
  update = jnp.einsum("bhnck,bhncv->bhnkv", k_out * docs.last, vc)  # sum_s exp(b_C - b_s) k_s v_sᵀ
  starts, final = common.scan_chunk_states(s0, chunk_decay, update)
  scores = jnp.einsum("bhnck,bhnsk->bhncs", qc, kc) * decay_qk  # masked, decayed q_t . k_s
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
  """Chunkwise delta rule through the WY/UT transform (g None: ungated DeltaNet).

  q, k [B, T, H, K], v [B, T, H, V], g, beta [B, T, H] fp32 with T a multiple of `size`.
  In a chunk with start state S_n and b_t = g_1 + ... + g_t, the per-step corrections
  δ_t = β_t (v_t − exp(g_t) S_{t-1}ᵀ k_t) solve the unit lower-triangular system
    (I + A) δ = diag(β) V − diag(β exp(b)) K S_n,   A_ts = β_t exp(b_t − b_s) (k_t . k_s) for s < t,
  i.e. δ = U − W S_n with U = (I + A)⁻¹ diag(β) V and W = (I + A)⁻¹ diag(β exp(b)) K (one
  triangular solve per chunk, all chunks at once). Then
    o_t     = exp(b_t) q_t S_n + sum_{s<=t} exp(b_t − b_s) (q_t . k_s) δ_s
    S_{n+1} = exp(b_C) S_n + sum_s exp(b_C − b_s) k_s δ_sᵀ
  and only δ = U − W S_n and the state update run sequentially over chunks. In a packed row A and the
  scores keep only pairs within a document (I + A is block-diagonal per document), S_n reaches (through
  W and q) only the document continuing from before the chunk, only the last document writes S_{n+1},
  and exp(b_C) S_n is dropped when a document starts inside the chunk (`docs`).
  """
  qc, kc, vc = (common.to_chunks(x, size) for x in (q, k, v))  # [B, H, N, C, K|V]
  bc = common.to_chunks(beta, size)  # [B, H, N, C]
  same = common.same_document(docs.doc, docs.doc)  # [B|1, 1, N|1, C, C]
  strict = jnp.tril(jnp.ones((size, size), bool), -1) & same  # s < t in one document
  causal = jnp.tril(jnp.ones((size, size), bool)) & same  # s <= t in one document
  if g is None:
    decay_strict, decay_causal = strict.astype(q.dtype), causal.astype(q.dtype)
    k_in, k_out, q_in, chunk_decay = kc, kc, qc, docs.carry[..., 0]
  else:
    cum = jnp.cumsum(common.to_chunks(g, size), axis=-1)  # [B, H, N, C]
    last = cum[..., -1:]
    diff = cum[..., :, None] - cum[..., None, :]
    decay_strict = common.masked_exp(diff, strict)  # [B, H, N, C, C]
    decay_causal = common.masked_exp(diff, causal)
    k_in = kc * jnp.exp(cum)[..., None]  # exp(b_t) k_t
    k_out = kc * jnp.exp(last - cum)[..., None]  # exp(b_C − b_s) k_s
    q_in = qc * jnp.exp(cum)[..., None]
    chunk_decay = jnp.exp(last[..., 0]) * docs.carry[..., 0]  # [B, H, N]

  a = bc[..., None] * jnp.einsum("bhnck,bhnsk->bhncs", kc, kc) * decay_strict  # A [B, H, N, C, C]
  inv = unit_lower_inverse(a)  # (I + A)⁻¹
  u = jnp.einsum("bhncs,bhnsv->bhncv", inv, bc[..., None] * vc)  # (I + A)⁻¹ diag(β) V
  w = jnp.einsum("bhncs,bhnsk->bhnck", inv, bc[..., None] * k_in * docs.first)  # (I + A)⁻¹ diag(β exp(b)) K

  def step(s, x):  # s [B, H, K, V]
    u_n, w_n, k_n, d_n = x
    delta = u_n - jnp.einsum("bhck,bhkv->bhcv", w_n, s)
    nxt = d_n[..., None, None] * s + jnp.einsum("bhck,bhcv->bhkv", k_n, delta)
    return nxt, (s, delta)

  xs = tuple(jnp.moveaxis(x, 2, 0) for x in (u, w, k_out * docs.last, chunk_decay))
  final, (starts, delta) = jax.lax.scan(step, s0, xs)
  starts, delta = jnp.moveaxis(starts, 0, 2), jnp.moveaxis(delta, 0, 2)  # [B, H, N, K, V], [B, H, N, C, V]
  scores = jnp.einsum("bhnck,bhnsk->bhncs", qc, kc) * decay_causal
  o = jnp.einsum("bhncs,bhnsv->bhncv", scores, delta) + jnp.einsum("bhnck,bhnkv->bhncv", q_in * docs.first, starts)
  return common.from_chunks(o), final
