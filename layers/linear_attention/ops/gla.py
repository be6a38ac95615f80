"""Gated linear attention (GLA): a log decay per key channel, S_t = diag(exp(gk_t)) S_{t-1} + k_t v_tᵀ."""

import math

import jax
import jax.numpy as jnp

from layers.linear_attention.ops import common

# Secondary chunk length: decays inside a sub-chunk are applied elementwise ([c, c, K]), between
# sub-chunks through matmuls with exponents relative to the sub-chunk start (always <= 0).
SUB_CHUNK = 8


def gla(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  gk: jax.Array,
  *,
  scale: float | None = None,
  initial_state: jax.Array | None = None,
  output_final_state: bool = False,
  mode: str = "chunk",
  chunk_size: int = 64,
  segment_ids: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array | None]:
  """Linear attention with a data-dependent log decay gk_t <= 0 per head, step and key channel.

  S_t = diag(exp(gk_t)) S_{t-1} + k_t v_tᵀ,  o_t = S_tᵀ (scale q_t),  S_0 = initial_state.
  q, k, gk [B, T, H, K]; v [B, T, H, V]; initial_state [B, H, K, V]; segment_ids [B, T] int (packed
  documents: a change of id zeroes the state before that step, so initial_state seeds only the row's
  first document and the final state is that of its last document).
  Returns o [B, T, H, V] in q's dtype and the final state [B, H, K, V] in fp32 (None unless
  output_final_state). mode: "recurrent" (scan, the specification), "chunk" (chunkwise matmuls
  with secondary chunking, the fast form), "parallel" (one chunk over the whole sequence).

  Example (a row holding documents of 3 and 2 tokens; the second starts afresh):
    >>> q = k = jnp.ones((1, 5, 2, 8)); v = jnp.ones((1, 5, 2, 4)); gk = jnp.full((1, 5, 2, 8), -0.5)
    >>> o, state = gla(q, k, v, gk, segment_ids=jnp.array([[0, 0, 0, 1, 1]]), output_final_state=True)
    >>> o.shape, state.shape, bool(jnp.allclose(o[0, 3], o[0, 0]))
    ((1, 5, 2, 4), (1, 2, 8, 4), True)
  """
  common.check_shape("gk", gk, k.shape)
  return common.run(_recurrent, _chunk, q, k, v, (gk,), scale=scale, initial_state=initial_state,
                    output_final_state=output_final_state, mode=mode, chunk_size=chunk_size,
                    segment_ids=segment_ids)


def _recurrent(q, k, v, gk, s0, starts):
  def step(s, x):  # s [B, H, K, V]
    q_t, k_t, v_t, g_t = x
    s = jnp.exp(g_t)[..., None] * s + k_t[..., :, None] * v_t[..., None, :]
    return s, jnp.einsum("bhk,bhkv->bhv", q_t, s)

  return common.scan_time(step, s0, (q, k, v, gk), starts)


def _chunk(q, k, v, gk, s0, docs, size):
  """Chunkwise GLA. In a chunk, b_t = gk_1 + ... + gk_t per channel (<= 0, decreasing) and
    o_t     = (q_t * exp(b_t)) S_n + sum_{s<=t} [sum_k q_tk k_sk exp(b_tk - b_sk)] v_s
    S_{n+1} = diag(exp(b_C)) S_n + sum_s (k_s * exp(b_C - b_s)) v_sᵀ
  The intra-chunk scores use sub-chunks of length c: for t in sub-chunk i and s before it, with r_i
  the step just before sub-chunk i, exp(b_t - b_s) = exp(b_t - b_{r_i}) exp(b_{r_i} - b_s), both
  factors <= 1, so the block is a plain matmul; inside a sub-chunk the decay is applied elementwise.
  In a packed row both score blocks keep only pairs within a document, S_n
  reaches only the continuing document, only the last document writes S_{n+1}, and diag(exp(b_C)) S_n
  is dropped when a document starts inside the chunk (`docs`).
  """
  c = math.gcd(size, SUB_CHUNK)
  ns = size // c
  qc, kc, vc = (common.to_chunks(x, size) for x in (q, k, v))  # [B, H, N, C, K|V]
  cum = jnp.cumsum(common.to_chunks(gk, size), axis=-2)  # b [B, H, N, C, K]
  last = cum[..., -1, :]  # b_C [B, H, N, K]

  update = jnp.einsum("bhnck,bhncv->bhnkv", kc * jnp.exp(last[..., None, :] - cum) * docs.last, vc)
  starts, final = common.scan_chunk_states(s0, jnp.exp(last) * docs.carry, update)
  o = jnp.einsum("bhnck,bhnkv->bhncv", qc * jnp.exp(cum) * docs.first, starts)

  q_s, k_s, cum_s = (x.reshape(*x.shape[:3], ns, c, x.shape[-1]) for x in (qc, kc, cum))  # [B,H,N,ns,c,K]
  # b at the step before each sub-chunk (b_0 = 0 at the chunk start): [B, H, N, ns, K]
  ref = jnp.concatenate([jnp.zeros_like(cum_s[..., :1, 0, :]), cum_s[..., :-1, -1, :]], axis=-2)
  q_ref = q_s * jnp.exp(cum_s - ref[..., None, :])  # q_t exp(b_t - b_r)
  before = jnp.arange(size)[None, :] < (jnp.arange(ns) * c)[:, None]  # s before sub-chunk i [ns, C]
  k_ref = kc[..., None, :, :] * common.masked_exp(  # k_s exp(b_r - b_s) [B, H, N, ns, C, K]
    ref[..., :, None, :] - cum[..., None, :, :], before[:, :, None])
  doc_s = docs.doc.reshape(*docs.doc.shape[:3], ns, c)  # [B|1, 1, N|1, ns, c]
  between = jnp.where(  # [B, H, N, ns, c, C]
    common.same_document(doc_s, docs.doc[..., None, :]), jnp.einsum("bhnitk,bhnisk->bhnits", q_ref, k_ref), 0.0)
  causal = jnp.tril(jnp.ones((c, c), bool))[:, :, None]
  inside = jnp.where(common.same_document(doc_s, doc_s), jnp.einsum(  # [B, H, N, ns, c, c]
    "bhnitk,bhnisk,bhnitsk->bhnits", q_s, k_s,
    common.masked_exp(cum_s[..., :, None, :] - cum_s[..., None, :, :], causal)), 0.0)
  scores = between.reshape(*between.shape[:3], size, size) + jnp.einsum(
    "bhnits,ij->bhnitjs", inside, jnp.eye(ns, dtype=inside.dtype)).reshape(*between.shape[:3], size, size)
  o = o + jnp.einsum("bhncs,bhnsv->bhncv", scores, vc)
  return common.from_chunks(o), final
