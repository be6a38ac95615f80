"""Linear attention mixer (Katharopoulos et al. 2020; Hedgehog feature maps, Zhang et al. 2024).

o_t = S_t^T phi(q_t), S_t = S_{t-1} + phi(k_t) v_t^T, then per-head RMSNorm and an output projection.
`normalize=True` divides by phi(q_t) . sum_s phi(k_s) (the original formulation; use it with a
positive feature map): the denominator rides along as an extra all-ones value channel of the state.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers.context import LayerContext
from layers.linear_attention.mixers.feature_maps import FeatureMap
from layers.linear_attention.mixers.head_norm import HeadNorm
from layers.linear_attention.mixers.recurrent_mixer import Cache, Documents, RecurrentMixer, split_heads
from layers.linear_attention.ops import linear_attn


class LinearAttention(RecurrentMixer):
  """Linear attention; feature_map in identity / elu+1 / relu / hedgehog (q and k maps tied or not)."""

  def __init__(self, ctx: LayerContext, *, expand_k: float = 1.0, expand_v: float = 1.0, feature_map: str = "elu+1",
               tie_feature_map: bool = False, normalize: bool = False, norm_eps: float = 1e-5, mode: str = "chunk",
               chunk_size: int = 64, rngs: nnx.Rngs):
    h, dk, dv = ctx.n_heads, int(ctx.head_dim * expand_k), int(ctx.head_dim * expand_v)
    self.q_proj = self._linear(ctx, ctx.d_model, h * dk, ("embed", "heads"), rngs=rngs)
    self.k_proj = self._linear(ctx, ctx.d_model, h * dk, ("embed", "heads"), rngs=rngs)
    self.v_proj = self._linear(ctx, ctx.d_model, h * dv, ("embed", "heads"), rngs=rngs)
    new_map = lambda: FeatureMap(feature_map, h, dk, param_dtype=ctx.param_dtype, rngs=rngs)  # noqa: E731
    self.q_map = new_map()
    self.k_map = self.q_map if tie_feature_map else new_map()
    self.norm = HeadNorm(dv, eps=norm_eps, param_dtype=ctx.param_dtype, rngs=rngs)
    self.o_proj = self._linear(ctx, h * dv, ctx.d_model, ("heads", "embed"), rngs=rngs)
    self.normalize = normalize
    self.n_heads, self.state_k, self.state_v = h, self.q_map.out_dim, dv + int(normalize)
    self.mode, self.chunk_size = mode, chunk_size

  def mix(self, x: jax.Array, cache: Cache | None, mode: str,
          docs: Documents) -> tuple[jax.Array, Cache | None]:
    q = self.q_map(split_heads(self.q_proj(x), self.n_heads))  # [B, T, H, F]
    k = self.k_map(split_heads(self.k_proj(x), self.n_heads))  # [B, T, H, F]
    v = split_heads(self.v_proj(x), self.n_heads)  # [B, T, H, V]
    if self.normalize:
      v = jnp.concatenate([v, jnp.ones_like(v[..., :1])], axis=-1)  # [B, T, H, V+1]
    o, state = self._recur(linear_attn, q, k, v, cache=cache, mode=mode, segment_ids=docs.segment_ids)
    if self.normalize:
      o32 = o.astype(jnp.float32)
      o = (o32[..., :-1] / (o32[..., -1:] + 1e-6)).astype(o.dtype)
    y = self.o_proj(self.norm(o).reshape(*x.shape[:-1], -1))
    return y, self._new_cache(cache, state, {})
