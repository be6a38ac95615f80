"""Per-head RMSNorm of the mixer output, optionally gated by SiLU(W x) (GLA, Gated DeltaNet, RetNet) or
sigmoid(W x) (Kimi Delta Attention, the Forgetting Transformer's "Pro" block).

Normalising each head's readout S^T q keeps the output scale independent of how much the state has
accumulated; the gate is the output gate of the reference layers (norm first, then gate).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers.core import make_param
from layers.norms import rms_norm

GATE_ACTIVATIONS = {"silu": jax.nn.silu, "sigmoid": jax.nn.sigmoid}


class HeadNorm(nnx.Module):
  """rms_norm(o) * scale [* act(gate)] over each head's value dim, in fp32; returns o's dtype.
  act: gate_activation, "silu" or "sigmoid"."""

  def __init__(self, head_dim: int, *, eps: float = 1e-5, gate_activation: str = "silu", param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    if gate_activation not in GATE_ACTIVATIONS:
      raise ValueError(f"gate_activation must be one of {sorted(GATE_ACTIVATIONS)}, got {gate_activation!r}")
    self.scale = make_param(nnx.initializers.ones, rngs.params(), (head_dim,), param_dtype, ("norm",),
                            optim_group="no_decay")
    self.eps = eps
    self.gate_activation = gate_activation

  def __call__(self, o: jax.Array, gate: jax.Array | None = None) -> jax.Array:  # [B, T, H, V]
    y = rms_norm(o.astype(jnp.float32), self.scale[...], self.eps)
    if gate is not None:
      y = y * GATE_ACTIVATIONS[self.gate_activation](gate.astype(jnp.float32))
    return y.astype(o.dtype)
