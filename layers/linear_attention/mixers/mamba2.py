"""Mamba-2 style mixer (Dao & Gu, "Transformers are SSMs", 2024) on the scalar-gated op.

SSD recurrence per head h (state N x P, one B/C group shared by all heads):
  h_t = exp(dt_t A_h) h_{t-1} + B_t (dt_t x_t)^T,   y_t = h_t^T C_t + D_h x_t
which is simple_gla with q = C, k = B, v = dt * x, g = -exp(A_log) dt and scale 1. x, B, C pass a
short causal conv (with bias) + SiLU; dt = softplus(W_dt x + dt_bias); the output is
RMSNorm(y * SiLU(z)) over the inner width, then projected back. A_log, dt_bias, D: no weight decay.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers.context import LayerContext
from layers.core import make_param
from layers.linear_attention.mixers.decay_gate import DecayGate
from layers.linear_attention.mixers.recurrent_mixer import Cache, Documents, RecurrentMixer, split_heads
from layers.linear_attention.ops import simple_gla
from layers.norms import RMSNorm


class Mamba2(RecurrentMixer):
  """Mamba-2 style layer: ctx.n_heads heads of value dim expand * head_dim, state_size-dim B/C."""

  conv_names = ("x_conv", "b_conv", "c_conv")

  def __init__(self, ctx: LayerContext, *, expand: float = 2.0, state_size: int = 128, conv_size: int = 4,
               norm_eps: float = 1e-5, mode: str = "chunk", chunk_size: int = 64, rngs: nnx.Rngs):
    h, p, n = ctx.n_heads, int(ctx.head_dim * expand), state_size
    inner = h * p
    self.z_proj = self._linear(ctx, ctx.d_model, inner, ("embed", "heads"), rngs=rngs)
    self.x_proj = self._linear(ctx, ctx.d_model, inner, ("embed", "heads"), rngs=rngs)
    self.b_proj = self._linear(ctx, ctx.d_model, n, ("embed", None), rngs=rngs)
    self.c_proj = self._linear(ctx, ctx.d_model, n, ("embed", None), rngs=rngs)
    self.dt_proj = self._linear(ctx, ctx.d_model, h, ("embed", "heads"), rngs=rngs)
    self.x_conv = self._conv_module(ctx, inner, conv_size, use_bias=True, rngs=rngs)
    self.b_conv = self._conv_module(ctx, n, conv_size, axis=None, use_bias=True, rngs=rngs)
    self.c_conv = self._conv_module(ctx, n, conv_size, axis=None, use_bias=True, rngs=rngs)
    self.decay = DecayGate(h, a_range=(1.0, 16.0), param_dtype=ctx.param_dtype, rngs=rngs)
    self.D = make_param(nnx.initializers.ones, rngs.params(), (h,), ctx.param_dtype, ("heads",),
                        optim_group="no_decay")
    self.norm = RMSNorm(inner, eps=norm_eps, param_dtype=ctx.param_dtype, rngs=rngs)
    self.o_proj = self._linear(ctx, inner, ctx.d_model, ("heads", "embed"), rngs=rngs)
    self.dtype = ctx.dtype
    self.n_heads, self.state_k, self.state_v = h, n, p
    self.mode, self.chunk_size = mode, chunk_size

  def mix(self, x: jax.Array, cache: Cache | None, mode: str,
          docs: Documents) -> tuple[jax.Array, Cache | None]:
    convs = {}
    xs, b, c = (self._conv(name, proj(x), cache, convs, docs.segment_ids)
                for name, proj in zip(self.conv_names, (self.x_proj, self.b_proj, self.c_proj)))
    xs = split_heads(xs, self.n_heads)  # [B, T, H, P]
    g, dt = self.decay(self.dt_proj(x))  # [B, T, H] fp32
    shape = (*xs.shape[:3], b.shape[-1])  # [B, T, H, N]: one group shared by all heads
    q, k = jnp.broadcast_to(c[:, :, None], shape), jnp.broadcast_to(b[:, :, None], shape)
    v = xs.astype(jnp.float32) * dt[..., None]  # [B, T, H, P]
    o, state = self._recur(simple_gla, q, k, v, g, cache=cache, mode=mode, segment_ids=docs.segment_ids, scale=1.0)
    y = o.astype(jnp.float32) + self.D[...].astype(jnp.float32)[:, None] * xs.astype(jnp.float32)
    y = y.reshape(*x.shape[:-1], -1) * jax.nn.silu(self.z_proj(x).astype(jnp.float32))
    y = self.o_proj(self.norm(y).astype(self.dtype))
    return y, self._new_cache(cache, state, convs)
