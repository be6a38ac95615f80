"""Softmax attention: MHA / GQA, RoPE, optional sliding window, KV-cache decoding; causal by default
(causal=False for encoders such as the ViT).

The full-sequence path is `layers.attention.softmax_attention` (XLA everywhere, cuDNN flash attention
on GPU with implementation="cudnn", splash attention on TPU; its docstring says how one is chosen).
Packed rows: a token attends only within its document (`segment_ids`) and RoPE uses its position in
the document (`positions`, derived from segment_ids when not given). Under a mesh with a "sequence"
axis the forward is sequence-parallel (layers.attention.sequence_parallel; `sequence_parallel` picks
"all_gather" of K/V, LASP-2H's, or "ring"). Decoding keeps a KV cache
(layers.attention.kv_cache) and masks slots outside the causal (and sliding) window and outside the
token's document.
"""

import jax
from flax import nnx

from layers import segments
from layers import sequence_parallel as sp
from layers.attention import kv_cache
from layers.attention.rope import apply_rope
from layers.attention.sequence_parallel import METHODS, sequence_parallel_attention
from layers.attention.softmax_attention import softmax_attention
from layers.context import LayerContext
from layers.core import Linear
from layers.forward_flops import causal_context


class Attention(nnx.Module):
  """Softmax attention; window=W attends to the last W positions (itself included); rope_theta=None
  turns RoPE off (e.g. with learned position embeddings); sequence_parallel: how K/V reach the other
  slices under a "sequence" mesh axis ("all_gather" or "ring")."""

  def __init__(self, ctx: LayerContext, *, window: int | None = None, rope_theta: float | None = 10000.0,
               use_bias: bool = False, implementation: str | None = None, causal: bool = True,
               sequence_parallel: str = "all_gather", rngs: nnx.Rngs):
    if sequence_parallel not in METHODS:
      raise ValueError(f"sequence_parallel must be one of {METHODS}, got {sequence_parallel!r}")
    if not causal and window is not None:
      raise ValueError("a sliding window needs causal=True")
    if ctx.n_heads % ctx.n_kv_heads:
      raise ValueError(f"n_heads={ctx.n_heads} must be a multiple of n_kv_heads={ctx.n_kv_heads} (GQA)")
    if rope_theta is not None and ctx.head_dim % 2:
      raise ValueError(f"RoPE needs an even head_dim, got {ctx.head_dim}")
    self.n_heads, self.n_kv_heads, self.head_dim = ctx.n_heads, ctx.n_kv_heads, ctx.head_dim
    self.window, self.rope_theta, self.implementation, self.causal = window, rope_theta, implementation, causal
    self.sequence_parallel = sequence_parallel
    self.dtype = ctx.dtype
    kw = dict(use_bias=use_bias, dtype=ctx.dtype, param_dtype=ctx.param_dtype, rngs=rngs)
    self.q = Linear(ctx.d_model, ctx.n_heads * ctx.head_dim, axes=("embed", "heads"), **kw)
    self.k = Linear(ctx.d_model, ctx.n_kv_heads * ctx.head_dim, axes=("embed", "kv_heads"), **kw)
    self.v = Linear(ctx.d_model, ctx.n_kv_heads * ctx.head_dim, axes=("embed", "kv_heads"), **kw)
    self.o = Linear(ctx.n_heads * ctx.head_dim, ctx.d_model, axes=("heads", "embed"), **kw)

  def _qkv(self, x: jax.Array, positions: jax.Array):  # positions [T] or [B, T]
    B, T, _ = x.shape
    q = self.q(x).reshape(B, T, self.n_heads, self.head_dim)  # [B, T, N, H]
    k = self.k(x).reshape(B, T, self.n_kv_heads, self.head_dim)  # [B, T, Kh, H]
    v = self.v(x).reshape(B, T, self.n_kv_heads, self.head_dim)
    if self.rope_theta is not None:
      q = apply_rope(q, positions, self.rope_theta)
      k = apply_rope(k, positions, self.rope_theta)
    return q, k, v

  def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None) -> jax.Array:  # [B, T, D] -> [B, T, D]
    B, T, _ = x.shape
    q, k, v = self._qkv(x, segments.forward_positions(T, segment_ids, positions))
    if sp.active_mesh() is not None:
      o = sequence_parallel_attention(q, k, v, causal=self.causal, window=self.window, segment_ids=segment_ids,
                                      method=self.sequence_parallel)
    else:
      o = softmax_attention(q, k, v, causal=self.causal, window=self.window, segment_ids=segment_ids,
                            implementation=self.implementation)
    return self.o(o.reshape(B, T, -1))

  def extra_flops_per_token(self, seq_len: int) -> float:
    """QK^T and AV over the causal (or windowed, or full) context: 2 matmuls x 2 FLOPs per MAC."""
    context = causal_context(seq_len, self.window) if self.causal else seq_len
    return 4.0 * self.n_heads * self.head_dim * context

  def init_cache(self, batch_size: int, max_len: int) -> dict:
    return kv_cache.init_kv_cache(batch_size, max_len, self.n_kv_heads, self.head_dim, self.dtype)

  def decode(self, x: jax.Array, cache: dict, pos: jax.Array, *, segment_ids: jax.Array | None = None,
             positions: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """x [B, T, D] at slots pos..pos+T-1, each token attending to the cached slots <= its own in its
    document (and window)."""
    if not self.causal:
      raise NotImplementedError("token-by-token decoding needs causal attention")
    B, T, _ = x.shape
    d = segments.decode_documents(cache["cursor"], T, segment_ids, positions)
    q, k, v = self._qkv(x, d.positions)
    cache, visible = kv_cache.append(cache, k, v, pos, d, self.window)
    o = jax.nn.dot_product_attention(q, cache["k"], cache["v"], mask=visible)
    return self.o(o.reshape(B, T, -1)), cache
