"""Scalar-gated linear attention (RetNet / Mamba-2 style decay): S_t = exp(g_t) S_{t-1} + k_t v_tᵀ."""

import jax
import jax.numpy as jnp

from layers.linear_attention import op_utils


def simple_gla(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  g: jax.Array,
  *,
  scale: float | None = None,
  initial_state: jax.Array | None = None,
  output_final_state: bool = False,
  mode: str = "chunk",
  chunk_size: int = 64,
) -> tuple[jax.Array, jax.Array | None]:
  """Linear attention with one log decay g_t <= 0 per head and step.

  S_t = exp(g_t) S_{t-1} + k_t v_tᵀ,  o_t = S_tᵀ (scale q_t),  S_0 = initial_state (zeros if None).
  q, k [B, T, H, K]; v [B, T, H, V]; g [B, T, H]; initial_state [B, H, K, V].
  Returns o [B, T, H, V] in q's dtype and the final state [B, H, K, V] in fp32 (None unless
  output_final_state). mode: "recurrent" (scan over steps, the specification), "chunk"
  (chunkwise-parallel matmuls, the fast form), "parallel" (one chunk over the whole sequence).
  """
  b, t, h, _ = q.shape
  op_utils.check_shape("g", g, (b, t, h))
  return op_utils.run(_recurrent, chunk_scalar_gate, q, k, v, (g,), scale=scale, initial_state=initial_state,
                      output_final_state=output_final_state, mode=mode, chunk_size=chunk_size)


def _recurrent(q, k, v, g, s0):
  def step(s, x):  # s [B, H, K, V]
    q_t, k_t, v_t, g_t = x
    s = jnp.exp(g_t)[..., None, None] * s + k_t[..., :, None] * v_t[..., None, :]
    return s, jnp.einsum("bhk,bhkv->bhv", q_t, s)

  return op_utils.scan_time(step, s0, (q, k, v, g))


def chunk_scalar_gate(
  q: jax.Array, k: jax.Array, v: jax.Array, g: jax.Array | None, s0: jax.Array, size: int
) -> tuple[jax.Array, jax.Array]:
  """Chunkwise form for a scalar log gate per step (g None: no decay, plain linear attention).

  q, k [B, T, H, K], v [B, T, H, V], g [B, T, H] fp32 with T a multiple of `size`.
  Within a chunk, b_t = g_1 + ... + g_t (local cumsum, <= 0 and decreasing) and
    o_t     = exp(b_t) q_t S_n + sum_{s<=t} exp(b_t - b_s) (q_t . k_s) v_s
    S_{n+1} = exp(b_C) S_n + sum_s exp(b_C - b_s) k_s v_sᵀ
  Every exponent is <= 0, so nothing overflows whatever the decay.
  """
  qc, kc, vc = (op_utils.to_chunks(x, size) for x in (q, k, v))  # [B, H, N, C, K|V]
  causal = jnp.tril(jnp.ones((size, size), bool))
  if g is None:
    decay_qk, q_in, k_out, chunk_decay = causal.astype(q.dtype), qc, kc, None
  else:
    cum = jnp.cumsum(op_utils.to_chunks(g, size), axis=-1)  # [B, H, N, C]
    last = cum[..., -1:]  # [B, H, N, 1]
    decay_qk = op_utils.masked_exp(cum[..., :, None] - cum[..., None, :], causal)  # [B, H, N, C, C]
    q_in = qc * jnp.exp(cum)[..., None]
    k_out = kc * jnp.exp(last - cum)[..., None]
    chunk_decay = jnp.exp(last)  # [B, H, N, 1]
  update = jnp.einsum("bhnck,bhncv->bhnkv", k_out, vc)  # sum_s exp(b_C - b_s) k_s v_sᵀ
  starts, final = op_utils.scan_chunk_states(s0, chunk_decay, update)
  scores = jnp.einsum("bhnck,bhnsk->bhncs", qc, kc) * decay_qk  # masked, decayed q_t . k_s
  o = jnp.einsum("bhncs,bhnsv->bhncv", scores, vc) + jnp.einsum("bhnck,bhnkv->bhncv", q_in, starts)
  return op_utils.from_chunks(o), final
