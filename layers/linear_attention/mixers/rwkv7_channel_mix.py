"""RWKV-7 channel mixing (Peng et al., "RWKV-7 "Goose"", 2025): the feed-forward of an RWKV-7 block.

  k = ReLU(W_k (x + (x' - x) * mu_k))^2,   y = W_v k      (x' the previous token of the same document)
A squared-ReLU MLP on a token-shifted input, hidden width 4 D in the paper (d_ff here; the official code's
default is 4 D). Because it reads the previous token it is not a per-token feed-forward: it follows the
mixer contract (segment_ids, init_cache / decode with a one-token cache and a cursor; layers/registry.py)
and the LM calls it like a mixer. Initialisation from the official RWKV-LM x070 code: mu_k = 1 - (n / D)^(
(1 - l / L)^4), W_k orthogonal, W_v zero.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers import segments
from layers.context import LayerContext
from layers.core import Linear, make_param
from layers.linear_attention.mixers.rwkv7 import depth_ratios
from layers.token_shift import TokenShift


class RWKV7ChannelMix(nnx.Module):
  """RWKV-7 channel mixing; hidden defaults to ctx.d_ff."""

  def __init__(self, ctx: LayerContext, *, hidden: int = 0, rngs: nnx.Rngs):
    d, hidden = ctx.d_model, hidden or ctx.d_ff
    if hidden < 1:
      raise ValueError("rwkv7_channel_mix needs a hidden width: set model.d_ff (4 x d_model in RWKV-7) or "
                       "model.options.<name>.hidden")
    _, late = depth_ratios(ctx.layer_idx, ctx.n_layers)
    mu = 1.0 - (jnp.arange(d, dtype=jnp.float32) / d) ** (late**4)
    self.mu = make_param(lambda key, shape, dtype: mu.astype(dtype), rngs.params(), (d,), ctx.param_dtype,
                         ("embed",), optim_group="no_decay")
    kw = dict(dtype=ctx.dtype, param_dtype=ctx.param_dtype, rngs=rngs)
    self.key_proj = Linear(d, hidden, axes=("embed", "mlp"), kernel_init=jax.nn.initializers.orthogonal(1.0), **kw)
    self.value_proj = Linear(hidden, d, axes=("mlp", "embed"), kernel_init=nnx.initializers.zeros, **kw)
    self.shift = TokenShift(d, dtype=ctx.dtype)

  def _mix(self, x: jax.Array, prev: jax.Array) -> jax.Array:
    k = jax.nn.relu(self.key_proj(x + (prev - x) * self.mu[...].astype(x.dtype)))
    return self.value_proj(jnp.square(k))

  def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None) -> jax.Array:  # [B, T, D] -> [B, T, D]
    del positions
    if segment_ids is not None:
      segments.check_segment_ids(segment_ids, x.shape[:2])
    return self._mix(x, self.shift(x, None, segment_ids)[0])

  def init_cache(self, batch_size: int, max_len: int) -> dict:
    """The last token fed ([B, 1, D]) and the cursor; max_len is not needed."""
    del max_len
    return {"shift": self.shift.init_cache(batch_size), "cursor": segments.init_cursor(batch_size)}

  def decode(self, x: jax.Array, cache: dict, pos: jax.Array, *, segment_ids: jax.Array | None = None,
             positions: jax.Array | None = None) -> tuple[jax.Array, dict]:
    del pos
    d = segments.decode_documents(cache["cursor"], x.shape[1], segment_ids, positions)
    prev, shift = self.shift(x, segments.restart(cache["shift"], d.reset), d.segment_ids)
    return self._mix(x, prev), {"shift": shift, "cursor": d.cursor}
