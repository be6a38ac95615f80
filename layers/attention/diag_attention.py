"""DiagAttention (Qin et al. 2022, "The Devil in Linear Transformer", TransNormer): causal softmax
attention within non-overlapping blocks, the local attention of TransNormer's early layers.

TransNormer counters "attention dilution" (linear attention spreading its weight over the whole
sequence) by confining the early layers to neighbouring tokens: the first half of the layers are
DiagAttention, the second half NormAttention (layers/linear_attention/mixers/norm_attention.py), e.g.
    model.blocks = "(diag_attention, swiglu) * 3 + (norm_attention, swiglu) * 3"
Block size 64 (`decoder_chunk_size` of the released transnormer_t1 / t2 configurations in
OpenNLPLab/fairseq-evo). Scores are scaled by head_dim**-0.5 as in that code. Not reproduced: the
released configurations also rotate q and k with URPE (unitary relative position encoding, a separate
paper), and transnormer_t1 uses ReLU scores + SimpleRMSNorm instead of the softmax (t2 and the paper's
description use the softmax, as here).

Packed rows: blocks follow per-document positions, so every document restarts its blocks and sees
nothing of another. Decoding keeps a rolling cache of the last `block_size` keys / values (with their
document and position, `layers.attention.kv_cache` layout): the current block always lies within it,
so the cache does not grow with the sequence.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers import segments
from layers.attention import kv_cache
from layers.attention.block_softmax_attention import block_softmax_attention
from layers.context import LayerContext
from layers.core import Linear
from layers.forward_flops import causal_context


class DiagAttention(nnx.Module):
  """Causal softmax attention within blocks of `block_size` tokens of each document."""

  def __init__(self, ctx: LayerContext, *, block_size: int = 64, rngs: nnx.Rngs):
    if block_size < 1:
      raise ValueError(f"diag_attention: block_size must be >= 1, got {block_size}")
    self.n_heads, self.head_dim, self.block_size, self.dtype = ctx.n_heads, ctx.head_dim, block_size, ctx.dtype
    kw = dict(dtype=ctx.dtype, param_dtype=ctx.param_dtype, rngs=rngs)
    width = ctx.n_heads * ctx.head_dim
    self.q = Linear(ctx.d_model, width, axes=("embed", "heads"), **kw)
    self.k = Linear(ctx.d_model, width, axes=("embed", "heads"), **kw)
    self.v = Linear(ctx.d_model, width, axes=("embed", "heads"), **kw)
    self.o = Linear(width, ctx.d_model, axes=("heads", "embed"), **kw)

  def _qkv(self, x: jax.Array):  # [B, T, D] -> 3 x [B, T, H, E]
    return (p(x).reshape(*x.shape[:2], self.n_heads, self.head_dim) for p in (self.q, self.k, self.v))

  def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None) -> jax.Array:  # [B, T, D] -> [B, T, D]
    q, k, v = self._qkv(x)
    o = block_softmax_attention(q, k, v, block_size=self.block_size, positions=positions, segment_ids=segment_ids)
    return self.o(o.reshape(*x.shape[:2], -1))

  def extra_flops_per_token(self, seq_len: int) -> float:
    """QK^T and AV over the causal context inside a block: 2 matmuls x 2 FLOPs per MAC."""
    return 4.0 * self.n_heads * self.head_dim * causal_context(min(seq_len, self.block_size))

  def init_cache(self, batch_size: int, max_len: int) -> dict:
    """The last `block_size` keys / values (zeros, no document) and an empty cursor; max_len is not needed."""
    del max_len
    return kv_cache.init_kv_cache(batch_size, self.block_size, self.n_heads, self.head_dim, self.dtype)

  def decode(self, x: jax.Array, cache: dict, pos: jax.Array, *, segment_ids: jax.Array | None = None,
             positions: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """x [B, T, D] after the cached tokens: each token attends to the earlier tokens of its block (the
    cached ones included). `pos` is unused: the cache is a rolling window, not slots."""
    del pos
    b, t, _ = x.shape
    w = self.block_size
    d = segments.decode_documents(cache["cursor"], t, segment_ids, positions)
    q, k, v = self._qkv(x)
    keys = jnp.concatenate([cache["k"], k.astype(cache["k"].dtype)], axis=1)  # [B, W+T, H, E]
    values = jnp.concatenate([cache["v"], v.astype(cache["v"].dtype)], axis=1)
    documents = jnp.concatenate([cache["document"], d.documents], axis=1)  # [B, W+T]
    key_positions = jnp.concatenate([cache["position"], d.positions], axis=1)
    earlier = jnp.arange(w + t)[None, :] <= jnp.arange(t)[:, None] + w  # [T, W+T]: cached or not later
    same_block = ((documents[:, None, :] == d.documents[:, :, None])
                  & (key_positions[:, None, :] // w == d.positions[:, :, None] // w))  # [B, T, W+T]
    o = jax.nn.dot_product_attention(q, keys, values, mask=(same_block & earlier)[:, None])
    cache = {"k": keys[:, t:], "v": values[:, t:], "document": documents[:, t:], "position": key_positions[:, t:],
             "cursor": d.cursor}
    return self.o(o.reshape(b, t, -1)), cache
