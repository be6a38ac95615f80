"""Parameters with logical axis names, and the dense / embedding layers every model shares.

Every parameter carries `axes` metadata: one logical name per dimension (e.g. ("embed", "mlp")).
train/ maps logical names to mesh axes with rules from the config. `optim_group` metadata puts a
parameter in an optimizer group ("no_decay", "activation", ...); 0/1-D parameters are never decayed.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[..., jax.Array]


def make_param(
  init: Initializer,
  key: jax.Array,
  shape: Sequence[int],
  dtype,
  axes: Sequence[str | None],
  optim_group: str | None = None,
) -> nnx.Param:
  """A Param initialised by `init(key, shape, dtype)`, tagged with logical axes (and an optimizer group)."""
  if len(axes) != len(shape):
    raise ValueError(f"axes {tuple(axes)} must name each of the {len(shape)} dims of shape {tuple(shape)}")
  meta = {"axes": tuple(axes)}
  if optim_group is not None:
    meta["optim_group"] = optim_group
  return nnx.Param(init(key, tuple(shape), dtype), **meta)


def _flat_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x [..., in] @ kernel [in, out] as one [N, in] matmul. For x [B, T, in] the kernel gradient contracts two axes,
  and XLA's CPU backend then copies both operands transposed (the d=512 train step's largest ops, 0.76x its CPU
  time without them). CPU only: on a mesh that shards T, the merged N axis could cost a resharding. Chosen when
  tracing (the default backend), not by lax.platform_dependent: its cond keeps the residuals of both branches
  for autodiff, which doubled the activations train.memory estimates from the abstract backward pass."""
  return jnp.dot(x.reshape(-1, x.shape[-1]), kernel).reshape(*x.shape[:-1], kernel.shape[-1])


class Linear(nnx.Module):
  """y = x @ W (+ b), computed in `dtype`, parameters stored in `param_dtype`."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    axes: tuple[str | None, str | None] = ("embed", "mlp"),
    use_bias: bool = False,
    kernel_init: Initializer | None = None,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    init = kernel_init or nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    self.kernel = make_param(init, rngs.params(), (in_features, out_features), param_dtype, axes)
    self.bias = (
      make_param(nnx.initializers.zeros, rngs.params(), (out_features,), param_dtype, axes[1:])
      if use_bias
      else None
    )
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., in] -> [..., out]
    x, kernel = x.astype(self.dtype), self.kernel[...].astype(self.dtype)
    y = (_flat_matmul if jax.default_backend() == "cpu" else jnp.dot)(x, kernel)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class Embed(nnx.Module):
  """Token embedding; `attend` reuses the table as a tied output projection."""

  def __init__(self, vocab_size: int, features: int, *, stddev: float = 0.02, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    init = nnx.initializers.normal(stddev=stddev)
    self.embedding = make_param(init, rngs.params(), (vocab_size, features), param_dtype, ("vocab", "embed"))
    self.dtype = dtype

  def __call__(self, tokens: jax.Array) -> jax.Array:  # [B, T] int -> [B, T, D]
    return jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)

  def flops_per_token(self, seq_len: int) -> float:
    """A lookup costs no FLOPs; a tied output projection is counted by the model that uses it."""
    return 0.0

  def attend(self, x: jax.Array) -> jax.Array:  # [B, T, D] -> [B, T, V]
    return jnp.dot(x.astype(self.dtype), self.embedding[...].astype(self.dtype).T)
