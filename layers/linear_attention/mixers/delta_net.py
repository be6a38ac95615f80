"""DeltaNet (Yang et al., NeurIPS 2024) and Gated DeltaNet (Yang et al., ICLR 2025) mixers.

DeltaNet:        S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T
Gated DeltaNet:  S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T,  log a_t = g_t
                 g_t = -exp(A_log) softplus(W_a x_t + dt_bias)   (layers.linear_attention.mixers.decay_gate)
Both: q, k, v pass a short causal depthwise conv + SiLU; q, k are L2-normalised per head (so the
delta-rule update is a contraction); beta = sigmoid(W_b x) (x2 with allow_neg_eigval, so the state
transition I - beta k k^T may have negative eigenvalues); per-head RMSNorm on the readout, gated by
SiLU(W_g x) when use_gate; output projection. One class, two registry defaults.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers.context import LayerContext
from layers.linear_attention.mixers.decay_gate import DecayGate
from layers.linear_attention.mixers.head_norm import HeadNorm
from layers.linear_attention.mixers.recurrent_mixer import Cache, Documents, RecurrentMixer, l2_normalize, split_heads
from layers.linear_attention.ops import delta_rule, gated_delta_rule


class DeltaNet(RecurrentMixer):
  conv_names = ("q_conv", "k_conv", "v_conv")
  recurrence = "delta"

  def __init__(self, ctx: LayerContext, *, gated: bool, expand_k: float, expand_v: float, conv_size: int,
               use_gate: bool, allow_neg_eigval: bool, norm_eps: float, mode: str, chunk_size: int,
               rngs: nnx.Rngs):
    h, dk, dv = ctx.n_heads, int(ctx.head_dim * expand_k), int(ctx.head_dim * expand_v)
    self.q_proj = self._linear(ctx, ctx.d_model, h * dk, ("embed", "heads"), rngs=rngs)
    self.k_proj = self._linear(ctx, ctx.d_model, h * dk, ("embed", "heads"), rngs=rngs)
    self.v_proj = self._linear(ctx, ctx.d_model, h * dv, ("embed", "heads"), rngs=rngs)
    self.q_conv = self._conv_module(ctx, h * dk, conv_size, rngs=rngs)
    self.k_conv = self._conv_module(ctx, h * dk, conv_size, rngs=rngs)
    self.v_conv = self._conv_module(ctx, h * dv, conv_size, rngs=rngs)
    self.b_proj = self._linear(ctx, ctx.d_model, h, ("embed", "heads"), rngs=rngs)
    self.a_proj = self._linear(ctx, ctx.d_model, h, ("embed", "heads"), rngs=rngs) if gated else None
    self.decay = DecayGate(h, a_range=(0.0, 16.0), param_dtype=ctx.param_dtype, rngs=rngs) if gated else None
    self.g_proj = self._linear(ctx, ctx.d_model, h * dv, ("embed", "heads"), rngs=rngs) if use_gate else None
    self.norm = HeadNorm(dv, eps=norm_eps, param_dtype=ctx.param_dtype, rngs=rngs)
    self.o_proj = self._linear(ctx, h * dv, ctx.d_model, ("heads", "embed"), rngs=rngs)
    self.beta_scale = 2.0 if allow_neg_eigval else 1.0
    self.n_heads, self.state_k, self.state_v = h, dk, dv
    self.mode, self.chunk_size = mode, chunk_size

  def mix(self, x: jax.Array, cache: Cache | None, mode: str,
          docs: Documents) -> tuple[jax.Array, Cache | None]:
    convs = {}
    q, k, v = (self._conv(name, proj(x), cache, convs, docs.segment_ids)
               for name, proj in zip(self.conv_names, (self.q_proj, self.k_proj, self.v_proj)))
    q, k, v = (split_heads(z, self.n_heads) for z in (q, k, v))  # [B, T, H, K|V]
    q, k = l2_normalize(q), l2_normalize(k)
    beta = self.beta_scale * jax.nn.sigmoid(self.b_proj(x).astype(jnp.float32))  # [B, T, H]
    if self.decay is None:
      o, state = self._recur(delta_rule, q, k, v, beta, cache=cache, mode=mode, segment_ids=docs.segment_ids)
    else:
      g, _ = self.decay(self.a_proj(x))  # [B, T, H] fp32, <= 0
      o, state = self._recur(gated_delta_rule, q, k, v, g, beta, cache=cache, mode=mode, segment_ids=docs.segment_ids)
    gate = None if self.g_proj is None else split_heads(self.g_proj(x), self.n_heads)
    y = self.o_proj(self.norm(o, gate).reshape(*x.shape[:-1], -1))
    return y, self._new_cache(cache, state, convs)


def delta_net(ctx: LayerContext, *, rngs: nnx.Rngs, expand_k: float = 1.0, expand_v: float = 1.0,
              conv_size: int = 4, use_gate: bool = False, allow_neg_eigval: bool = False,
              norm_eps: float = 1e-5, mode: str = "chunk", chunk_size: int = 64) -> DeltaNet:
  """DeltaNet with the reference layer's defaults (no output gate)."""
  return DeltaNet(ctx, gated=False, expand_k=expand_k, expand_v=expand_v, conv_size=conv_size,
                  use_gate=use_gate, allow_neg_eigval=allow_neg_eigval, norm_eps=norm_eps, mode=mode,
                  chunk_size=chunk_size, rngs=rngs)


def gated_delta_net(ctx: LayerContext, *, rngs: nnx.Rngs, expand_k: float = 1.0, expand_v: float = 2.0,
                    conv_size: int = 4, use_gate: bool = True, allow_neg_eigval: bool = False,
                    norm_eps: float = 1e-5, mode: str = "chunk", chunk_size: int = 64) -> DeltaNet:
  """Gated DeltaNet with the paper's defaults (value dim 2x head_dim, SiLU-gated output norm)."""
  return DeltaNet(ctx, gated=True, expand_k=expand_k, expand_v=expand_v, conv_size=conv_size,
                  use_gate=use_gate, allow_neg_eigval=allow_neg_eigval, norm_eps=norm_eps, mode=mode,
                  chunk_size=chunk_size, rngs=rngs)
