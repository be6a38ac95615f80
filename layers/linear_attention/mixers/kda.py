"""Kimi Delta Attention (KDA; Kimi Team, "Kimi Linear: An Expressive, Efficient Attention Architecture", 2025).

The gated delta rule with a decay per key channel instead of per head (layers.linear_attention.kda):
  S_t = (I - beta_t k_t k_t^T) diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T (K^-1/2 q_t)
The layer as the paper's section 4 ("Neural Parameterization") builds it:
  q, k = L2Norm(Swish(ShortConv(W_{q,k} x))),  v = Swish(ShortConv(W_v x))   per head; ShortConv kernel 4
  g    = -exp(A_log) softplus(W_f^up W_f^down x + dt_bias)   per-channel log decay [H, K] <= 0 from a low-rank
         projection of rank = head dim (paper) and "a decay function similar to GDN and Mamba" (the paper's f;
         this is the reference layer's form: A_log per head, dt_bias per channel, A ~ U(1, 16) and dt
         log-uniform in [1e-3, 0.1] at init, which the paper does not state)
  beta = Sigmoid(W_b x) per head (x2 with allow_neg_eigval: transition eigenvalues in [-1, 1]; off in the paper)
  y    = W_o(Sigmoid(W_g^up W_g^down x) * RMSNorm(o))    head-wise RMSNorm, low-rank sigmoid output gate of the
         same rank (paper eq. 10; its ablation: sigmoid beats swish and no gate). The reference layer adds a
         bias to W_g^up; the paper's gate has none, and neither has this one.
Head dims: the paper sets key and value heads to 128 in all experiments (expand_v=1: value head = key head).
norm_eps 1e-5 and chunk_size 64 are the reference layer's (the paper does not state them).
Kimi Linear interleaves 3 KDA layers with 1 global attention layer without positional encoding
(experiments/kimi_linear.py).
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from layers.context import LayerContext
from layers.linear_attention.mixers.decay_gate import DecayGate
from layers.linear_attention.mixers.head_norm import HeadNorm
from layers.linear_attention.mixers.recurrent_mixer import Cache, Documents, RecurrentMixer, l2_normalize, split_heads
from layers.linear_attention.ops import kda
from layers.linear_attention.pallas.chunk_scan import check_implementation


class KimiDeltaAttention(RecurrentMixer):
  """KDA token mixer. Options: expand_v (value head = expand_v * head_dim), gate_low_rank_dim (rank of the
  forget- and output-gate projections; 0: the head dim, as the paper), conv_size, allow_neg_eigval,
  norm_eps, mode, chunk_size, implementation ("xla", or "cpu": the C++ kernel of the recurrent form, with
  mode "recurrent" on the CPU backend)."""

  conv_names = ("q_conv", "k_conv", "v_conv")
  recurrence = "delta"

  def __init__(self, ctx: LayerContext, *, expand_v: float = 1.0, gate_low_rank_dim: int = 0, conv_size: int = 4,
               allow_neg_eigval: bool = False, norm_eps: float = 1e-5, mode: str = "chunk", chunk_size: int = 64,
               implementation: str = "xla", rngs: nnx.Rngs):
    h, dk, dv = ctx.n_heads, ctx.head_dim, int(ctx.head_dim * expand_v)
    check_implementation(implementation, mode=mode, chunk_size=chunk_size, dk=dk, dv=dv, available=("xla", "cpu"))
    rank = gate_low_rank_dim or dk
    self.q_proj = self._linear(ctx, ctx.d_model, h * dk, ("embed", "heads"), rngs=rngs)
    self.k_proj = self._linear(ctx, ctx.d_model, h * dk, ("embed", "heads"), rngs=rngs)
    self.v_proj = self._linear(ctx, ctx.d_model, h * dv, ("embed", "heads"), rngs=rngs)
    self.q_conv = self._conv_module(ctx, h * dk, conv_size, rngs=rngs)
    self.k_conv = self._conv_module(ctx, h * dk, conv_size, rngs=rngs)
    self.v_conv = self._conv_module(ctx, h * dv, conv_size, rngs=rngs)
    self.f_down = self._linear(ctx, ctx.d_model, rank, ("embed", None), rngs=rngs)
    self.f_up = self._linear(ctx, rank, h * dk, (None, "heads"), rngs=rngs)
    self.decay = DecayGate(h, a_range=(1.0, 16.0), head_channels=dk, param_dtype=ctx.param_dtype, rngs=rngs)
    self.b_proj = self._linear(ctx, ctx.d_model, h, ("embed", "heads"), rngs=rngs)
    self.g_down = self._linear(ctx, ctx.d_model, rank, ("embed", None), rngs=rngs)
    self.g_up = self._linear(ctx, rank, h * dv, (None, "heads"), rngs=rngs)
    self.norm = HeadNorm(dv, eps=norm_eps, gate_activation="sigmoid", param_dtype=ctx.param_dtype, rngs=rngs)
    self.o_proj = self._linear(ctx, h * dv, ctx.d_model, ("heads", "embed"), rngs=rngs)
    self.beta_scale = 2.0 if allow_neg_eigval else 1.0
    self.n_heads, self.state_k, self.state_v = h, dk, dv
    self.mode, self.chunk_size, self.implementation = mode, chunk_size, implementation

  def mix(self, x: jax.Array, cache: Cache | None, mode: str,
          docs: Documents) -> tuple[jax.Array, Cache | None]:
    convs = {}
    q, k, v = (self._conv(name, proj(x), cache, convs, docs.segment_ids)
               for name, proj in zip(self.conv_names, (self.q_proj, self.k_proj, self.v_proj)))
    q, k, v = (split_heads(z, self.n_heads) for z in (q, k, v))  # [B, T, H, K|V]
    q, k = l2_normalize(q), l2_normalize(k)
    g, _ = self.decay(split_heads(self.f_up(self.f_down(x)), self.n_heads))  # [B, T, H, K] fp32, <= 0
    beta = self.beta_scale * jax.nn.sigmoid(self.b_proj(x).astype(jnp.float32))  # [B, T, H]
    op = functools.partial(kda, implementation=self.implementation if mode == self.mode else "xla")
    o, state = self._recur(op, q, k, v, g, beta, cache=cache, mode=mode, segment_ids=docs.segment_ids)
    gate = split_heads(self.g_up(self.g_down(x)), self.n_heads)
    y = self.o_proj(self.norm(o, gate).reshape(*x.shape[:-1], -1))
    return y, self._new_cache(cache, state, convs)
