"""Plain (ungated) linear attention: S_t = S_{t-1} + k_t v_tᵀ."""

import jax
import jax.numpy as jnp

from layers.linear_attention.ops import common
from layers.linear_attention.ops.chunk_forms import chunk_scalar_gate


def linear_attn(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  scale: float | None = None,
  initial_state: jax.Array | None = None,
  output_final_state: bool = False,
  mode: str = "chunk",
  chunk_size: int = 64,
) -> tuple[jax.Array, jax.Array | None]:
  """Causal linear attention without decay; feature maps on q/k are the caller's job.

  S_t = S_{t-1} + k_t v_tᵀ,  o_t = S_tᵀ (scale q_t),  S_0 = initial_state (zeros if None).
  q, k [B, T, H, K]; v [B, T, H, V]; initial_state [B, H, K, V].
  Returns o [B, T, H, V] in q's dtype and the final state [B, H, K, V] in fp32 (None unless
  output_final_state). mode: "recurrent" (scan, the specification), "chunk" (the scalar-gate
  chunk form of simple_gla without gates), "parallel" (one chunk over the whole sequence).
  """
  return common.run(_recurrent, _chunk, q, k, v, (), scale=scale, initial_state=initial_state,
                      output_final_state=output_final_state, mode=mode, chunk_size=chunk_size)


def _recurrent(q, k, v, s0):
  def step(s, x):  # s [B, H, K, V]
    q_t, k_t, v_t = x
    s = s + k_t[..., :, None] * v_t[..., None, :]
    return s, jnp.einsum("bhk,bhkv->bhv", q_t, s)

  return common.scan_time(step, s0, (q, k, v))


def _chunk(q, k, v, s0, size):
  return chunk_scalar_gate(q, k, v, None, s0, size)
