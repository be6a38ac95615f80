"""Gated delta rule (Gated DeltaNet): S_t = exp(g_t) S_{t-1} + β_t k_t (v_t − exp(g_t) S_{t-1}ᵀ k_t)ᵀ."""

import jax
import jax.numpy as jnp

from layers.linear_attention.ops import common, delta_rule_cpu
from layers.linear_attention.ops.chunk_forms import chunk_delta
from layers.linear_attention.pallas import chunk_scan
from layers.linear_attention.pallas import gated_delta_rule as pallas_gated_delta_rule


def gated_delta_rule(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  g: jax.Array,
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
  """Delta-rule state update with a scalar log decay g_t <= 0 per head and step.

  S_t = exp(g_t) S_{t-1} + β_t k_t (v_t − exp(g_t) S_{t-1}ᵀ k_t)ᵀ,  o_t = S_tᵀ (scale q_t).
  q, k [B, T, H, K] (L2-normalise them first: the caller's job); v [B, T, H, V];
  g, beta [B, T, H]; initial_state [B, H, K, V]; segment_ids [B, T] int (packed documents: a change
  of id zeroes the state before that step, so initial_state seeds only the row's first document and
  the final state is that of its last document).
  Returns o [B, T, H, V] in q's dtype and the final state [B, H, K, V] in fp32 (None unless
  output_final_state). mode: "recurrent" (scan, the specification), "chunk" (WY/UT transform with
  a triangular solve per chunk, the fast form), "parallel" (one chunk over the whole sequence).
  implementation: "xla" (the forms above) or "pallas" (mode "chunk" only: the Pallas kernel of
  layers/linear_attention/pallas/gated_delta_rule.py, Triton on GPU, Mosaic on TPU, interpret mode on CPU;
  chunk_size a multiple of 16, K and V powers of two >= 16). Tested on CPU in interpret mode (outputs, final
  state, gradients, packed rows, golden vectors) and lowered with jax.export for "cuda" and "tpu"; never run on a
  GPU/TPU. Or "cpu" (mode "recurrent" only, CPU backend: the recurrent form and its backward as C++ kernels,
  `delta_rule_cpu`, the fastest form on a CPU; the XLA recurrent form, with a warning, where no C++ compiler
  builds them).

  Example (a row holding documents of 3 and 2 tokens; the second starts afresh):
    >>> q = k = jnp.full((1, 5, 2, 4), 0.5); v = jnp.ones((1, 5, 2, 4))
    >>> g, beta = jnp.full((1, 5, 2), -0.5), jnp.full((1, 5, 2), 0.5)
    >>> o, state = gated_delta_rule(q, k, v, g, beta, segment_ids=jnp.array([[0, 0, 0, 1, 1]]),
    ...                             output_final_state=True)
    >>> o.shape, state.shape, bool(jnp.allclose(o[0, 3], o[0, 0]))
    ((1, 5, 2, 4), (1, 2, 4, 4), True)
  """
  b, t, h, _ = q.shape
  common.check_shape("g", g, (b, t, h))
  common.check_shape("beta", beta, (b, t, h))
  chunk_scan.check_implementation(implementation, mode=mode, chunk_size=chunk_size, dk=q.shape[-1], dv=v.shape[-1],
                                  available=("xla", "pallas", "cpu"))
  chunk = pallas_gated_delta_rule.chunk if implementation == "pallas" else chunk_delta
  scan = delta_rule_cpu.recurrent if implementation == "cpu" and delta_rule_cpu.enabled() else recurrent
  return common.run(scan, chunk, q, k, v, (g, beta), scale=scale, initial_state=initial_state,
                    output_final_state=output_final_state, mode=mode, chunk_size=chunk_size,
                    segment_ids=segment_ids)


def recurrent(q, k, v, g, beta, s0, starts):
  """The specification, a scan over steps; g [B, T, H] (one decay per head) or [B, T, H, K] (per key channel,
  kda): S' = diag(exp(g_t)) S, then S' + β_t k_t (v_t − S'ᵀ k_t)ᵀ."""
  def step(s, x):  # s [B, H, K, V]
    q_t, k_t, v_t, g_t, b_t = x
    s = jnp.exp(g_t).reshape(*g_t.shape, *(1,) * (s.ndim - g_t.ndim)) * s  # decay [B, H, 1|K, 1]
    delta = b_t[..., None] * (v_t - jnp.einsum("bhkv,bhk->bhv", s, k_t))
    s = s + k_t[..., :, None] * delta[..., None, :]
    return s, jnp.einsum("bhk,bhkv->bhv", q_t, s)

  return common.scan_time(step, s0, (q, k, v, g, beta), starts)
