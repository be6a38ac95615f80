"""RecurrentMixer: the base of the linear-attention mixers; one `mix` method serves training and decoding.

A subclass builds its projections, short convs and norms in `__init__`, sets the fields below
(`n_heads`, `state_k`, `state_v`, `mode`, `chunk_size`, and `conv_names` if it has short convs) and
implements

    mix(x [B, T, D], cache, mode, docs) -> (y [B, T, D], new cache or None)

where `docs` is a `Documents`: segment_ids [B, T] (None: one document) and positions ([B, T], or
[T] without documents) of the tokens. `mix` runs each short conv through `self._conv` and the one
recurrent op through `self._recur` (both take docs.segment_ids, so no state or conv window crosses a
document start), uses docs.positions for anything position-dependent (RetNet's rotary embedding),
and returns `self._new_cache(cache, state, convs)`. The base class then gives it the whole mixer
contract of `layers/registry.py`:

  __call__(x, *, segment_ids=None, positions=None): `mix` with cache=None, the chunk op from a zero
      state; positions default to per-document positions derived from segment_ids.
  init_cache(batch, max_len): {"state": [B, H, K, V] fp32 zeros, "conv": {name: [B, W-1, C]} zeros,
      "cursor": see layers.segments}; its size does not grow with max_len.
  decode(x [B, T, D], cache, pos, *, segment_ids=None, positions=None): `mix` from the cached state:
      T=1 is one recurrent step, T>1 a chunked prefill. Rows whose first token starts a new document
      (segment id != the cursor's) restart from a zero state and empty conv buffers.

A minimal mixer (the state is the running sum of k v^T, read with q):

    class SumMixer(RecurrentMixer):
      conv_names = ("k_conv",)

      def __init__(self, ctx: LayerContext, *, mode: str = "chunk", chunk_size: int = 64, rngs: nnx.Rngs):
        self.q_proj = self._linear(ctx, ctx.d_model, ctx.d_model, ("embed", "heads"), rngs=rngs)
        self.k_proj = self._linear(ctx, ctx.d_model, ctx.d_model, ("embed", "heads"), rngs=rngs)
        self.v_proj = self._linear(ctx, ctx.d_model, ctx.d_model, ("embed", "heads"), rngs=rngs)
        self.k_conv = self._conv_module(ctx, ctx.d_model, 4, rngs=rngs)
        self.o_proj = self._linear(ctx, ctx.d_model, ctx.d_model, ("heads", "embed"), rngs=rngs)
        self.n_heads, self.state_k, self.state_v = ctx.n_heads, ctx.head_dim, ctx.head_dim
        self.mode, self.chunk_size = mode, chunk_size

      def mix(self, x, cache, mode, docs):
        convs = {}
        k = self._conv("k_conv", self.k_proj(x), cache, convs, docs.segment_ids)
        q, k, v = (split_heads(z, self.n_heads) for z in (self.q_proj(x), k, self.v_proj(x)))
        o, state = self._recur(linear_attn, q, k, v, cache=cache, mode=mode, segment_ids=docs.segment_ids)
        return self.o_proj(o.reshape(x.shape)), self._new_cache(cache, state, convs)

Register it as `"sum": "my_module:SumMixer"` in `layers/registry.py`; tests/test_mixers.py then checks
it (decode == forward, packed documents == documents alone, causality) without further edits.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from layers import segments
from layers.context import LayerContext
from layers.core import Linear
from layers.linear_attention.mixers.short_conv import ShortConv
from layers.linear_attention.ops.cost import recurrence_flops_per_token

Cache = dict  # {"state": [B, H, K, V] fp32, "conv": {name: [B, W-1, C]}, "cursor": layers.segments cursor}


class Documents(NamedTuple):
  """The documents of the tokens `mix` sees."""

  segment_ids: jax.Array | None  # [B, T] int32; None: all tokens are one document
  positions: jax.Array  # [B, T] (or [T]) int32 position of each token in its document


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """x / ||x|| over the last axis, in fp32; returns x's dtype."""
  x32 = x.astype(jnp.float32)
  return (x32 * jax.lax.rsqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True) + eps)).astype(x.dtype)


