"""Per-head RMSNorm of the mixer output, optionally gated by SiLU(W x) (GLA, Gated DeltaNet, RetNet).

Normalising each head's readout S^T q keeps the output scale independent of how much the state has
accumulated; the SiLU gate is the output gate of the reference layers (norm first, then gate).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers.core import make_param
from layers.norms import rms_norm


class HeadNorm(nnx.Module):
  """rms_norm(o) * scale [* silu(gate)] over each head's value dim, in fp32; returns o's dtype."""

  def __init__(self, head_dim: int, *, eps: float = 1e-5, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.scale = make_param(nnx.initializers.ones, rngs.params(), (head_dim,), param_dtype, ("norm",),
                            optim_group="no_decay")
    self.eps = eps

  def __call__(self, o: jax.Array, gate: jax.Array | None = None) -> jax.Array:  # [B, T, H, V]
    y = rms_norm(o.astype(jnp.float32), self.scale[...], self.eps)
    if gate is not None:
      y = y * jax.nn.silu(gate.astype(jnp.float32))
    return y.astype(o.dtype)
