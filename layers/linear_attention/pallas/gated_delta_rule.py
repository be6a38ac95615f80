"""Chunk gated delta rule as a Pallas kernel (forward and backward): the step of one chunk, run by chunk_scan.py."""

import math

import jax
import jax.numpy as jnp

from layers.linear_attention.ops import common
from layers.linear_attention.pallas import chunk_scan as cs

# Longest kernel chunk: the kernel chunk is gcd(size, MAX_CHUNK), a power of two (Triton block shapes).
MAX_CHUNK = 64


@jax.custom_jvp
def unit_lower_inverse(a: jax.Array) -> jax.Array:
  """(I + A)⁻¹ for strictly lower-triangular A [C, C], by forward substitution over rows, in-kernel form.

  Row i of the inverse is e_i − A[i, :] (I + A)⁻¹; rows are read and written through masks (no dynamic
  indexing, no 1-D vectors). The derivative is closed form (two matmuls), so the loop is never differentiated;
  it is a custom JVP (not VJP) because Pallas Triton lowers custom_jvp_call but not custom_vjp_call.
  """
  row, col = cs.index_grid(a.shape[0])

  def body(i, inv):
    a_i = cs.to_column(jnp.sum(jnp.where(row == i, a, 0.0), axis=0, keepdims=True))  # A[i, :] as [C, 1]
    new = jnp.where(col == i, 1.0, 0.0) - jnp.sum(a_i * inv, axis=0, keepdims=True)  # [1, C]
    return jnp.where(row == i, new, inv)

  return jax.lax.fori_loop(0, a.shape[0], body, jnp.zeros_like(a))


@unit_lower_inverse.defjvp
def _inverse_jvp(primals, tangents):
  # d(M⁻¹) = −M⁻¹ dM M⁻¹ (linear in dM, so its transpose is matmuls too).
  inv = unit_lower_inverse(*primals)
  return inv, -cs.dot(cs.dot(inv, tangents[0]), inv)


def step(
  s: jax.Array, xs: tuple[jax.Array, ...], masks: tuple[jax.Array, ...]
) -> tuple[jax.Array, jax.Array]:
  """One chunk of the gated delta rule: the WY/UT form (ops/chunk_forms.py `chunk_delta`) for one chunk of one row.

  s [K, V]; xs = (q, k [C, K], v [C, V], g, beta [C, 1]); masks = (doc, first [C, 1]). With b = cumsum(g) and
  A_ts = β_t (k_t · k_s) exp(b_t − b_s) for s < t in one document:
    δ = (I + A)⁻¹ diag(β) V − (I + A)⁻¹ diag(β) (K ⊙ exp(b)) S
    o_t = (q_t exp(b_t)) S + sum_{s<=t, same doc} (q_t · k_s) exp(b_t − b_s) δ_s
    S_next = exp(b_C) S + sum_s k_s exp(b_C − b_s) δ_sᵀ      (every exponent <= 0)
  Returns (o [C, V], S_next [K, V]).
  """
  q, k, v, g, beta = xs
  same, first, last, carry = cs.chunk_documents(*masks)
  row, col = cs.index_grid(q.shape[0])
  b = jnp.sum(jnp.where(row >= col, cs.to_row(g), 0.0), axis=1, keepdims=True)  # cumsum over the chunk [C, 1]
  b_last = jnp.sum(g, axis=0, keepdims=True)  # b_C [1, 1]
  decay = cs.masked_exp(b - cs.to_row(b), (row >= col) & same)  # exp(b_t − b_s) [C, C]
  a = jnp.where(row > col, beta * cs.dot(k, k, (1, 1)) * decay, 0.0)
  inv = unit_lower_inverse(a)
  u = cs.dot(inv, beta * v)
  w = cs.dot(inv, beta * k * jnp.exp(b) * first)
  delta = u - cs.dot(w, s)  # [C, V]
  o = cs.dot(q * jnp.exp(b) * first, s) + cs.dot(cs.dot(q, k, (1, 1)) * decay, delta)
  s_next = jnp.exp(b_last) * carry * s + cs.dot(k * jnp.exp(b_last - b) * last, delta, (0, 0))
  return o, s_next


def chunk(
  q: jax.Array, k: jax.Array, v: jax.Array, g: jax.Array, beta: jax.Array, s0: jax.Array,
  docs: common.ChunkDocuments, size: int, *, backend: str | None = None, interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """The Pallas form of `gated_delta_rule`'s chunk callback (same contract as chunk_forms.py `chunk_delta`).

  q, k [B, T, H, K], v [B, T, H, V], g, beta [B, T, H] fp32 with T a multiple of `size` (a multiple of 16);
  s0 [B, H, K, V]. Returns (o [B, T, H, V], final state [B, H, K, V]). The kernel chunk is gcd(size, 64).
  """
  b, t, h, _ = q.shape
  c = math.gcd(size, MAX_CHUNK)
  masks = cs.document_masks(docs, b, t, h, c)
  o, final = cs.chunk_scan(step, tuple(cs.to_rows(x) for x in (q, k, v, g, beta)), masks,
                           s0.reshape(b * h, *s0.shape[2:]), chunk=c, backend=backend, interpret=interpret)
  return cs.from_rows(o, h), final.reshape(s0.shape)
