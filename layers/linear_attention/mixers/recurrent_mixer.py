"""The plumbing every linear-attention mixer shares: one `mix` method serves training and decoding.

A subclass implements `mix(x, cache, mode, pos) -> (y, new_cache)`: projections, short convs, gates,
one recurrent op, output norm and projection. With `cache=None` it is the training forward (chunk
op from a zero state); with a cache it starts from the cached fp32 state and conv buffers and
returns the updated cache, so `decode` on one token is a recurrent step and on T tokens a prefill.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers.context import LayerContext
from layers.core import Linear
from layers.linear_attention.mixers.short_conv import ShortConv
from layers.linear_attention.ops.cost import recurrence_flops_per_token

Cache = dict  # {"state": [B, H, K, V] fp32, "conv": {name: [B, W-1, C]}}


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
          pos: jax.Array) -> tuple[jax.Array, Cache | None]:  # [B, T, D] -> [B, T, D], cache
    raise NotImplementedError

  def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, D] -> [B, T, D]
    return self.mix(x, None, self.mode, jnp.zeros((), jnp.int32))[0]

  def extra_flops_per_token(self, seq_len: int) -> float:
    """The recurrence in its chunk form; projections and convs are counted from their weights."""
    chunk = min(self.chunk_size, seq_len)
    return self.n_heads * recurrence_flops_per_token(self.recurrence, chunk, self.state_k, self.state_v)

  def init_cache(self, batch_size: int, max_len: int) -> Cache:
    """Zero fp32 state [B, H, K, V] and conv buffers; the state size does not grow with max_len."""
    del max_len
    state = jnp.zeros((batch_size, self.n_heads, self.state_k, self.state_v), jnp.float32)
    convs = {name: getattr(self, name).init_cache(batch_size) for name in self.conv_names}
    return {"state": state, "conv": convs}

  def decode(self, x: jax.Array, cache: Cache, pos: jax.Array) -> tuple[jax.Array, Cache]:
    """x [B, T, D] from position `pos` on (T=1: one recurrent step; T>1: a chunked prefill)."""
    return self.mix(x, cache, "recurrent" if x.shape[1] == 1 else self.mode, pos)

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

  def _conv(self, name: str, x: jax.Array, cache: Cache | None, new_convs: dict) -> jax.Array:
    """Run conv `name` from its cached buffer (zeros without a cache); record the new buffer."""
    y, new_convs[name] = getattr(self, name)(x, None if cache is None else cache["conv"][name])
    return y

  def _recur(self, op, q, k, v, *gates, cache: Cache | None, mode: str, scale: float | None = None):
    """op(q, k, v, *gates) from the cached state; returns (o [B, T, H, V], final state or None)."""
    return op(q, k, v, *gates, scale=scale, initial_state=None if cache is None else cache["state"],
              output_final_state=cache is not None, mode=mode, chunk_size=self.chunk_size)

  @staticmethod
  def _new_cache(cache: Cache | None, state: jax.Array | None, convs: dict) -> Cache | None:
    return None if cache is None else {"state": state, "conv": convs}
