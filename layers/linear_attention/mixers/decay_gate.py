"""Mamba-2 style data-dependent decay: g = -exp(A_log) * softplus(a + dt_bias), a scalar per head or
one per key channel.

Used by Gated DeltaNet and Mamba-2 (per head) and Kimi Delta Attention (per key channel: dt_bias
[H, K], A_log still per head). A = exp(A_log) > 0 is the per-head decay rate and dt > 0 the
per-token step, so g = -A dt <= 0 is a log-decay. Init as the reference layers: A ~ U(a_low, a_high),
dt ~ log-uniform [dt_min, dt_max] stored as inverse-softplus in dt_bias. Both are tagged
optim_group="no_decay": weight decay would pull them towards A = 1, dt = softplus(0).
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from layers.core import make_param


def a_log_init(low: float, high: float):
  """log U(low, high); U samples are floored at 1e-4 so that log stays finite."""

  def init(key, shape, dtype):
    return jnp.log(jnp.maximum(jax.random.uniform(key, shape, jnp.float32, low, high), 1e-4)).astype(dtype)

  return init


def dt_bias_init(dt_min: float, dt_max: float, dt_floor: float = 1e-4):
  """softplus^-1(dt), dt log-uniform in [dt_min, dt_max] (floored at dt_floor)."""

  def init(key, shape, dtype):
    u = jax.random.uniform(key, shape, jnp.float32)
    dt = jnp.maximum(jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)), dt_floor)
    return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)

  return init


def decay(a: jax.Array, a_log: jax.Array, dt_bias: jax.Array) -> tuple[jax.Array, jax.Array]:
  """a [B, T, H] -> (g = -exp(A_log) * dt [B, T, H], dt = softplus(a + dt_bias)), both fp32 (a [B, T, H, K]
  with a_log [H, 1] and dt_bias [H, K] gives [B, T, H, K])."""
  dt = jax.nn.softplus(a.astype(jnp.float32) + dt_bias.astype(jnp.float32))
  return -jnp.exp(a_log.astype(jnp.float32)) * dt, dt


class DecayGate(nnx.Module):
  """Holds A_log [H] and dt_bias ([H], or [H, K] with head_channels=K); maps logits a [B, T, H] (or
  [B, T, H, K]) to (g, dt) of the same shape, in fp32."""

  def __init__(self, n_heads: int, *, a_range: tuple[float, float], head_channels: int = 0,
               dt_range: tuple[float, float] = (1e-3, 0.1), param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.A_log = make_param(a_log_init(*a_range), rngs.params(), (n_heads,), param_dtype, ("heads",),
                            optim_group="no_decay")
    shape, axes = ((n_heads, head_channels), ("heads", None)) if head_channels else ((n_heads,), ("heads",))
    self.dt_bias = make_param(dt_bias_init(*dt_range), rngs.params(), shape, param_dtype, axes,
                              optim_group="no_decay")

  def __call__(self, a: jax.Array) -> tuple[jax.Array, jax.Array]:
    a_log, dt_bias = self.A_log[...], self.dt_bias[...]
    return decay(a, a_log if dt_bias.ndim == 1 else a_log[:, None], dt_bias)
