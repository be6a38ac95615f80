"""Gated DeltaProduct: n delta-rule (generalised Householder) steps per token, one scalar decay per token."""

import jax
import jax.numpy as jnp

from layers import segments
from layers.linear_attention.ops.gated_delta_rule import gated_delta_rule


def gated_delta_product(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  g: jax.Array,
  beta: jax.Array,
  *,
  num_householder: int,
  scale: float | None = None,
  initial_state: jax.Array | None = None,
  output_final_state: bool = False,
  mode: str = "chunk",
  chunk_size: int = 64,
  segment_ids: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array | None]:
  """n = num_householder delta-rule steps per token, each with its own key, value and β; the decay
  exp(g_t) applies once per token (Siems et al., "DeltaProduct: Improving State-Tracking in Linear RNNs
  via Householder Products", 2025). n = 1 is gated_delta_rule.

  Per token t:  S ← exp(g_t) S;  for j = 0..n-1:  S ← S + β_{t,j} k_{t,j} (v_{t,j} − Sᵀ k_{t,j})ᵀ;
  o_t = Sᵀ (scale q_t);  S_0 = initial_state. The transition is exp(g_t) Π_j (I − β_{t,j} k_{t,j} k_{t,j}ᵀ),
  a product of generalised Householder matrices (β in [0, 2] gives negative eigenvalues).
  q [B, T, H, K]; g [B, T, H] log decay <= 0; k [B, T·n, H, K] and v [B, T·n, H, V] (L2-normalise k and
  q first: the caller's job), beta [B, T·n, H], with step j of token t at index t·n + j; initial_state
  [B, H, K, V]; segment_ids [B, T] int (packed documents, per token: a change of id zeroes the state before
  that token, so initial_state seeds only the row's first document and the final state is that of its last).
  Computed in fp32 whatever the input dtype; returns o [B, T, H, V] in q's dtype and the final state
  [B, H, K, V] in fp32 (None unless output_final_state).

  How: this is gated_delta_rule over the T·n interleaved steps with the gate placed on each token's first
  step (g' = g_t at t·n, 0 elsewhere: exp(0) decays nothing), q placed on its last step (q' = q_t at
  t·n + n − 1, 0 elsewhere), every token's id repeated n times, and o read at the last steps. So every mode
  of gated_delta_rule serves: "recurrent" (scan over the T·n steps, the specification), "chunk" (WY/UT
  chunk form; chunk_size counts interleaved steps, chunk_size / n tokens per chunk), "parallel". The zero
  queries cost n× the output matmuls of one step per token; the state work is what n steps need anyway.

  Example (two Householder steps per token; a row holding documents of 3 and 2 tokens):
    >>> q = jnp.full((1, 5, 2, 4), 0.5); k = jnp.full((1, 10, 2, 4), 0.5); v = jnp.ones((1, 10, 2, 4))
    >>> g, beta = jnp.full((1, 5, 2), -0.5), jnp.full((1, 10, 2), 0.5)
    >>> o, state = gated_delta_product(q, k, v, g, beta, num_householder=2, output_final_state=True,
    ...                                segment_ids=jnp.array([[0, 0, 0, 1, 1]]))
    >>> o.shape, state.shape, bool(jnp.allclose(o[0, 3], o[0, 0]))
    ((1, 5, 2, 4), (1, 2, 4, 4), True)
  """
  n = num_householder
  if not isinstance(n, int) or n < 1:
    raise ValueError(f"num_householder must be a positive int (delta-rule steps per token), got {n!r}")
  if q.ndim != 4:
    raise ValueError(f"q must be [B, T, H, K], got shape {tuple(q.shape)}")
  b, t, h, dk = q.shape
  for name, x, shape in (("k", k, (b, t * n, h, dk)), ("v", v, (b, t * n, h, v.shape[-1])),
                         ("beta", beta, (b, t * n, h)), ("g", g, (b, t, h))):
    if tuple(x.shape) != shape:
      raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {shape}: k, v, beta carry "
                       f"num_householder={n} steps per token along time (step j of token t at t*n + j)")
  q_steps = jnp.zeros((b, t, n, h, dk), q.dtype).at[:, :, -1].set(q).reshape(b, t * n, h, dk)
  g_steps = jnp.zeros((b, t, n, h), g.dtype).at[:, :, 0].set(g).reshape(b, t * n, h)
  ids = None
  if segment_ids is not None:
    segments.check_segment_ids(segment_ids, (b, t))
    ids = jnp.repeat(segment_ids, n, axis=1)  # [B, T·n]: a token's steps share its id
  o, state = gated_delta_rule(q_steps, k, v, g_steps, beta, scale=scale, initial_state=initial_state,
                              output_final_state=output_final_state, mode=mode, chunk_size=chunk_size,
                              segment_ids=ids)
  return o[:, n - 1::n], state

