"""Kimi Delta Attention (KDA): the gated delta rule with a log decay per key channel,
S_t = (I − β_t k_t k_tᵀ) diag(exp(g_t)) S_{t-1} + β_t k_t v_tᵀ."""

import jax

from layers.linear_attention.ops import common, delta_rule_cpu
from layers.linear_attention.ops.chunk_forms import chunk_delta
from layers.linear_attention.ops.gated_delta_rule import recurrent
from layers.linear_attention.pallas import chunk_scan


def kda(
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
  """Delta-rule state update with a data-dependent log decay g_t <= 0 per head, step and key channel
  (Kimi Team, "Kimi Linear: An Expressive, Efficient Attention Architecture", 2025).

  S'_t = diag(exp(g_t)) S_{t-1},  S_t = S'_t + β_t k_t (v_t − S'_tᵀ k_t)ᵀ,  o_t = S_tᵀ (scale q_t),
  S_0 = initial_state. With g_t equal across channels this is gated_delta_rule; the per-channel decay is
  GLA's, so KDA forgets channel by channel what the delta rule writes.
  q, k, g [B, T, H, K] (L2-normalise q, k first: the caller's job); v [B, T, H, V]; beta [B, T, H];
  initial_state [B, H, K, V]; segment_ids [B, T] int (packed documents: a change of id zeroes the state
  before that step, so initial_state seeds only the row's first document and the final state is that of
  its last document). Computed in fp32 whatever the input dtype.
  Returns o [B, T, H, V] in q's dtype and the final state [B, H, K, V] in fp32 (None unless
  output_final_state). mode: "recurrent" (scan, the specification shared with gated_delta_rule), "chunk"
  (the WY/UT chunk form of the gated delta rule with its decayed k.k and q.k scores computed per channel
  in sub-chunks as GLA does, so every exponent is <= 0: the fast form for training), "parallel" (one
  chunk over the whole sequence). implementation: "xla" (the forms above) or "cpu" (mode "recurrent", CPU
  backend: the C++ kernel of the recurrence, `delta_rule_cpu`, which takes per-channel decays).

  Example (a row holding documents of 3 and 2 tokens; the second starts afresh):
    >>> q = k = jnp.full((1, 5, 2, 4), 0.5); v = jnp.ones((1, 5, 2, 4))
    >>> g, beta = jnp.full((1, 5, 2, 4), -0.5), jnp.full((1, 5, 2), 0.5)
    >>> o, state = kda(q, k, v, g, beta, segment_ids=jnp.array([[0, 0, 0, 1, 1]]), output_final_state=True)
    >>> o.shape, state.shape, bool(jnp.allclose(o[0, 3], o[0, 0]))
    ((1, 5, 2, 4), (1, 2, 4, 4), True)
  """
  b, t, h, _ = q.shape
  common.check_shape("g", g, k.shape)
  common.check_shape("beta", beta, (b, t, h))
  chunk_scan.check_implementation(implementation, mode=mode, chunk_size=chunk_size, dk=q.shape[-1], dv=v.shape[-1],
                                  available=("xla", "cpu"))
  scan = delta_rule_cpu.recurrent if implementation == "cpu" and delta_rule_cpu.enabled() else recurrent
  return common.run(scan, chunk_delta, q, k, v, (g, beta), scale=scale, initial_state=initial_state,
                    output_final_state=output_final_state, mode=mode, chunk_size=chunk_size,
                    segment_ids=segment_ids)
