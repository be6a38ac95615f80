"""Gated linear attention (GLA): a log decay per key channel, S_t = diag(exp(gk_t)) S_{t-1} + k_t v_tᵀ."""

import jax
import jax.numpy as jnp

from layers.linear_attention.ops import common
from layers.linear_attention.ops.chunk_forms import chunk_linear
from layers.linear_attention.pallas import chunk_scan
from layers.linear_attention.pallas import gla as pallas_gla


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
  implementation: str = "xla",
) -> tuple[jax.Array, jax.Array | None]:
  """Linear attention with a data-dependent log decay gk_t <= 0 per head, step and key channel.

  S_t = diag(exp(gk_t)) S_{t-1} + k_t v_tᵀ,  o_t = S_tᵀ (scale q_t),  S_0 = initial_state.
  q, k, gk [B, T, H, K]; v [B, T, H, V]; initial_state [B, H, K, V]; segment_ids [B, T] int (packed
  documents: a change of id zeroes the state before that step, so initial_state seeds only the row's
  first document and the final state is that of its last document).
  Returns o [B, T, H, V] in q's dtype and the final state [B, H, K, V] in fp32 (None unless
  output_final_state). mode: "recurrent" (scan, the specification), "chunk" (chunkwise matmuls
  with secondary chunking, the fast form), "parallel" (one chunk over the whole sequence).
  implementation: "xla" (the forms above) or "pallas" (mode "chunk" only: the Pallas kernel of
  layers/linear_attention/pallas/gla.py, Triton on GPU, Mosaic on TPU, interpret mode on CPU; chunk_size a
  multiple of 16, K and V powers of two >= 16). Tested on CPU in interpret mode (outputs, final state,
  gradients, packed rows, golden vectors) and lowered with jax.export for "cuda" and "tpu"; never run on a GPU/TPU.

  Example (a row holding documents of 3 and 2 tokens; the second starts afresh):
    >>> q = k = jnp.ones((1, 5, 2, 8)); v = jnp.ones((1, 5, 2, 4)); gk = jnp.full((1, 5, 2, 8), -0.5)
    >>> o, state = gla(q, k, v, gk, segment_ids=jnp.array([[0, 0, 0, 1, 1]]), output_final_state=True)
    >>> o.shape, state.shape, bool(jnp.allclose(o[0, 3], o[0, 0]))
    ((1, 5, 2, 4), (1, 2, 8, 4), True)
  """
  common.check_shape("gk", gk, k.shape)
  chunk_scan.check_implementation(implementation, mode=mode, chunk_size=chunk_size, dk=q.shape[-1], dv=v.shape[-1])
  chunk = pallas_gla.chunk if implementation == "pallas" else _chunk
  return common.run(_recurrent, chunk, q, k, v, (gk,), scale=scale, initial_state=initial_state,
                    output_final_state=output_final_state, mode=mode, chunk_size=chunk_size,
                    segment_ids=segment_ids)


def _recurrent(q, k, v, gk, s0, starts):
  def step(s, x):  # s [B, H, K, V]
    q_t, k_t, v_t, g_t = x
    s = jnp.exp(g_t)[..., None] * s + k_t[..., :, None] * v_t[..., None, :]
    return s, jnp.einsum("bhk,bhkv->bhv", q_t, s)

  return common.scan_time(step, s0, (q, k, v, gk), starts)


def _chunk(q, k, v, gk, s0, docs, size):
  return chunk_linear(q, k, v, gk, s0, docs, size)
