"""Short causal depthwise convolution (kernel ~4) with a cache of the last inputs, for decoding.

DeltaNet, Gated DeltaNet and Mamba-2 run q/k/v (or x/B/C) through it before the recurrence: a cheap
local token shift that the recurrent state alone models poorly. The cache holds the previous
`kernel_size - 1` inputs, so a forward over T tokens with a cache equals the same tokens fed one by one.
With `segment_ids` the window never reaches into the previous document: inputs of another document
count as zeros, and the returned cache holds only inputs of the last token's document (zeros before
its start), so a cache is always the recent past of one document.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers.core import make_param
from layers.segments import document_index


def short_causal_conv(
  x: jax.Array,  # [B, T, C]
  weight: jax.Array,  # [W, C]; weight[-1] multiplies the current token
  bias: jax.Array | None,  # [C]
  cache: jax.Array | None = None,  # [B, W-1, C] previous inputs, oldest first; None = zeros
  segment_ids: jax.Array | None = None,  # [B, T]; the cache belongs to the first token's document
) -> tuple[jax.Array, jax.Array]:  # y [B, T, C], new cache [B, W-1, C]
  """y_t = sum_i weight[i] * x_{t-W+1+i} (+ bias), in fp32, over the inputs of x_t's document;
  returns x's dtype and the updated cache.

  >>> y, cache = short_causal_conv(jnp.ones((1, 5, 1)), jnp.ones((4, 1)), None,
  ...                              segment_ids=jnp.array([[0, 0, 0, 1, 1]]))
  >>> y[0, :, 0].tolist(), cache[0, :, 0].tolist()
  ([1.0, 2.0, 3.0, 1.0, 2.0], [0.0, 1.0, 1.0])
  """
  width = weight.shape[0]
  if cache is None:
    cache = jnp.zeros((x.shape[0], width - 1, x.shape[2]), x.dtype)
  window = jnp.concatenate([cache.astype(x.dtype), x], axis=1)  # [B, W-1+T, C]
  t = x.shape[1]
  if segment_ids is not None:
    doc = document_index(segment_ids)  # [B, T], 0 = the first token's document (the cache's)
    window_doc = jnp.pad(doc, ((0, 0), (width - 1, 0)))  # [B, W-1+T]
  w32 = weight.astype(jnp.float32)
  y = 0.0
  for i in range(width):
    tap = window[:, i : i + t].astype(jnp.float32) * w32[i]  # [B, T, C]
    if segment_ids is not None:
      tap = jnp.where((window_doc[:, i : i + t] == doc)[..., None], tap, 0.0)
    y = y + tap
  if bias is not None:
    y = y + bias.astype(jnp.float32)
  new_cache = window[:, t:]
  if segment_ids is not None:
    new_cache = jnp.where((window_doc[:, t:] == doc[:, -1:])[..., None], new_cache, 0)
  return y.astype(x.dtype), new_cache


class ShortConv(nnx.Module):
  """Depthwise causal conv over channels (+ optional SiLU), computed in `dtype`."""

  def __init__(
    self,
    channels: int,
    kernel_size: int = 4,
    *,
    axis: str | None = "heads",
    use_bias: bool = False,
    activation: bool = True,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    if kernel_size < 1:
      raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
    # Depthwise conv fan-in is kernel_size (PyTorch's Conv1d default scale).
    init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=0, out_axis=1)
    self.weight = make_param(init, rngs.params(), (kernel_size, channels), param_dtype, (None, axis))
    self.bias = (
      make_param(nnx.initializers.zeros, rngs.params(), (channels,), param_dtype, (axis,))
      if use_bias
      else None
    )
    self.kernel_size = kernel_size
    self.channels = channels
    self.activation = activation
    self.dtype = dtype

  def init_cache(self, batch_size: int) -> jax.Array:  # [B, W-1, C]
    return jnp.zeros((batch_size, self.kernel_size - 1, self.channels), self.dtype)

  def __call__(self, x: jax.Array, cache: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    bias = None if self.bias is None else self.bias[...]
    y, cache = short_causal_conv(x.astype(self.dtype), self.weight[...], bias, cache, segment_ids)
    return (jax.nn.silu(y) if self.activation else y), cache
