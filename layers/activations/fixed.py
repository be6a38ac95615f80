"""Fixed elementwise activations, as registry constructors (they ignore the context)."""

import jax
import jax.numpy as jnp
from flax import nnx

from layers.context import LayerContext


def relu2_fn(x: jax.Array) -> jax.Array:
  """Squared ReLU (Primer; "ReLU^2 wins")."""
  return jnp.square(jax.nn.relu(x))


def _fixed(fn):
  def ctor(ctx: LayerContext, *, rngs: nnx.Rngs):
    del ctx, rngs
    return fn

  ctor.__doc__ = f"Registry constructor for {getattr(fn, '__name__', fn)}."
  return ctor


relu = _fixed(jax.nn.relu)
leaky_relu = _fixed(jax.nn.leaky_relu)  # negative slope 0.01, as PAU compares against
gelu = _fixed(lambda x: jax.nn.gelu(x, approximate=False))
gelu_tanh = _fixed(lambda x: jax.nn.gelu(x, approximate=True))
silu = _fixed(jax.nn.silu)
relu2 = _fixed(relu2_fn)
tanh = _fixed(jnp.tanh)
sigmoid = _fixed(jax.nn.sigmoid)
identity = _fixed(lambda x: x)
