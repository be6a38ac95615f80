"""DeltaNet (Yang et al., NeurIPS 2024) and Gated DeltaNet (Yang et al., ICLR 2025) mixers.

DeltaNet:        S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T
Gated DeltaNet:  S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T,  log a_t = g_t
                 g_t = -exp(A_log) softplus(W_a x_t + dt_bias)   (layers.linear_attention.mixers.decay_gate)
Both: q, k, v pass a short causal depthwise conv + SiLU; q, k are L2-normalised per head (so the
delta-rule update is a contraction); beta = sigmoid(W_b x) (x2 with allow_neg_eigval, so the state
transition I - beta k k^T may have negative eigenvalues); per-head RMSNorm on the readout, gated by
SiLU(W_g x) (or sigmoid: gate_activation) when use_gate; output projection. DeltaNet holds the layer;
GatedDeltaNet and (Gated) DeltaProduct (layers/linear_attention/mixers/gated_deltaproduct.py: n delta steps
per token) are subclasses with their papers' defaults.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from layers.context import LayerContext
from layers.linear_attention.mixers.decay_gate import DecayGate
from layers.linear_attention.mixers.head_norm import HeadNorm
from layers.linear_attention.mixers.recurrent_mixer import Cache, Documents, RecurrentMixer, l2_normalize, split_heads
from layers.linear_attention.ops import delta_rule, gated_delta_product, gated_delta_rule
from layers.linear_attention.pallas.chunk_scan import check_implementation


class DeltaNet(RecurrentMixer):
  """DeltaNet with the reference layer's defaults (no output gate)."""

  conv_names = ("q_conv", "k_conv", "v_conv")
  recurrence = "delta"

  def __init__(self, ctx: LayerContext, *, expand_k: float = 1.0, expand_v: float = 1.0, conv_size: int = 4,
               use_gate: bool = False, allow_neg_eigval: bool = False, norm_eps: float = 1e-5, mode: str = "chunk",
               chunk_size: int = 64, implementation: str = "xla", rngs: nnx.Rngs):
    self._build(ctx, gated=False, expand_k=expand_k, expand_v=expand_v, conv_size=conv_size, use_gate=use_gate,
                allow_neg_eigval=allow_neg_eigval, norm_eps=norm_eps, mode=mode, chunk_size=chunk_size,
                implementation=implementation, rngs=rngs)

  def _build(self, ctx: LayerContext, *, gated: bool, expand_k: float, expand_v: float, conv_size: int,
             use_gate: bool, allow_neg_eigval: bool, norm_eps: float, mode: str, chunk_size: int,
             rngs: nnx.Rngs, gate_activation: str = "silu", num_householder: int | None = None,
             implementation: str = "xla") -> None:
    """The layer, for every subclass. num_householder: None runs one delta step per token (delta_rule /
    gated_delta_rule); n runs n steps per token through gated_delta_product, each with its own k, v and beta
    (n times the k / v / beta projection and conv widths, step j of a token read from the j-th slice).
    implementation: "xla", "pallas" (gated_delta_rule's kernel for the chunk form: gated, no num_householder;
    decode steps stay recurrent) or "cpu" (the delta rules' C++ kernel of the recurrent form, mode
    "recurrent", CPU backend: no num_householder)."""
    h, dk, dv = ctx.n_heads, int(ctx.head_dim * expand_k), int(ctx.head_dim * expand_v)
    available = ("xla",) if num_householder else ("xla", "pallas", "cpu") if gated else ("xla", "cpu")
    check_implementation(implementation, mode=mode, chunk_size=chunk_size, dk=dk, dv=dv, available=available)
    n = num_householder or 1
    self.q_proj = self._linear(ctx, ctx.d_model, h * dk, ("embed", "heads"), rngs=rngs)
    self.k_proj = self._linear(ctx, ctx.d_model, n * h * dk, ("embed", "heads"), rngs=rngs)
    self.v_proj = self._linear(ctx, ctx.d_model, n * h * dv, ("embed", "heads"), rngs=rngs)
    self.q_conv = self._conv_module(ctx, h * dk, conv_size, rngs=rngs)
    self.k_conv = self._conv_module(ctx, n * h * dk, conv_size, rngs=rngs)
    self.v_conv = self._conv_module(ctx, n * h * dv, conv_size, rngs=rngs)
    self.b_proj = self._linear(ctx, ctx.d_model, n * h, ("embed", "heads"), rngs=rngs)
    self.a_proj = self._linear(ctx, ctx.d_model, h, ("embed", "heads"), rngs=rngs) if gated else None
    self.decay = DecayGate(h, a_range=(0.0, 16.0), param_dtype=ctx.param_dtype, rngs=rngs) if gated else None
    self.g_proj = self._linear(ctx, ctx.d_model, h * dv, ("embed", "heads"), rngs=rngs) if use_gate else None
    self.norm = HeadNorm(dv, eps=norm_eps, gate_activation=gate_activation, param_dtype=ctx.param_dtype, rngs=rngs)
    self.o_proj = self._linear(ctx, h * dv, ctx.d_model, ("heads", "embed"), rngs=rngs)
    self.beta_scale = 2.0 if allow_neg_eigval else 1.0
    self.num_householder = num_householder
    self.n_heads, self.state_k, self.state_v = h, dk, dv
    self.mode, self.chunk_size, self.implementation = mode, chunk_size, implementation

  def extra_flops_per_token(self, seq_len: int) -> float:
    """A token runs num_householder delta steps (chunks over the interleaved steps)."""
    return super().extra_flops_per_token(seq_len) * (self.num_householder or 1)

  def mix(self, x: jax.Array, cache: Cache | None, mode: str,
          docs: Documents) -> tuple[jax.Array, Cache | None]:
    convs = {}
    q, k, v = (self._conv(name, proj(x), cache, convs, docs.segment_ids)
               for name, proj in zip(self.conv_names, (self.q_proj, self.k_proj, self.v_proj)))
    b, t, h = *x.shape[:2], self.n_heads
    # [B, T, H, K]; k, v, beta [B, T*n, H, ...]: step j of token t at t*n + j (one step without householders)
    q, k, v = split_heads(q, h), k.reshape(b, -1, h, self.state_k), v.reshape(b, -1, h, self.state_v)
    q, k = l2_normalize(q), l2_normalize(k)
    beta = self.beta_scale * jax.nn.sigmoid(self.b_proj(x).astype(jnp.float32)).reshape(b, -1, h)
    g = None if self.decay is None else self.decay(self.a_proj(x))[0]  # [B, T, H] fp32, <= 0
    recur = functools.partial(self._recur, cache=cache, mode=mode, segment_ids=docs.segment_ids)
    if self.num_householder is not None:
      product = functools.partial(gated_delta_product, num_householder=self.num_householder)
      o, state = recur(product, q, k, v, jnp.zeros((b, t, h), jnp.float32) if g is None else g, beta)
    else:  # the configured implementation in the configured mode (decode steps of a chunk layer: the XLA form)
      implementation = self.implementation if mode == self.mode else "xla"
      op, gates = (delta_rule, (beta,)) if g is None else (gated_delta_rule, (g, beta))
      o, state = recur(functools.partial(op, implementation=implementation), q, k, v, *gates)
    gate = None if self.g_proj is None else split_heads(self.g_proj(x), self.n_heads)
    y = self.o_proj(self.norm(o, gate).reshape(*x.shape[:-1], -1))
    return y, self._new_cache(cache, state, convs)


class GatedDeltaNet(DeltaNet):
  """Gated DeltaNet with the paper's defaults (value dim 2x head_dim, SiLU-gated output norm;
  gate_activation="sigmoid" is Kimi Linear's GDN-H baseline)."""

  def __init__(self, ctx: LayerContext, *, expand_k: float = 1.0, expand_v: float = 2.0, conv_size: int = 4,
               use_gate: bool = True, gate_activation: str = "silu", allow_neg_eigval: bool = False,
               norm_eps: float = 1e-5, mode: str = "chunk", chunk_size: int = 64, implementation: str = "xla",
               rngs: nnx.Rngs):
    self._build(ctx, gated=True, expand_k=expand_k, expand_v=expand_v, conv_size=conv_size, use_gate=use_gate,
                gate_activation=gate_activation, allow_neg_eigval=allow_neg_eigval, norm_eps=norm_eps, mode=mode,
                chunk_size=chunk_size, implementation=implementation, rngs=rngs)
