"""Mixture-of-Memories token mixer (Du et al. 2025, "MoM"), registered as the mixer "mom".

M gated-delta-rule memories, each with its own key / value / gate projections; a router sends
every token to its top-k memories. A chosen memory m is updated with the token
(S^m_t = exp(g^m_t) S^m_{t-1} + β^m_t k^m_t (v^m_t − exp(g^m_t) S^m_{t-1}ᵀ k^m_t)ᵀ) and read with
the shared query; an unchosen memory is left exactly as it was (g = 0, β = 0 for that token).
The output is the routing-weighted sum of the chosen memories' reads,
  o_t = Σ_{m in top-k(t)} w_{t,m} S^m_tᵀ (scale q_t),
then a per-head RMSNorm and the output projection. The memories run as M × H heads of one
`gated_delta_rule` call (M / k times the state work of the routed form, same result).
The router's Switch load-balancing loss is sown as AuxLoss "mom_load_balance" by the forward pass
(decoding sows nothing, so it can run inside a lax.scan such as models.lm.generate's).
Packed rows: `segment_ids` restart every memory at each document start (routing is per token).
Decode keeps the M × H states [B, M*H, K, V] (fp32) and a layers.segments cursor as the cache.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers import segments
from layers.aux import AuxLoss, LayerMetric
from layers.context import LayerContext
from layers.core import Linear, make_param
from layers.linear_attention import gated_delta_rule
from layers.linear_attention.ops.cost import recurrence_flops_per_token
from layers.moe import losses
from layers.moe.routing import top_k_route
from layers.norms import rms_norm


def _l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  x32 = x.astype(jnp.float32)
  return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


def _dt_bias_init(key, shape, dtype):
  """Inverse softplus of dt ~ log-uniform [1e-3, 0.1] (Mamba / Gated DeltaNet)."""
  dt = jnp.exp(jax.random.uniform(key, shape) * (jnp.log(0.1) - jnp.log(1e-3)) + jnp.log(1e-3))
  return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)


def _a_log_init(key, shape, dtype):
  return jnp.log(jax.random.uniform(key, shape, minval=1e-4, maxval=16.0)).astype(dtype)


class MixtureOfMemories(nnx.Module):
  def __init__(self, ctx: LayerContext, *, n_memories: int, top_k: int, load_balance_weight: float,
               mode: str, chunk_size: int, rngs: nnx.Rngs):
    d, h, dk = ctx.d_model, ctx.n_heads, ctx.head_dim
    m = n_memories
    self.n_memories, self.top_k, self.n_heads, self.head_dim = m, top_k, h, dk
    self.load_balance_weight, self.dtype = load_balance_weight, ctx.dtype
    self.mode, self.chunk_size = mode, chunk_size
    kw = dict(dtype=ctx.dtype, param_dtype=ctx.param_dtype, rngs=rngs)
    self.router = make_param(nnx.initializers.normal(stddev=d**-0.5), rngs.params(), (d, m), ctx.param_dtype,
                             ("embed", None))
    self.q_proj = Linear(d, h * dk, axes=("embed", "heads"), **kw)
    self.k_proj = Linear(d, m * h * dk, axes=("embed", "heads"), **kw)
    self.v_proj = Linear(d, m * h * dk, axes=("embed", "heads"), **kw)
    self.a_proj = Linear(d, m * h, axes=("embed", "heads"), **kw)
    self.b_proj = Linear(d, m * h, axes=("embed", "heads"), **kw)
    self.a_log = make_param(_a_log_init, rngs.params(), (m * h,), jnp.float32, ("heads",), optim_group="no_decay")
    self.dt_bias = make_param(_dt_bias_init, rngs.params(), (m * h,), jnp.float32, ("heads",),
                              optim_group="no_decay")
    self.norm_scale = make_param(nnx.initializers.ones, rngs.params(), (dk,), ctx.param_dtype, ("norm",),
                                 optim_group="no_decay")
    self.o_proj = Linear(h * dk, d, axes=("heads", "embed"), **kw)

  def _mix(self, x: jax.Array, state: jax.Array | None, mode: str,
           segment_ids: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
    """x [B, T, D], state [B, M*H, K, V] or None, segment_ids [B, T] or None -> (y [B, T, D], final state)."""
    b, t, _ = x.shape
    m, h, dk = self.n_memories, self.n_heads, self.head_dim
    logits = x.reshape(b * t, -1).astype(jnp.float32) @ self.router[...].astype(jnp.float32)  # [N, M]
    route = top_k_route(logits, self.top_k, renormalize=True)
    if state is None:  # the training forward
      load = losses.expert_load(route.experts, m)
      if self.load_balance_weight:
        self.sow(AuxLoss, "mom_load_balance", self.load_balance_weight * losses.load_balancing_loss(load, route.probs))
      self.sow(LayerMetric, "mom_memory_load", load)
    # dense [B, T, M] weights, zero for unchosen memories
    w = jnp.zeros((b * t, m), jnp.float32).at[jnp.arange(b * t)[:, None], route.experts].set(route.weights)
    chosen = (w > 0).reshape(b, t, m, 1)
    w = w.reshape(b, t, m, 1, 1)

    q = _l2_normalize(jax.nn.silu(self.q_proj(x))).reshape(b, t, 1, h, dk)
    q = jnp.broadcast_to(q, (b, t, m, h, dk)).reshape(b, t, m * h, dk)
    k = _l2_normalize(jax.nn.silu(self.k_proj(x)).reshape(b, t, m * h, dk))
    v = jax.nn.silu(self.v_proj(x)).reshape(b, t, m * h, dk)
    g = -jnp.exp(self.a_log[...]) * jax.nn.softplus(self.a_proj(x).astype(jnp.float32) + self.dt_bias[...])
    beta = jax.nn.sigmoid(self.b_proj(x).astype(jnp.float32))
    g = jnp.where(chosen, g.reshape(b, t, m, h), 0.0).reshape(b, t, m * h)  # [B, T, M*H]
    beta = jnp.where(chosen, beta.reshape(b, t, m, h), 0.0).reshape(b, t, m * h)
    o, state = gated_delta_rule(q, k, v, g, beta, initial_state=state, output_final_state=state is not None,
                                mode=mode, chunk_size=self.chunk_size, segment_ids=segment_ids)
    o = jnp.sum(o.reshape(b, t, m, h, dk).astype(jnp.float32) * w, axis=2)  # [B, T, H, V]
    o = rms_norm(o, self.norm_scale[...]).astype(self.dtype).reshape(b, t, h * dk)
    return self.o_proj(o), state

  def extra_flops_per_token(self, seq_len: int) -> float:
    """The gated delta rule over all M memories (unchosen ones run with g = beta = 0)."""
    chunk = min(self.chunk_size, seq_len)
    return self.n_memories * self.n_heads * recurrence_flops_per_token("delta", chunk, self.head_dim, self.head_dim)

  def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None) -> jax.Array:  # [B, T, D] -> [B, T, D]
    del positions  # nothing here depends on position
    if segment_ids is not None:
      segments.check_segment_ids(segment_ids, x.shape[:2])
    return self._mix(x, None, self.mode, segment_ids)[0]

  def init_cache(self, batch_size: int, max_len: int) -> dict:
    del max_len
    shape = (batch_size, self.n_memories * self.n_heads, self.head_dim, self.head_dim)
    return {"state": jnp.zeros(shape, jnp.float32), "cursor": segments.init_cursor(batch_size)}

  def decode(self, x: jax.Array, cache: dict, pos: jax.Array, *, segment_ids: jax.Array | None = None,
             positions: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """x [B, T, D] after the cached tokens; the states [B, M*H, K, V] restart where a document starts."""
    del pos
    d = segments.decode_documents(cache["cursor"], x.shape[1], segment_ids, positions)
    y, state = self._mix(x, segments.restart(cache["state"], d.reset), "recurrent", d.segment_ids)
    return y, {"state": state, "cursor": d.cursor}


def mom(ctx: LayerContext, *, rngs: nnx.Rngs, n_memories: int = 4, top_k: int = 2,
        load_balance_weight: float = 0.01, mode: str = "chunk", chunk_size: int = 64) -> MixtureOfMemories:
  """Mixture-of-Memories over gated-delta-rule memories (heads = ctx.n_heads, K = V = ctx.head_dim).
  mode is the gated_delta_rule form of the full-sequence pass ("chunk", "recurrent", "parallel")."""
  return MixtureOfMemories(ctx, n_memories=n_memories, top_k=top_k, load_balance_weight=load_balance_weight,
                           mode=mode, chunk_size=chunk_size, rngs=rngs)