def split_heads(x: jax.Array, n_heads: int) -> jax.Array:  # [B, T, H*E] -> [B, T, H, E]
  return x.reshape(*x.shape[:-1], n_heads, x.shape[-1] // n_heads)


class RecurrentMixer(nnx.Module):
  """Base of the recurrent mixers; subclasses set the fields below and implement `mix`."""

  n_heads: int
  state_k: int  # key / feature dim of the state
  state_v: int  # value dim of the state
  mode: str
  chunk_size: int
  conv_names: tuple[str, ...] = ()  # attributes holding a ShortConv, cached for decoding
  recurrence: str = "linear"  # "linear" (gated linear attention family) or "delta" (delta rules), for FLOPs

  def mix(self, x: jax.Array, cache: Cache | None, mode: str,
          docs: Documents) -> tuple[jax.Array, Cache | None]:  # [B, T, D] -> [B, T, D], cache
    raise NotImplementedError

  def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None) -> jax.Array:  # [B, T, D] -> [B, T, D]
    if segment_ids is not None:
      segments.check_segment_ids(segment_ids, x.shape[:2])
    docs = Documents(segment_ids, segments.forward_positions(x.shape[1], segment_ids, positions))
    return self.mix(x, None, self.mode, docs)[0]

  def extra_flops_per_token(self, seq_len: int) -> float:
    """The recurrence in its chunk form; projections and convs are counted from their weights."""
    chunk = min(self.chunk_size, seq_len)
    return self.n_heads * recurrence_flops_per_token(self.recurrence, chunk, self.state_k, self.state_v)

  def init_cache(self, batch_size: int, max_len: int) -> Cache:
    """Zero fp32 state [B, H, K, V], zero conv buffers and an empty cursor; max_len is not needed."""
    del max_len
    state = jnp.zeros((batch_size, self.n_heads, self.state_k, self.state_v), jnp.float32)
    convs = {name: getattr(self, name).init_cache(batch_size) for name in self.conv_names}
    return {"state": state, "conv": convs, "cursor": segments.init_cursor(batch_size)}

  def decode(self, x: jax.Array, cache: Cache, pos: jax.Array, *, segment_ids: jax.Array | None = None,
             positions: jax.Array | None = None) -> tuple[jax.Array, Cache]:
    """x [B, T, D] after the cached tokens (T=1: one recurrent step; T>1: a chunked prefill).
    `pos` (the stream index) is unused: a recurrent cache has no slots."""
    del pos
    d = segments.decode_documents(cache["cursor"], x.shape[1], segment_ids, positions)
    cache = segments.restart({"state": cache["state"], "conv": cache["conv"]}, d.reset)
    y, cache = self.mix(x, cache, "recurrent" if x.shape[1] == 1 else self.mode, Documents(d.segment_ids, d.positions))
    return y, {**cache, "cursor": d.cursor}

  # Helpers for subclasses.

  @staticmethod
  def _linear(ctx: LayerContext, d_in: int, d_out: int, axes, *, rngs: nnx.Rngs, use_bias: bool = False):
    return Linear(d_in, d_out, axes=axes, use_bias=use_bias, dtype=ctx.dtype, param_dtype=ctx.param_dtype,
                  rngs=rngs)

  @staticmethod
  def _conv_module(ctx: LayerContext, channels: int, size: int, *, rngs: nnx.Rngs, axis: str | None = "heads",
                   use_bias: bool = False) -> ShortConv:
    return ShortConv(channels, size, axis=axis, use_bias=use_bias, dtype=ctx.dtype,
                     param_dtype=ctx.param_dtype, rngs=rngs)

  def _conv(self, name: str, x: jax.Array, cache: Cache | None, new_convs: dict,
            segment_ids: jax.Array | None) -> jax.Array:
    """Run conv `name` from its cached buffer (zeros without a cache) within each document; record
    the new buffer."""
    y, new_convs[name] = getattr(self, name)(x, None if cache is None else cache["conv"][name], segment_ids)
    return y

  def _recur(self, op, q, k, v, *gates, cache: Cache | None, mode: str, segment_ids: jax.Array | None,
             scale: float | None = None):
    """op(q, k, v, *gates) from the cached state, restarting at each document start; returns
    (o [B, T, H, V], final state or None)."""
    return op(q, k, v, *gates, scale=scale, initial_state=None if cache is None else cache["state"],
              output_final_state=cache is not None, mode=mode, chunk_size=self.chunk_size,
              segment_ids=segment_ids)

  @staticmethod
  def _new_cache(cache: Cache | None, state: jax.Array | None, convs: dict) -> Cache | None:
    return None if cache is None else {"state": state, "conv": convs}
