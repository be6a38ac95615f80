"""Mixture-of-Memories token mixer (Du et al. 2025, "MoM"), registered as the mixer "mom".

M gated-delta-rule memories, each with its own key / value / decay / beta projections; a router sends every
token to its top-k memories (softmax over memories, weights renormalised over the k). A chosen memory m
is updated with the token, S^m_t = exp(g^m_t) S^m_{t-1} + β^m_t k^m_t (v^m_t − exp(g^m_t) S^m_{t-1}ᵀ k^m_t)ᵀ,
and read with the shared query; an unchosen memory is left exactly as it was. The output is the
routing-weighted sum of the chosen memories' reads, o_t = Σ_{m in top-k(t)} w_{t,m} S^m_tᵀ (scale q_t),
then a per-head RMSNorm and the output projection. q and k are L2-normalised SiLU features, v SiLU
features, β = sigmoid(W_b x), and g the decay of Gated DeltaNet (DecayGate: -exp(A_log) softplus(W_a x +
dt_bias), per memory and head).

Two forms of the same function:
  routed (the training forward, `routed=True`): like experts, each token's k (token, memory) pairs are
    sorted by memory; the memories' projections are grouped matmuls over those rows only, and each
    memory's tokens run as one document of a packed `gated_delta_rule` call (per batch row, memory by
    memory, documents of a packed input kept apart), so the work is k / M of the dense form's;
  dense (the specification; decoding, where the cache holds every memory's state; the training forward
    under a "sequence" mesh axis, sequence-parallel): all M memories over every token as M × H heads,
    with g = β = 0 where a memory was not chosen.
The router's Switch load-balancing loss is sown as AuxLoss "mom_load_balance" and the memory load as
LayerMetric "mom_memory_load/<layer>" by the training forward (decoding sows nothing).
Decode keeps the M × H states [B, M*H, K, V] (fp32) and a layers.segments cursor as the cache.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers import sequence_parallel
from layers.aux import AuxLoss, LayerMetric
from layers.context import LayerContext
from layers.linear_attention.mixers.decay_gate import DecayGate, decay
from layers.linear_attention.mixers.head_norm import HeadNorm
from layers.linear_attention.mixers.recurrent_mixer import Cache, Documents, RecurrentMixer, l2_normalize
from layers.linear_attention.ops import gated_delta_rule
from layers.linear_attention.ops.cost import recurrence_flops_per_token
from layers.moe import dispatch, losses
from layers.moe.experts import grouped_matmul, grouped_matmul_impl
from layers.moe.routing import Router, TokenChoice, top_k_route
from layers.segments import document_index


class MixtureOfMemories(RecurrentMixer):
  """Mixture-of-Memories over gated-delta-rule memories (heads = ctx.n_heads, K = V = ctx.head_dim).

  mode: the gated_delta_rule form of the full-sequence pass ("chunk", "recurrent", "parallel").
  grouped_matmul (routed form): "ragged_dot", "tiled" (tile_size rows), or "auto" (tiled on CPU).
  """

  recurrence = "delta"

  def __init__(self, ctx: LayerContext, *, rngs: nnx.Rngs, n_memories: int = 4, top_k: int = 2,
               load_balance_weight: float = 0.01, routed: bool = True, norm_eps: float = 1e-5,
               mode: str = "chunk", chunk_size: int = 64, grouped_matmul: str = "auto", tile_size: int = 128):
    if not 1 <= top_k <= n_memories:
      raise ValueError(f"top_k={top_k} must be in [1, n_memories={n_memories}]")
    grouped_matmul = grouped_matmul_impl(grouped_matmul)
    d, h, dk, m = ctx.d_model, ctx.n_heads, ctx.head_dim, n_memories
    self.n_memories, self.top_k, self.heads, self.layer_idx = m, top_k, h, ctx.layer_idx
    self.load_balance_weight, self.routed = load_balance_weight, routed
    self.grouped_matmul, self.tile_size = grouped_matmul, tile_size
    self.router = Router(d, m, param_dtype=ctx.param_dtype, rngs=rngs)
    self.q_proj = self._linear(ctx, d, h * dk, ("embed", "heads"), rngs=rngs)
    # Memory-major columns: memory m's projections are columns [m * width, (m + 1) * width).
    self.k_proj = self._linear(ctx, d, m * h * dk, ("embed", "heads"), rngs=rngs)
    self.v_proj = self._linear(ctx, d, m * h * dk, ("embed", "heads"), rngs=rngs)
    self.a_proj = self._linear(ctx, d, m * h, ("embed", "heads"), rngs=rngs)
    self.b_proj = self._linear(ctx, d, m * h, ("embed", "heads"), rngs=rngs)
    self.decay = DecayGate(m * h, a_range=(0.0, 16.0), param_dtype=ctx.param_dtype, rngs=rngs)
    self.norm = HeadNorm(dk, eps=norm_eps, param_dtype=ctx.param_dtype, rngs=rngs)
    self.o_proj = self._linear(ctx, h * dk, d, ("heads", "embed"), rngs=rngs)
    self.dtype = ctx.dtype
    self.n_heads, self.state_k, self.state_v = m * h, dk, dk  # the cache holds every memory's state
    self.mode, self.chunk_size = mode, chunk_size

  def flops_per_token(self, seq_len: int) -> float:
    """Router, q / o projections, and per chosen memory its projections and recurrence (all M when dense)."""
    used = self.top_k if self.routed else self.n_memories
    per_memory = sum(2.0 * p.kernel.size for p in (self.k_proj, self.v_proj, self.a_proj, self.b_proj))
    per_memory /= self.n_memories
    chunk = min(self.chunk_size, seq_len)
    recurrence = self.heads * recurrence_flops_per_token("delta", chunk, self.state_k, self.state_v)
    own = sum(2.0 * p.size for p in (self.router.kernel, self.q_proj.kernel, self.o_proj.kernel))
    return own + used * (per_memory + recurrence)

  def active_params(self) -> float:
    """Every parameter but the unchosen memories' projections."""
    memories = sum(p.kernel.size for p in (self.k_proj, self.v_proj, self.a_proj, self.b_proj))
    total = sum(v.size for v in jax.tree.leaves(nnx.state(self, nnx.Param)))
    return total - (1 - self.top_k / self.n_memories) * memories

  def mix(self, x: jax.Array, cache: Cache | None, mode: str, docs: Documents) -> tuple[jax.Array, Cache | None]:
    b, t, d = x.shape
    route = top_k_route(self.router(x.reshape(b * t, d)), self.top_k, renormalize=True)
    if cache is None:  # the training forward
      load = losses.expert_load(route.experts, self.n_memories)
      if self.load_balance_weight:
        self.sow(AuxLoss, "mom_load_balance", self.load_balance_weight * losses.load_balancing_loss(load, route.probs))
      self.sow(LayerMetric, f"mom_memory_load/{self.layer_idx}", load)
    q = l2_normalize(jax.nn.silu(self.q_proj(x)).reshape(b, t, self.heads, -1))  # [B, T, H, K]
    # Under a "sequence" mesh axis the dense form runs sequence-parallel (its recurrence through _recur);
    # the routed form sorts each row's tokens by memory, which does not split along T.
    if cache is None and self.routed and sequence_parallel.active_mesh() is None:
      o, state = self._routed(x, q, route, mode, docs.segment_ids), None
    else:
      o, state = self._dense(x, q, route, cache, mode, docs.segment_ids)
    return self.o_proj(self.norm(o).reshape(b, t, -1)), self._new_cache(cache, state, {})

  def _features(self, k, v, a, beta_logits, a_log, dt_bias):
    """Per (token, memory) head features: k, v [..., H, K], g, beta [..., H] (fp32)."""
    k = l2_normalize(jax.nn.silu(k))
    g, _ = decay(a, a_log, dt_bias)
    return k, jax.nn.silu(v), g, jax.nn.sigmoid(beta_logits.astype(jnp.float32))

  def _dense(self, x, q, route: TokenChoice, cache, mode, segment_ids):
    """All memories over all tokens as M x H heads; unchosen (token, memory) pairs update nothing."""
    b, t, _ = x.shape
    m, h = self.n_memories, self.heads
    # a sum of one-hots, not a scatter: a batch split over devices stays split
    w = jnp.sum(jax.nn.one_hot(route.experts, m, dtype=jnp.float32) * route.weights[..., None], axis=1)
    w = w.reshape(b, t, m, 1)
    k, v, g, beta = self._features(self.k_proj(x).reshape(b, t, m * h, -1), self.v_proj(x).reshape(b, t, m * h, -1),
                                   self.a_proj(x), self.b_proj(x), self.decay.A_log[...], self.decay.dt_bias[...])
    chosen = jnp.repeat(w > 0, h, axis=-1).reshape(b, t, m * h)
    g, beta = jnp.where(chosen, g, 0.0), jnp.where(chosen, beta, 0.0)
    q_all = jnp.broadcast_to(q[:, :, None], (b, t, m, h, q.shape[-1])).reshape(b, t, m * h, -1)
    o, state = self._recur(gated_delta_rule, q_all, k, v, g, beta, cache=cache, mode=mode, segment_ids=segment_ids)
    o = jnp.sum(o.reshape(b, t, m, h, -1).astype(jnp.float32) * w[..., None], axis=2)  # [B, T, H, V]
    return o.astype(q.dtype), state

  def _routed(self, x, q, route: TokenChoice, mode, segment_ids):
    """Each memory over its routed tokens only: rows = (token, memory) pairs of each batch row, memory by
    memory in token order, each memory's run one document of a packed gated_delta_rule."""
    b, t, d = x.shape
    m, h, k = self.n_memories, self.heads, self.top_k
    memory = route.experts.reshape(b, t * k)  # [B, T*k], pair (t, j) at t * k + j
    order = jnp.argsort(memory, axis=1, stable=True).astype(jnp.int32)  # per row: memory, then token
    token = order // k  # [B, T*k] the token of each row
    mem = jnp.take_along_axis(memory, order, axis=1)
    doc = jnp.zeros_like(token) if segment_ids is None else document_index(segment_ids)
    docs = mem * (t + 1) + jnp.take_along_axis(doc, token, axis=1)  # a new document per memory and per document
    rows = jnp.take_along_axis(x, token[..., None], axis=1).reshape(b * t * k, d)
    feats = self._memory_projections(rows, mem.reshape(-1))  # [B*T*k, 2*H*K + 2*H]
    hk = h * q.shape[-1]
    kk, v = feats[:, :hk].reshape(b, t * k, h, -1), feats[:, hk:2 * hk].reshape(b, t * k, h, -1)
    a, beta_logits = feats[:, 2 * hk:2 * hk + h], feats[:, 2 * hk + h:]
    a_log, dt_bias = (p[...].reshape(m, h)[mem] for p in (self.decay.A_log, self.decay.dt_bias))  # [B, T*k, H]
    kk, v, g, beta = self._features(kk, v, a.reshape(b, t * k, h), beta_logits.reshape(b, t * k, h), a_log, dt_bias)
    q_rows = jnp.take_along_axis(q, token[..., None, None], axis=1)
    o, _ = gated_delta_rule(q_rows, kk, v, g, beta, mode=mode, chunk_size=self.chunk_size, segment_ids=docs)
    weight = jnp.take_along_axis(route.weights.reshape(b, t * k), order, axis=1)  # [B, T*k]
    o = o.astype(jnp.float32) * weight[..., None, None]
    out = jnp.zeros((b, t, h, o.shape[-1]), jnp.float32)
    return out.at[jnp.arange(b)[:, None], token].add(o).astype(q.dtype)  # [B, T, H, V]

  def _memory_projections(self, rows: jax.Array, mem: jax.Array) -> jax.Array:
    """rows [R, D] with their memories [R] -> the memory's k, v, a, b projections [R, 2*H*K + 2*H], as one
    grouped matmul over the rows sorted by memory."""
    m = self.n_memories
    kernels = [p.kernel[...].reshape(rows.shape[-1], m, -1) for p in (self.k_proj, self.v_proj, self.a_proj,
                                                                        self.b_proj)]
    w = jnp.concatenate(kernels, axis=-1).transpose(1, 0, 2).astype(self.dtype)  # [M, D, 2HK + 2H]
    groups = dispatch.sort_by_expert(mem[:, None], m)
    sorted_rows = rows[groups.order].astype(self.dtype)
    y = grouped_matmul(sorted_rows, w, groups, impl=self.grouped_matmul, tile=self.tile_size)
    return jnp.zeros_like(y).at[groups.order].set(y, unique_indices=True)
