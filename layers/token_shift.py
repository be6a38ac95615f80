"""Token shift: each token reads the previous token of its document (RWKV's time / channel mixing, the
Forgetting Transformer's KV-shift).

`token_shift` returns x_{t-1} for every t, zeros at a document start, and a one-token cache (the last
input) so that decoding token by token continues exactly where a forward left off. It is the width-2
case of a short causal convolution with the data-dependent mixing left to the caller
(lerp(x_t, x_{t-1}, mu) in RWKV, alpha_t x_{t-1} + (1 - alpha_t) x_t in FoX). Under a "sequence" mesh axis
each slice of T reads its first token's predecessor from the previous slice (a one-token halo exchange,
layers.sequence_parallel.with_halo).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers import segments, sequence_parallel


def token_shift(
  x: jax.Array,  # [B, T, C]
  cache: jax.Array | None = None,  # [B, 1, C]: the token before x[:, 0] (same document); None = zeros
  segment_ids: jax.Array | None = None,  # [B, T]; the cache belongs to the first token's document
) -> tuple[jax.Array, jax.Array]:  # previous tokens [B, T, C], new cache [B, 1, C]
  """(x_{t-1} within x_t's document, zeros at a document start; the new cache x[:, -1:]).

  >>> prev, cache = token_shift(jnp.arange(1.0, 6.0)[None, :, None], segment_ids=jnp.array([[0, 0, 0, 1, 1]]))
  >>> prev[0, :, 0].tolist(), cache[0, :, 0].tolist()
  ([0.0, 1.0, 2.0, 0.0, 4.0], [5.0])
  """
  if cache is None and sequence_parallel.active_mesh() is not None:  # T split: the halo is the previous slice's
    prev, caches = sequence_parallel.with_halo(token_shift, x, (), segment_ids, 1)
    return prev, caches[:, -1:]
  first = jnp.zeros_like(x[:, :1]) if cache is None else cache.astype(x.dtype)
  prev = jnp.concatenate([first, x[:, :-1]], axis=1)
  if segment_ids is not None:
    prev = jnp.where(segments.document_starts(segment_ids)[..., None], jnp.zeros_like(prev), prev)
  return prev, x[:, -1:]


class TokenShift(nnx.Module):
  """`token_shift` with the interface of ShortConv (init_cache, __call__(x, cache, segment_ids)), so a
  RecurrentMixer caches and restarts it like its short convs. No parameters."""

  def __init__(self, channels: int, *, dtype=jnp.float32):
    self.channels, self.dtype = channels, dtype

  def init_cache(self, batch_size: int) -> jax.Array:  # [B, 1, C]
    return jnp.zeros((batch_size, 1, self.channels), self.dtype)

  def __call__(self, x: jax.Array, cache: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    return token_shift(x.astype(self.dtype), cache, segment_ids)
