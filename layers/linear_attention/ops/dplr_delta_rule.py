"""Diagonal-plus-low-rank (DPLR) delta rule, the RWKV-7 state transition:
S_t = (diag(exp(gk_t)) + b_t a_tᵀ) S_{t-1} + k_t v_tᵀ."""

import jax
import jax.numpy as jnp

from layers.linear_attention.ops import common
from layers.linear_attention.ops.chunk_forms import decayed_scores, unit_lower_inverse


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
  """
  qc, kc, vc, ac, bc = (common.to_chunks(x, size) for x in (q, k, v, a, b))  # [B, H, N, C, K|V]
  cum = jnp.cumsum(common.to_chunks(gk, size), axis=-2)  # B_t [B, H, N, C, K]
  prev = jnp.concatenate([jnp.zeros_like(cum[..., :1, :]), cum[..., :-1, :]], axis=-2)  # B_{t-1}, exact
  last = cum[..., -1, :]  # B_C [B, H, N, K]
  a_b = decayed_scores(ac, bc, prev, cum, docs, strict=True)  # A_ab [B, H, N, C, C]
  a_k = decayed_scores(ac, kc, prev, cum, docs, strict=True)  # A_ak
  q_k = decayed_scores(qc, kc, cum, cum, docs, strict=False)
  q_b = decayed_scores(qc, bc, cum, cum, docs, strict=False)
  inv = unit_lower_inverse(-a_b)  # (I − A_ab)⁻¹
  u = jnp.einsum("bhncs,bhnsv->bhncv", inv, jnp.einsum("bhncs,bhnsv->bhncv", a_k, vc))  # (I − A_ab)⁻¹ A_ak V
  w = jnp.einsum("bhncs,bhnsk->bhnck", inv, ac * jnp.exp(prev) * docs.first)  # (I − A_ab)⁻¹ Ã
  out = jnp.exp(last[..., None, :] - cum) * docs.last  # exp(B_C − B_s), last document only
  kv = jnp.einsum("bhnck,bhncv->bhnkv", kc * out, vc)  # sum_s (k_s ⊙ exp(B_C − B_s)) v_sᵀ
  decay = jnp.exp(last) * docs.carry  # [B, H, N, K]

  def step(s, x):  # s [B, H, K, V]
    u_n, w_n, b_n, kv_n, d_n = x
    reads = u_n + jnp.einsum("bhck,bhkv->bhcv", w_n, s)  # U = u + W S_n
    nxt = d_n[..., None] * s + kv_n + jnp.einsum("bhck,bhcv->bhkv", b_n, reads)
    return nxt, (s, reads)

  xs = tuple(jnp.moveaxis(x, 2, 0) for x in (u, w, bc * out, kv, decay))
  final, (starts, reads) = jax.lax.scan(step, s0, xs)
  starts, reads = jnp.moveaxis(starts, 0, 2), jnp.moveaxis(reads, 0, 2)  # [B, H, N, K, V], [B, H, N, C, V]
  o = (jnp.einsum("bhnck,bhnkv->bhncv", qc * jnp.exp(cum) * docs.first, starts)
       + jnp.einsum("bhncs,bhnsv->bhncv", q_k, vc) + jnp.einsum("bhncs,bhnsv->bhncv", q_b, reads))
  return common.from_chunks(o), final
