"""Norm-aware linear attention (NaLa; Meng et al. 2025, "NaLaFormer: Norm-Aware Linear Attention for
Transformer Models", arXiv 2506.21137; ICML 2026 as "Norm x Direction"), causal (LM) or bidirectional (ViT).

Softmax attention sharpens with the query norm (||q|| acts as an inverse temperature); kernel linear
attention loses it because the normaliser divides it out. NaLa splits q into norm and direction and puts
the norm into the kernel's exponent, and maps the signed directions onto non-negative features without
dropping their negative parts:

    d = q / ||q||,   p(q) = a (1/2 + tanh ||q||)                              (a = query_power = 3)
    phi_q(q) = [relu(d)^p(q), relu(-d)^p(q)],   phi_k(k) = [relu(k)^c, relu(-k)^c]   (c = key_power = 3)
    o_t = sum_s (phi_q(q_t) . phi_k(k_s)) v_s / (sum_s phi_q(q_t) . phi_k(k_s) + 1e-6)
    y = (LayerNorm(o) * silu(x W_g)) W_o

A larger ||q|| gives a larger power, so the mass concentrates on the largest matching direction entries
(lower entropy), as in softmax. The [positive, negative] split keeps the norm of the direction
(||[relu(d), relu(-d)]|| = ||d||) and scores a query-key pair in every dimension where their signs agree,
negative ones included (a plain ReLU kernel drops those), while opposite signs score 0 ("inhibit")
instead of a negative weight. The sum runs over s <= t (causal=True, a recurrent state of width
2 head_dim, the denominator carried as an extra all-ones value channel) or over the whole document
(causal=False, the ViT: a forward and a reversed pass of the same op). Every default follows the
authors' code (ZacharyMeng/NaLaFormer, NALA.py `NormAwareLinearAttn`): a = 3, c = 3, q/k/v/gate
projections with biases, LayerNorm (eps 1e-5) over all heads gated by SiLU.

What we could not confirm or left out: the paper's text (only the abstract was at hand; the code's
ReLU-split is what its abstract calls the norm-preserving mapping with "cosine inhibit"); the code's
RoPE on the numerator's features (the backbone's 2-D position scheme, used by its softmax blocks too; our
ViT has learned position embeddings) and its depthwise 5x5 conv on v ("LePE", a 2-D backbone part);
the code's mean over keys is a sum here (equal up to where the 1e-6 enters).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers.context import LayerContext
from layers.linear_attention.mixers.recurrent_mixer import Cache, Documents, RecurrentMixer, split_heads
from layers.linear_attention.ops import linear_attn
from layers.norms import LayerNorm

F32 = jnp.float32
DENOMINATOR_EPS = 1e-6
_NORM_EPS = 1e-12  # inside the root of ||q||, so q = 0 has a direction of 0 instead of 0 / 0


def _split_power(x: jax.Array, power: jax.Array | float) -> jax.Array:
  """[..., K] -> [..., 2K]: [relu(x)^p, relu(-x)^p] in fp32; 0^p = 0 with zero gradients (also w.r.t. p)."""
  parts = jnp.concatenate([x, -x], axis=-1)
  positive = parts > 0
  safe = jnp.where(positive, parts, 1.0)
  return jnp.where(positive, jnp.exp(power * jnp.log(safe)), 0.0)


def nala_query_features(q: jax.Array, query_power: float = 3.0) -> jax.Array:
  """q [B, T, H, K] -> phi_q [B, T, H, 2K] in fp32: the direction's signed parts raised to a (1/2 + tanh ||q||)."""
  q = q.astype(F32)
  norm = jnp.sqrt(jnp.sum(jnp.square(q), axis=-1, keepdims=True) + _NORM_EPS)  # [B, T, H, 1]
  return _split_power(q / norm, query_power * (0.5 + jnp.tanh(norm)))


def nala_key_features(k: jax.Array, key_power: float = 3.0) -> jax.Array:
  """k [B, T, H, K] -> phi_k [B, T, H, 2K] in fp32: [relu(k)^c, relu(-k)^c] (the norm is kept)."""
  return _split_power(k.astype(F32), key_power)


