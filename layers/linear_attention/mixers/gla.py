"""Gated Linear Attention layer (Yang et al., "GLA Transformer", ICML 2024).

S_t = diag(exp(gk_t)) S_{t-1} + k_t v_t^T with a per-key-channel log decay from a low-rank projection,
gk_t = logsigmoid(W_2 W_1 x_t + b) / gate_logit_normalizer (16: decays stay close to 1);
the readout is normalised per head and gated by SiLU(W_g x). An optional short conv on q/k/v.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from layers.context import LayerContext
from layers.linear_attention.mixers.head_norm import HeadNorm
from layers.linear_attention.mixers.recurrent_mixer import Cache, Documents, RecurrentMixer, split_heads
from layers.linear_attention.ops import gla
from layers.linear_attention.pallas.chunk_scan import check_implementation


class GLA(RecurrentMixer):
  """GLA with the paper's defaults (key dim = head_dim / 2); conv_size > 0 adds a short conv on q/k/v."""

  def __init__(self, ctx: LayerContext, *, expand_k: float = 0.5, expand_v: float = 1.0, gate_low_rank_dim: int = 16,
               gate_logit_normalizer: float = 16.0, use_output_gate: bool = True, conv_size: int = 0,
               norm_eps: float = 1e-5, mode: str = "chunk", chunk_size: int = 64, implementation: str = "xla",
               rngs: nnx.Rngs):
    """implementation: "xla" or "pallas" (the op's kernel for the chunk form; decode steps stay recurrent)."""
    h, dk, dv = ctx.n_heads, int(ctx.head_dim * expand_k), int(ctx.head_dim * expand_v)
    check_implementation(implementation, mode=mode, chunk_size=chunk_size, dk=dk, dv=dv)
    self.q_proj = self._linear(ctx, ctx.d_model, h * dk, ("embed", "heads"), rngs=rngs)
    self.k_proj = self._linear(ctx, ctx.d_model, h * dk, ("embed", "heads"), rngs=rngs)
    self.v_proj = self._linear(ctx, ctx.d_model, h * dv, ("embed", "heads"), rngs=rngs)
    self.gk_down = self._linear(ctx, ctx.d_model, gate_low_rank_dim, ("embed", None), rngs=rngs)
    self.gk_up = self._linear(ctx, gate_low_rank_dim, h * dk, (None, "heads"), use_bias=True, rngs=rngs)
    self.g_proj = (self._linear(ctx, ctx.d_model, h * dv, ("embed", "heads"), rngs=rngs)
                   if use_output_gate else None)
    if conv_size:
      self.q_conv = self._conv_module(ctx, h * dk, conv_size, rngs=rngs)
      self.k_conv = self._conv_module(ctx, h * dk, conv_size, rngs=rngs)
      self.v_conv = self._conv_module(ctx, h * dv, conv_size, rngs=rngs)
      self.conv_names = ("q_conv", "k_conv", "v_conv")
    self.norm = HeadNorm(dv, eps=norm_eps, param_dtype=ctx.param_dtype, rngs=rngs)
    self.o_proj = self._linear(ctx, h * dv, ctx.d_model, ("heads", "embed"), rngs=rngs)
    self.gate_logit_normalizer = gate_logit_normalizer
    self.n_heads, self.state_k, self.state_v = h, dk, dv
    self.mode, self.chunk_size, self.implementation = mode, chunk_size, implementation

  def mix(self, x: jax.Array, cache: Cache | None, mode: str,
          docs: Documents) -> tuple[jax.Array, Cache | None]:
    q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
    convs = {}
    if self.conv_names:
      q, k, v = (self._conv(name, z, cache, convs, docs.segment_ids) for name, z in zip(self.conv_names, (q, k, v)))
    logits = self.gk_up(self.gk_down(x)).astype(jnp.float32)
    gk = jax.nn.log_sigmoid(logits) / self.gate_logit_normalizer  # [B, T, H*K] fp32, <= 0
    q, k, v, gk = (split_heads(z, self.n_heads) for z in (q, k, v, gk))
    op = functools.partial(gla, implementation=self.implementation if mode == "chunk" else "xla")
    o, state = self._recur(op, q, k, v, gk, cache=cache, mode=mode, segment_ids=docs.segment_ids)
    gate = None if self.g_proj is None else split_heads(self.g_proj(x), self.n_heads)
    y = self.o_proj(self.norm(o, gate).reshape(*x.shape[:-1], -1))
    return y, self._new_cache(cache, state, convs)
