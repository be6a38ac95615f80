"""Rotary position embeddings (rotate-half convention), angles in fp32."""

import jax
import jax.numpy as jnp


def apply_rope(x: jax.Array, positions: jax.Array, theta: float = 10000.0) -> jax.Array:
  """Rotate pairs (x[..., :H/2], x[..., H/2:]) by position-dependent angles.

  x: [B, T, N, H]; positions: [T] or [B, T] int. Returns x's dtype.
  """
  half = x.shape[-1] // 2
  freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [H/2]
  angles = positions.astype(jnp.float32)[..., None] * freqs  # [(B,) T, H/2]
  if angles.ndim == 2:
    angles = angles[None]
  sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]  # [B, T, 1, H/2]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
