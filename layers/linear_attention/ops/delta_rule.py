"""Delta rule (DeltaNet): S_t = S_{t-1} + β_t k_t (v_t − S_{t-1}ᵀ k_t)ᵀ."""

import jax
import jax.numpy as jnp

from layers.linear_attention.ops import common, delta_rule_cpu
from layers.linear_attention.ops.chunk_forms import chunk_delta
from layers.linear_attention.pallas import chunk_scan


def delta_rule(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  beta: jax.Array,
  *,
  scale: float | None = None,
  initial_state: jax.Array | None = None,
  output_final_state: bool = False,
  mode: str = "chunk",
  chunk_size: int = 64,
  segment_ids: jax.Array | None = None,
  implementation: str = "xla",
) -> tuple[jax.Array, jax.Array | None]:
  """Delta-rule state update: each step writes v_t at key k_t, replacing what S held there.

  S_t = S_{t-1} + β_t k_t (v_t − S_{t-1}ᵀ k_t)ᵀ,  o_t = S_tᵀ (scale q_t),  S_0 = initial_state.
  q, k [B, T, H, K] (L2-normalise them first: the caller's job); v [B, T, H, V]; beta [B, T, H];
  initial_state [B, H, K, V]; segment_ids [B, T] int (packed documents: a change of id zeroes the
  state before that step, so initial_state seeds only the row's first document and the final state is
  that of its last document).
  Returns o [B, T, H, V] in q's dtype and the final state [B, H, K, V] in fp32 (None unless
  output_final_state). mode: "recurrent" (scan, the specification), "chunk" (the WY/UT chunk form
  of gated_delta_rule without decay), "parallel" (one chunk over the whole sequence).
  implementation: "xla" (the forms above) or "cpu" (mode "recurrent", CPU backend: gated_delta_rule's C++
  kernel with no decay, `delta_rule_cpu`).

  Example (a row holding documents of 3 and 2 tokens; the second starts afresh):
    >>> q = k = jnp.full((1, 5, 2, 4), 0.5); v = jnp.ones((1, 5, 2, 4)); beta = jnp.full((1, 5, 2), 0.5)
    >>> o, state = delta_rule(q, k, v, beta, segment_ids=jnp.array([[0, 0, 0, 1, 1]]), output_final_state=True)
    >>> o.shape, state.shape, bool(jnp.allclose(o[0, 3], o[0, 0]))
    ((1, 5, 2, 4), (1, 2, 4, 4), True)
  """
  b, t, h, _ = q.shape
  common.check_shape("beta", beta, (b, t, h))
  chunk_scan.check_implementation(implementation, mode=mode, chunk_size=chunk_size, dk=q.shape[-1], dv=v.shape[-1],
                                  available=("xla", "cpu"))
  scan = _recurrent_cpu if implementation == "cpu" and delta_rule_cpu.enabled() else _recurrent
  return common.run(scan, _chunk, q, k, v, (beta,), scale=scale, initial_state=initial_state,
                    output_final_state=output_final_state, mode=mode, chunk_size=chunk_size,
                    segment_ids=segment_ids)


def _recurrent(q, k, v, beta, s0, starts):
  def step(s, x):  # s [B, H, K, V]
    q_t, k_t, v_t, b_t = x
    delta = b_t[..., None] * (v_t - jnp.einsum("bhkv,bhk->bhv", s, k_t))
    s = s + k_t[..., :, None] * delta[..., None, :]
    return s, jnp.einsum("bhk,bhkv->bhv", q_t, s)

  return common.scan_time(step, s0, (q, k, v, beta), starts)


def _recurrent_cpu(q, k, v, beta, s0, starts):
  return delta_rule_cpu.recurrent(q, k, v, jnp.zeros_like(beta), beta, s0, starts)


def _chunk(q, k, v, beta, s0, docs, size):
  return chunk_delta(q, k, v, None, beta, s0, docs, size)
