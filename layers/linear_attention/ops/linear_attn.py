"""Plain (ungated) linear attention: S_t = S_{t-1} + k_t v_tᵀ."""

import jax
import jax.numpy as jnp

from layers.linear_attention.ops import common
from layers.linear_attention.ops.chunk_forms import chunk_linear


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
  segment_ids: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array | None]:
  """Causal linear attention without decay; feature maps on q/k are the caller's job.

  S_t = S_{t-1} + k_t v_tᵀ,  o_t = S_tᵀ (scale q_t),  S_0 = initial_state (zeros if None).
  q, k [B, T, H, K]; v [B, T, H, V]; initial_state [B, H, K, V]; segment_ids [B, T] int (packed
  documents: a change of id zeroes the state before that step, so initial_state seeds only the row's
  first document and the final state is that of its last document).
  Returns o [B, T, H, V] in q's dtype and the final state [B, H, K, V] in fp32 (None unless
  output_final_state). mode: "recurrent" (scan, the specification), "chunk" (the chunk form
  of simple_gla without gates), "parallel" (one chunk over the whole sequence).

  Example (a row holding documents of 3 and 2 tokens; the second starts afresh):
    >>> q = k = jnp.ones((1, 5, 2, 8)); v = jnp.ones((1, 5, 2, 4))
    >>> o, state = linear_attn(q, k, v, segment_ids=jnp.array([[0, 0, 0, 1, 1]]), output_final_state=True)
    >>> o.shape, state.shape, bool(jnp.allclose(o[0, 3], o[0, 0]))
    ((1, 5, 2, 4), (1, 2, 8, 4), True)
  """
  return common.run(_recurrent, _chunk, q, k, v, (), scale=scale, initial_state=initial_state,
                    output_final_state=output_final_state, mode=mode, chunk_size=chunk_size,
                    segment_ids=segment_ids)


def _recurrent(q, k, v, s0, starts):
  def step(s, x):  # s [B, H, K, V]
    q_t, k_t, v_t = x
    s = s + k_t[..., :, None] * v_t[..., None, :]
    return s, jnp.einsum("bhk,bhkv->bhv", q_t, s)

  return common.scan_time(step, s0, (q, k, v), starts)


def _chunk(q, k, v, s0, docs, size):
  return chunk_linear(q, k, v, None, s0, docs, size)
