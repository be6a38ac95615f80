"""NormAttention (Qin et al. 2022, "The Devil in Linear Transformer", TransNormer): linear attention
without the denominator, its output normalised instead.

    o_t = SRMSNorm( sum_{s<=t} (phi(q_t) . phi(k_s)) v_s ),   y = o W_o

The paper traces the unstable training of kernel linear attention to its scaling (the denominator
phi(q_t) . sum_s phi(k_s), whose gradient is unbounded) and replaces it by a normalisation of the
readout; no head_dim**-0.5 scale either (the op runs with scale=1). Defaults from the released
transnormer_t2 configuration (OpenNLPLab/fairseq-evo, norm_transformer_lm.py): phi = 1 + elu
(`feature_map="elu+1"`; transnormer_t1 uses plain elu, `feature_map="elu"`), SimpleRMSNorm (RMSNorm
without a learned scale) over all heads together, an output projection. The paper pairs it with
DiagAttention in the first half of the layers (layers/attention/diag_attention.py), e.g.
    model.blocks = "(diag_attention, swiglu) * 3 + (norm_attention, swiglu) * 3"
Not reproduced: the released configurations' URPE position encoding on q and k. The state is the
plain linear-attention state S_t = S_{t-1} + phi(k_t) v_t^T, so decoding is one recurrent step.
"""

import jax
from flax import nnx

from layers.context import LayerContext
from layers.linear_attention.mixers.feature_maps import FeatureMap
from layers.linear_attention.mixers.recurrent_mixer import Cache, Documents, RecurrentMixer, split_heads
from layers.linear_attention.ops import linear_attn
from layers.norms import rms_norm

NORM_EPS = 1e-6  # inside the root; the released SimpleRMSNorm adds 1e-8 to the RMS itself


class NormAttention(RecurrentMixer):
  """TransNormer's NormAttention: denominator-free causal linear attention, SimpleRMSNorm on the output."""

  def __init__(self, ctx: LayerContext, *, feature_map: str = "elu+1", mode: str = "chunk", chunk_size: int = 64,
               rngs: nnx.Rngs):
    h, dk = ctx.n_heads, ctx.head_dim
    self.q_proj = self._linear(ctx, ctx.d_model, h * dk, ("embed", "heads"), rngs=rngs)
    self.k_proj = self._linear(ctx, ctx.d_model, h * dk, ("embed", "heads"), rngs=rngs)
    self.v_proj = self._linear(ctx, ctx.d_model, h * dk, ("embed", "heads"), rngs=rngs)
    self.feature_map = FeatureMap(feature_map, h, dk, param_dtype=ctx.param_dtype, rngs=rngs)
    self.o_proj = self._linear(ctx, h * dk, ctx.d_model, ("heads", "embed"), rngs=rngs)
    self.n_heads, self.state_k, self.state_v = h, self.feature_map.out_dim, dk
    self.mode, self.chunk_size = mode, chunk_size

  def mix(self, x: jax.Array, cache: Cache | None, mode: str,
          docs: Documents) -> tuple[jax.Array, Cache | None]:
    q = self.feature_map(split_heads(self.q_proj(x), self.n_heads))  # [B, T, H, K]
    k = self.feature_map(split_heads(self.k_proj(x), self.n_heads))  # [B, T, H, K]
    v = split_heads(self.v_proj(x), self.n_heads)  # [B, T, H, V]
    o, state = self._recur(linear_attn, q, k, v, cache=cache, mode=mode, segment_ids=docs.segment_ids, scale=1.0)
    y = self.o_proj(rms_norm(o.reshape(*x.shape[:-1], -1), None, NORM_EPS))  # SimpleRMSNorm over all heads
    return y, self._new_cache(cache, state, {})