def bidirectional_linear_attn(q: jax.Array, k: jax.Array, v: jax.Array, *, mode: str, chunk_size: int,
                              segment_ids: jax.Array | None = None) -> jax.Array:
  """o_t = sum_s (q_t . k_s) v_s over all s of t's document (no scale): the causal op forward, plus the
  causal op over the reversed row, minus the s = t term both count. q, k [B, T, H, K]; v [B, T, H, V]."""
  flip = lambda a: None if a is None else jnp.flip(a, axis=1)  # noqa: E731
  forward, _ = linear_attn(q, k, v, scale=1.0, mode=mode, chunk_size=chunk_size, segment_ids=segment_ids)
  backward, _ = linear_attn(flip(q), flip(k), flip(v), scale=1.0, mode=mode, chunk_size=chunk_size,
                            segment_ids=flip(segment_ids))
  return forward + flip(backward) - jnp.sum(q * k, axis=-1, keepdims=True) * v


class NaLaAttention(RecurrentMixer):
  """Norm-aware linear attention; causal=False for encoders (the ViT), which then cannot decode."""

  def __init__(self, ctx: LayerContext, *, causal: bool = True, query_power: float = 3.0, key_power: float = 3.0,
               mode: str = "chunk", chunk_size: int = 64, rngs: nnx.Rngs):
    h, dk = ctx.n_heads, ctx.head_dim
    proj = dict(axes=("embed", "heads"), use_bias=True, rngs=rngs)
    self.q_proj = self._linear(ctx, ctx.d_model, h * dk, **proj)
    self.k_proj = self._linear(ctx, ctx.d_model, h * dk, **proj)
    self.v_proj = self._linear(ctx, ctx.d_model, h * dk, **proj)
    self.g_proj = self._linear(ctx, ctx.d_model, h * dk, **proj)
    self.norm = LayerNorm(h * dk, eps=1e-5, param_dtype=ctx.param_dtype, rngs=rngs)
    self.o_proj = self._linear(ctx, h * dk, ctx.d_model, ("heads", "embed"), use_bias=True, rngs=rngs)
    self.causal, self.query_power, self.key_power = causal, query_power, key_power
    self.n_heads, self.state_k, self.state_v = h, 2 * dk, dk + 1  # features [+, -]; values + the ones channel
    self.mode, self.chunk_size = mode, chunk_size

  def mix(self, x: jax.Array, cache: Cache | None, mode: str,
          docs: Documents) -> tuple[jax.Array, Cache | None]:
    q = nala_query_features(split_heads(self.q_proj(x), self.n_heads), self.query_power)  # [B, T, H, 2K] fp32
    k = nala_key_features(split_heads(self.k_proj(x), self.n_heads), self.key_power)  # [B, T, H, 2K] fp32
    v = split_heads(self.v_proj(x), self.n_heads).astype(F32)
    v = jnp.concatenate([v, jnp.ones_like(v[..., :1])], axis=-1)  # [B, T, H, V+1]: the last sums the weights
    if self.causal:
      o, state = self._recur(linear_attn, q, k, v, cache=cache, mode=mode, segment_ids=docs.segment_ids, scale=1.0)
    else:
      o, state = bidirectional_linear_attn(q, k, v, mode=mode, chunk_size=self.chunk_size,
                                           segment_ids=docs.segment_ids), None
    o = (o[..., :-1] / (o[..., -1:] + DENOMINATOR_EPS)).astype(x.dtype)  # [B, T, H, V]
    y = self.norm(o.reshape(*x.shape[:-1], -1)) * jax.nn.silu(self.g_proj(x))
    return self.o_proj(y), self._new_cache(cache, state, {})

  def extra_flops_per_token(self, seq_len: int) -> float:
    """The chunk-form recurrence, twice when bidirectional (a forward and a reversed pass)."""
    return super().extra_flops_per_token(seq_len) * (1 if self.causal else 2)

  def decode(self, x: jax.Array, cache: Cache, pos: jax.Array, *, segment_ids: jax.Array | None = None,
             positions: jax.Array | None = None) -> tuple[jax.Array, Cache]:
    if not self.causal:
      raise NotImplementedError("nala: token-by-token decoding needs causal=True (a bidirectional layer sees "
                                "later tokens)")
    return super().decode(x, cache, pos, segment_ids=segment_ids, positions=positions)
