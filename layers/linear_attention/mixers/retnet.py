"""RetNet multi-scale retention (Sun et al. 2023) on the scalar-gated op.

S_t = gamma_h S_{t-1} + k_t v_t^T with a fixed decay per head, gamma_h = 1 - 2^(-5-h); q and k carry
rotary position embeddings (the xPos rotation without its extrapolation scaling); the readout is
normalised per head and gated by SiLU(W_g x) before the output projection.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from layers.attention.rope import apply_rope
from layers.context import LayerContext
from layers.linear_attention.mixers.head_norm import HeadNorm
from layers.linear_attention.mixers.recurrent_mixer import Cache, Documents, RecurrentMixer, split_heads
from layers.linear_attention.ops import simple_gla


def retention_log_decay(n_heads: int) -> np.ndarray:
  """log(1 - 2^(-5-h)) for h = 0..H-1: head h remembers ~2^(5+h) tokens."""
  return np.log1p(-(2.0 ** (-5.0 - np.arange(n_heads)))).astype(np.float32)


class RetNet(RecurrentMixer):
  """Multi-scale retention; rope_theta=None drops the rotary embedding."""

  def __init__(self, ctx: LayerContext, *, expand_k: float = 1.0, expand_v: float = 2.0,
               rope_theta: float | None = 10000.0, norm_eps: float = 1e-5, mode: str = "chunk", chunk_size: int = 64,
               rngs: nnx.Rngs):
    h, dk, dv = ctx.n_heads, int(ctx.head_dim * expand_k), int(ctx.head_dim * expand_v)
    self.q_proj = self._linear(ctx, ctx.d_model, h * dk, ("embed", "heads"), rngs=rngs)
    self.k_proj = self._linear(ctx, ctx.d_model, h * dk, ("embed", "heads"), rngs=rngs)
    self.v_proj = self._linear(ctx, ctx.d_model, h * dv, ("embed", "heads"), rngs=rngs)
    self.g_proj = self._linear(ctx, ctx.d_model, h * dv, ("embed", "heads"), rngs=rngs)
    self.norm = HeadNorm(dv, eps=norm_eps, param_dtype=ctx.param_dtype, rngs=rngs)
    self.o_proj = self._linear(ctx, h * dv, ctx.d_model, ("heads", "embed"), rngs=rngs)
    self.rope_theta = rope_theta
    self.n_heads, self.state_k, self.state_v = h, dk, dv
    self.mode, self.chunk_size = mode, chunk_size

  def mix(self, x: jax.Array, cache: Cache | None, mode: str,
          docs: Documents) -> tuple[jax.Array, Cache | None]:
    q = split_heads(self.q_proj(x), self.n_heads)  # [B, T, H, K]
    k = split_heads(self.k_proj(x), self.n_heads)  # [B, T, H, K]
    v = split_heads(self.v_proj(x), self.n_heads)  # [B, T, H, V]
    if self.rope_theta is not None:  # per-document positions [B, T] (or [T])
      q, k = apply_rope(q, docs.positions, self.rope_theta), apply_rope(k, docs.positions, self.rope_theta)
    g = jnp.broadcast_to(jnp.asarray(retention_log_decay(self.n_heads)), q.shape[:3])  # [B, T, H]
    # The barrier keeps XLA from constant-folding the op's cumsums of this constant (slow compiles).
    g = jax.lax.optimization_barrier(g)
    o, state = self._recur(simple_gla, q, k, v, g, cache=cache, mode=mode, segment_ids=docs.segment_ids)
    gate = split_heads(self.g_proj(x), self.n_heads)
    y = self.o_proj(self.norm(o, gate).reshape(*x.shape[:-1], -1))
    return y, self._new_cache(cache, state, {})
