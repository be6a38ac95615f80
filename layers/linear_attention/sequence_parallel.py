"""Linear-attention ops with the time axis split over the "sequence" mesh axis (LASP-2, exact).

Every op in layers.linear_attention.ops is, per batch row and head, a recurrence on a state S [K, V]
  S_t = A_t S_{t-1} + k_t w_tᵀ,  o_t = S_tᵀ (scale q_t)
whose transition A_t [K, K] depends on k, the gates and beta but not on v, and whose write w_t is
linear in v (column j of S only ever sees column j of v):
  linear_attn A_t = I                 simple_gla A_t = exp(g_t) I      gla A_t = diag(exp(gk_t))
  delta_rule  A_t = I − β_t k_t k_tᵀ  gated_delta_rule A_t = exp(g_t) (I − β_t k_t k_tᵀ)
  kda A_t = (I − β_t k_t k_tᵀ) diag(exp(g_t))   gated_delta_product A_t = exp(g_t) Π_j (I − β_tj k_tj k_tjᵀ)
  dplr_delta_rule A_t = diag(exp(gk_t)) + b_t a_tᵀ
and a document start at step t makes A_t = 0. So on slice r of the sequence (L = T / R steps), with
S_in the state entering it, M_t = A_t ... A_first and o⁰, S⁰ the outputs and states from a zero start,
  o_t = o⁰_t + S_inᵀ P_t  with  P_t = M_tᵀ (scale q_t) [K],    S_out = M S_in + b  with  M = M_last, b = S⁰_last,
and the slices compose as affine maps: S_in(0) = initial_state, S_in(r) = c_r S_out(r − 1), c_r = 0 when
slice r begins with a new document (layers.sequence_parallel.boundaries), else 1.

Each shard runs the op once on its slice, computing o⁰ and b and (M, P) in one of two forms:
  diagonal  (linear_attn, simple_gla, gla; LASP-2's form): M_t = diag(exp(c_t)), c_t the cumulative log
            decay inside the slice (0 for linear_attn), zero from the slice's first document start on;
            P_t = exp(c_t) ⊙ scale q_t. Both from the gates directly, the op on [v] as is.
  dense     (delta_rule, gated_delta_rule, kda, gated_delta_product, dplr_delta_rule and any op added later):
            the op runs once on the value dim augmented by K columns, v' = [v | 0] from initial_state [0 | I_K]:
            the extra columns of the state evolve as M_t I = M_t and those of the output are M_tᵀ (scale q_t) = P_t.
One all-gather of the slices' summaries [b | M] (M as its diagonal column in the diagonal form; with
documents, a second one of three int32 per row and slice) lets every shard fold them into its own S_in
(redundantly: R small products), then o_t += S_inᵀ P_t.

Cost per layer (B rows, H heads, R slices): communicated R·B·H·K·(V + 1) floats (diagonal) or
R·B·H·K·(V + K) (dense) in the forward and the same again in the backward (the gather's transpose, a
reduce-scatter): independent of T. Compute: the op on T / R steps (dense: with V + K value columns, i.e.
(V + K) / V times the op's V-proportional work, 2x for K = V), the fold (R·K·V diagonal, R·K²·V dense per
row and head) and 2·K·V per token for S_inᵀ P_t. Gradients by autodiff through the shard_map (exact).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from layers import segments
from layers import sequence_parallel as sp
from layers.linear_attention.ops import gla, linear_attn, simple_gla

F32 = jnp.float32

# Ops with a diagonal transition: their per-step log decay [B, T, H, K or 1] from their gate arguments.
DIAGONAL: dict[Callable, Callable] = {
  linear_attn: lambda: None,
  simple_gla: lambda g: g[..., None],
  gla: lambda gk: gk,
}


def recurrence(
  op: Callable,
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *gates: jax.Array,
  scale: float | None = None,
  initial_state: jax.Array | None = None,
  output_final_state: bool = False,
  mode: str = "chunk",
  chunk_size: int = 64,
  segment_ids: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array | None]:
  """op(q, k, v, *gates, ...) with T split over the "sequence" mesh axis when the active mesh has one (else
  op itself): same arguments, same results.

  op: a linear-attention op, or a functools.partial of one with its own options (e.g. num_householder).
  q, k [B, T, H, K]; v [B, T, H, V]; gates [B, T, H, ...] as `op` takes them (k, v and gates may have n steps
  per token, [B, T·n, ...], as gated_delta_product's); initial_state [B, H, K, V]
  (seeds the row's first document); segment_ids [B, T]. Returns o [B, T, H, V] in q's dtype (split over
  "sequence" like q) and the final state [B, H, K, V] fp32 (None unless output_final_state).
  T must be a multiple of the axis size; each slice is padded to the chunk size by the op itself.

  Example (4 shards of 8 tokens each, a document crossing two shard boundaries):
    >>> mesh = jax.make_mesh((4,), ("sequence",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:4])
    >>> q = k = jnp.full((1, 32, 2, 4), 0.5); v = jnp.ones((1, 32, 2, 4)); beta = jnp.full((1, 32, 2), 0.5)
    >>> seg = jnp.repeat(jnp.array([[0, 1, 2]]), jnp.array([5, 20, 7]), axis=1, total_repeat_length=32)
    >>> with jax.set_mesh(mesh):
    ...   o, _ = jax.jit(recurrence, static_argnums=0)(delta_rule, q, k, v, beta, segment_ids=seg)
    >>> bool(jnp.allclose(o, jax.jit(delta_rule)(q, k, v, beta, segment_ids=seg)[0], atol=1e-5))
    True
  """
  kw = dict(scale=scale, mode=mode, chunk_size=chunk_size)
  b, t, h, dk = q.shape
  where = sp.split(b)
  if where is None:
    return op(q, k, v, *gates, initial_state=initial_state, output_final_state=output_final_state,
              segment_ids=segment_ids, **kw)
  dv = v.shape[-1]
  sp.check_length(t, where.mesh, getattr(op, "__name__", None) or op.func.__name__)  # op or a partial of one
  kw["scale"] = dk**-0.5 if scale is None else scale
  s0 = jnp.zeros((b, h, dk, dv), F32) if initial_state is None else initial_state.astype(F32)
  diagonal = DIAGONAL.get(op)

  def body(q, k, v, gates, s0, segment_ids):
    q32 = q.astype(F32)
    if diagonal is None:
      o, p, summary = _dense(op, q32, k, v, gates, segment_ids, kw)
    else:
      o, p, summary = _diagonal(op, diagonal, q32, k, v, gates, segment_ids, kw)
    summaries = jax.lax.all_gather(summary, sp.AXIS)  # [R, B, H, K, V + (1 or K)]: the one all-gather
    keep = (jnp.ones(summaries.shape[:2], bool) if segment_ids is None
            else ~sp.boundaries(segment_ids).starts)  # [R, B]
    enters, final = _fold(sp.varying(s0), summaries, keep, diagonal is not None)
    s_in = enters[jax.lax.axis_index(sp.AXIS)]  # [B, H, K, V]
    o = o + jnp.einsum("bthk,bhkv->bthv", p, s_in)
    return o.astype(q.dtype), final[None]

  # Every slice folds the same final state; the last slice's copy is returned (and receives its gradient).
  time = where.time
  o, finals = sp.shard_map(body, where, (time, time, time, time, where.batch, time),
                           (time, where.slices))(q, k, v, gates, s0, segment_ids)
  return o, (finals[-1] if output_final_state else None)


def _diagonal(op, log_decay, q, k, v, gates, segment_ids, kw):
  """(o⁰ [B, L, H, V], P [B, L, H, K], [b | M] [B, H, K, V + 1]) for an op whose transition is diagonal
  (M's diagonal as a column; its log decay from `log_decay`)."""
  zero = sp.varying(jnp.zeros((*q.shape[:1], *q.shape[2:], v.shape[-1]), F32))  # [B, H, K, V]
  o, last = op(q, k, v, *gates, initial_state=zero, output_final_state=True, segment_ids=segment_ids, **kw)
  decay = log_decay(*gates)
  cum = jnp.zeros((*q.shape[:3], 1), F32) if decay is None else jnp.cumsum(decay.astype(F32), axis=1)
  first = (jnp.ones(q.shape[:2], F32) if segment_ids is None
           else (segments.document_index(segment_ids) == 0).astype(F32))[..., None, None]  # [B, L, 1, 1]
  p = kw["scale"] * q * jnp.exp(cum) * first  # [B, L, H, K]
  m = jnp.broadcast_to((jnp.exp(cum[:, -1]) * first[:, -1])[..., None], (*last.shape[:-1], 1))  # [B, H, K, 1]
  return o.astype(F32), p, jnp.concatenate([last, m], axis=-1)


def _dense(op, q, k, v, gates, segment_ids, kw):
  """(o⁰ [B, L, H, V], P [B, L, H, K], [b | M] [B, H, K, V + K]) from one op call on [v | 0] from the
  initial state [0 | I]."""
  b, _, h, dk = q.shape
  dv = v.shape[-1]
  eye = jnp.broadcast_to(jnp.eye(dk, dtype=F32), (b, h, dk, dk))
  s0 = sp.varying(jnp.concatenate([jnp.zeros((b, h, dk, dv), F32), eye], axis=-1))  # [B, H, K, V+K]
  v_aug = jnp.concatenate([v.astype(F32), jnp.zeros((*v.shape[:3], dk), F32)], axis=-1)  # [B, L, H, V+K]
  o, last = op(q, k, v_aug, *gates, initial_state=s0, output_final_state=True, segment_ids=segment_ids, **kw)
  return o[..., :dv], o[..., dv:], last


def _fold(s0: jax.Array, summaries: jax.Array, keep: jax.Array, diagonal: bool) -> tuple[jax.Array, jax.Array]:
  """States entering each slice [R, B, H, K, V] and the final state [B, H, K, V], from s0 [B, H, K, V] and
  each slice's map S -> M S + b as summaries [b | M] [R, B, H, K, V + (1 or K)] (diagonal: M's diagonal as
  one column); keep [R, B]: the slice's first token continues the entering document."""
  dv = s0.shape[-1]

  def step(s, x):
    summary, kept = x
    s = jnp.where(kept[:, None, None, None], s, 0.0)
    b, m = summary[..., :dv], summary[..., dv:]
    out = (m * s if diagonal else jnp.einsum("bhij,bhjv->bhiv", m, s)) + b
    return out, s

  final, enters = jax.lax.scan(step, s0, (summaries, keep))
  return enters, final
