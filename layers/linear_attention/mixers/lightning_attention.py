"""TransNormerLLM's token mixer with Lightning Attention-2 (Qin et al. 2024): linear attention with a fixed
decay per head and layer, a normalised readout and a multiplicative output gate.

    S_t = lambda S_{t-1} + k_t v_t^T,  o_t = S_t^T q_t,  q = silu(x W_q), k = silu(x W_k), v = x W_v
    y = (SRMSNorm(o) * (x W_u)) W_o                     (SimpleRMSNorm over all heads, u without activation)

Decay (TransNormerLLM, "LRPE-d"): lambda = exp(-m_h (1 - l / (L - 1) + 1e-5)) for head h of H in layer l
of L, with m_h ALiBi's head slopes 2^(-8 (h + 1) / H) (H a power of two; otherwise the first H slopes
of ALiBi's interleaving): the first layer forgets fastest, the last almost not at all. This is the
schedule of the authors' code (OpenNLPLab TransNormerLLM modelling `_build_slope_tensor` and
`slope_rate * (1 - idx / (num_layers - 1) + 1e-5)`, reused verbatim by their TNL / lightning-attention
and MiniMax-01 releases; 1 + 1e-5 for a single layer, as MiniMax-01). The paper prints it as
lambda = exp(-(8h / H)(1 - l / L)); the reference GPU library (fla `chunk_lightning_attn`) takes that
literally as a log decay of -(8h / H)(1 - l / L), which decays far faster. No head_dim**-0.5 scale
(the op runs with scale=1; the norm follows anyway).

Lightning Attention-2 is this recurrence computed by tiles of B tokens: intra-block
[(Q_i K_i^T) * M] V_i with M_ts = lambda^(t-s) for s <= t, inter-block Lambda Q_i KV with
Lambda = diag(lambda, ..., lambda^B), and KV <- lambda^B KV + (lambda^B Lambda^-1 K_i)^T V_i. That is
exactly the chunk form of `simple_gla` (ops/chunk_forms.py `chunk_linear`) with a constant log gate
g = log lambda and chunk_size = B: there b_t = t g, so exp(b_t - b_s) = lambda^(t-s) (the intra mask M),
exp(b_t) q_t S_n is Lambda Q_i KV, and S_{n+1} = exp(b_C) S_n + sum_s exp(b_C - b_s) k_s v_s^T is the KV
update; the released kernels use tiles of 64 to 256 tokens. Not reproduced: LRPE's learned rotation of
q and k (the release switches it per layer with `linear_use_lrpe_list`, whose values we could not confirm).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from layers.context import LayerContext
from layers.linear_attention.mixers.recurrent_mixer import Cache, Documents, RecurrentMixer, split_heads
from layers.linear_attention.ops import simple_gla
from layers.norms import rms_norm

NORM_EPS = 1e-6


def alibi_slopes(n_heads: int) -> list[float]:
  """ALiBi's head slopes: 2^(-8 (h+1) / H) for H a power of two, else those of the nearest lower power of
  two followed by every other slope of the next one."""
  def power_of_two(n: int) -> list[float]:
    return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

  if math.log2(n_heads).is_integer():
    return power_of_two(n_heads)
  lower = 2 ** math.floor(math.log2(n_heads))
  return power_of_two(lower) + alibi_slopes(2 * lower)[0::2][: n_heads - lower]


def tnl_log_decay(n_heads: int, layer_idx: int, n_layers: int) -> np.ndarray:
  """[H] log lambda <= 0 of head h in layer `layer_idx` of `n_layers` (TransNormerLLM's schedule)."""
  depth = 1.0 - layer_idx / (n_layers - 1) if n_layers > 1 else 1.0
  return -np.asarray(alibi_slopes(n_heads), np.float32) * np.float32(depth + 1e-5)


class LightningAttention(RecurrentMixer):
  """TransNormerLLM's gated NormAttention with a fixed decay per head and layer (from ctx.layer_idx / n_layers)."""

  def __init__(self, ctx: LayerContext, *, mode: str = "chunk", chunk_size: int = 64, rngs: nnx.Rngs):
    h, dk = ctx.n_heads, ctx.head_dim
    self.q_proj = self._linear(ctx, ctx.d_model, h * dk, ("embed", "heads"), rngs=rngs)
    self.k_proj = self._linear(ctx, ctx.d_model, h * dk, ("embed", "heads"), rngs=rngs)
    self.v_proj = self._linear(ctx, ctx.d_model, h * dk, ("embed", "heads"), rngs=rngs)
    self.u_proj = self._linear(ctx, ctx.d_model, h * dk, ("embed", "heads"), rngs=rngs)
    self.o_proj = self._linear(ctx, h * dk, ctx.d_model, ("heads", "embed"), rngs=rngs)
    self.layer_idx, self.n_layers = ctx.layer_idx, ctx.n_layers  # the decay is a constant of these
    self.n_heads, self.state_k, self.state_v = h, dk, dk
    self.mode, self.chunk_size = mode, chunk_size

  def mix(self, x: jax.Array, cache: Cache | None, mode: str,
          docs: Documents) -> tuple[jax.Array, Cache | None]:
    q = split_heads(jax.nn.silu(self.q_proj(x)), self.n_heads)  # [B, T, H, K]
    k = split_heads(jax.nn.silu(self.k_proj(x)), self.n_heads)  # [B, T, H, K]
    v = split_heads(self.v_proj(x), self.n_heads)  # [B, T, H, V]
    g = jnp.broadcast_to(jnp.asarray(tnl_log_decay(self.n_heads, self.layer_idx, self.n_layers)), q.shape[:3])
    # The barrier keeps XLA from constant-folding the op's cumsums of this constant (slow compiles).
    g = jax.lax.optimization_barrier(g)
    o, state = self._recur(simple_gla, q, k, v, g, cache=cache, mode=mode, segment_ids=docs.segment_ids, scale=1.0)
    y = rms_norm(o.reshape(*x.shape[:-1], -1), None, NORM_EPS) * self.u_proj(x)
    return self.o_proj(y), self._new_cache(cache, state, {})
