"""Chunk GLA as a Pallas kernel (forward and backward): the step of one chunk, run by chunk_scan.py."""

import jax
import jax.numpy as jnp

from layers.linear_attention.ops import common
from layers.linear_attention.pallas import chunk_scan as cs

# Kernel chunk length. The per-channel decay inside a chunk is applied elementwise on a [C, C, K] block, so C is
# kept small (the reference library's fused-chunk GLA kernel also steps through chunks of 16).
CHUNK = 16


def step(
  s: jax.Array, xs: tuple[jax.Array, ...], masks: tuple[jax.Array, ...]
) -> tuple[jax.Array, jax.Array]:
  """One chunk of GLA: the XLA chunk form (ops/gla.py `_chunk`) for a single chunk of a single row.

  s [K, V]; xs = (q, k [C, K], v [C, V], gk [C, K]); masks = (doc, first [C, 1]). b = cumsum(gk) (<= 0, decreasing)
    o_t    = (q_t ⊙ exp(b_t)) S + sum_{s<=t, same doc} [sum_k q_tk k_sk exp(b_tk − b_sk)] v_s
    S_next = diag(exp(b_C)) S + sum_s (k_s ⊙ exp(b_C − b_s)) v_sᵀ      (every exponent <= 0)
  Returns (o [C, V], S_next [K, V]).
  """
  q, k, v, gk = xs
  same, first, last, carry = cs.chunk_documents(*masks)
  row, col = cs.index_grid(q.shape[0])
  b = cs.dot((row >= col).astype(jnp.float32), gk)  # cumsum over the chunk [C, K]
  b_last = jnp.sum(gk, axis=0, keepdims=True)  # b_C [1, K]
  keep = ((row >= col) & same)[:, :, None]  # [C, C, 1]
  scores = jnp.sum(q[:, None, :] * k[None, :, :] * cs.masked_exp(b[:, None, :] - b[None, :, :], keep), axis=-1)
  o = cs.dot(q * jnp.exp(b) * first, s) + cs.dot(scores, v)
  s_next = cs.to_column(jnp.exp(b_last)) * carry * s + cs.dot(k * jnp.exp(b_last - b) * last, v, (0, 0))
  return o, s_next


def chunk(
  q: jax.Array, k: jax.Array, v: jax.Array, gk: jax.Array, s0: jax.Array, docs: common.ChunkDocuments, size: int,
  *, backend: str | None = None, interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """The Pallas form of `gla`'s chunk callback (same contract as ops/gla.py `_chunk`).

  q, k, gk [B, T, H, K], v [B, T, H, V] fp32 with T a multiple of `size` (a multiple of 16); s0 [B, H, K, V].
  Returns (o [B, T, H, V], final state [B, H, K, V]). The kernel steps through chunks of CHUNK = 16.
  """
  b, t, h, _ = q.shape
  masks = cs.document_masks(docs, b, t, h, CHUNK)
  o, final = cs.chunk_scan(step, tuple(cs.to_rows(x) for x in (q, k, v, gk)), masks,
                           s0.reshape(b * h, *s0.shape[2:]), chunk=CHUNK, backend=backend, interpret=interpret)
  return cs.from_rows(o, h), final.reshape(s0.shape)
