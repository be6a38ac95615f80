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
documents, a second one of four int32 per row and slice) lets every shard fold them into its own S_in
(redundantly: R small products), then o_t += S_inᵀ P_t.

Cost per layer (B rows, H heads, R slices): communicated R·B·H·K·(V + 1) floats (diagonal) or
R·B·H·K·(V + K) (dense) in the forward and the same again in the backward (the gather's transpose, a
reduce-scatter): independent of T. Compute: the op on T / R steps (dense: with V + K value columns, i.e.
(V + K) / V times the op's V-proportional work, 2x for K = V), the fold (R·K·V diagonal, R·K²·V dense per
row and head) and 2·K·V per token for S_inᵀ P_t. Gradients by autodiff through the shard_map (exact).

All-gather or a scan across shards. A slice acts on the entering state as the affine map f_r(S) = M_r S + b_r
(S ↦ S·A + B with A = M_rᵀ, B = b_rᵀ for states stored [V, K]), a document start before it as S ↦ 0·S. Maps
compose as
  f_2 ∘ f_1 = (M_2 M_1,  M_2 b_1 + b_2),
the product of the block matrices [[M, b], [0, I_V]], hence associative: S_in(r) = (f_{r-1} ∘ ... ∘ f_0)(S_0)
may be bracketed any way. A pair costs K + K·V floats when M is diagonal (linear_attn, simple_gla, gla:
composing is elementwise, K·V products) and K² + K·V when it is dense: for the delta rule family M is the
product of the slice's (I − β k kᵀ) factors (the WY form's transition, times the gates; kda's channel-wise decay
is diagonal but multiplies the dense delta-rule factor, so kda is dense; DeltaProduct and DPLR likewise), and
composing costs K²·(K + V) products. Ways to give every shard its S_in, per row and head:
  all-gather   one collective: every shard receives the R pairs, R·(K² + K·V) floats (dense), and folds them
               itself, R steps of K²·V; the backward is its transpose (a reduce-scatter of one pair per shard).
  scan         a Hillis–Steele scan over collective-permutes: ⌈log2 R⌉ rounds, each receiving one pair and
               composing two (K²·(K + V)); ⌈log2 R⌉·(K² + K·V) floats received, in ⌈log2 R⌉ dependent rounds.
  ring         LASP-1's: the state passed shard to shard, K·V floats per hop, but R − 1 dependent hops with
               every shard waiting for the one before it.
The code all-gathers, for both forms: the scan moves R / ⌈log2 R⌉ times fewer bytes (8/3 at R = 8) but pays
⌈log2 R⌉ latency-bound rounds with a dense composition between each, whereas the gathered pairs are a few MiB at
most (R·K·(K + V)·4 B per head: 1 MiB at R = 8, K = V = 128), independent of T and small next to the slice's
activations (T / R tokens), in a single collective XLA can overlap, and the local fold (R·K²·V) is cheap next
to the op on T / R steps (~(T / R)·(K·V + K² + C·(K + V)), C the chunk size). The gathered bytes grow with R:
at R = 256, K = V = 256 they reach 128 MiB per head, where the scan's 8 rounds of 0.5 MiB would win.
Measured per device (compiled HLO of forward + backward, B = 1, H = 2, K = V = 64, documents of 700 tokens;
`python -m benchmarks.sequence_parallel --ops simple_gla,gated_delta_rule --seq-len 1024,2048 --shards 2,4`),
bytes, equal at T = 1024 and T = 2048:
  simple_gla (diagonal)        R = 2: all-gather 66,592, reduce-scatter 33,280;  R = 4: 133,184 and 33,280
  gated_delta_rule (dense)     R = 2: all-gather 131,104, reduce-scatter 65,536; R = 4: 262,208 and 65,536
(all-gather: R pairs of 4·B·H·K·(V + 1 or K) bytes plus 4·4·R·B of document boundary ids; the reduce-scatter:
one pair; and a 32,768-byte collective-permute in each, the final state [B, H, K, V] brought from the last slice).
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
