"""layers.core.Linear: values against numpy for any leading shape, and on CPU a kernel gradient without
transposing copies (its flat [N, in] matmul)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from layers.core import Linear


@pytest.mark.parametrize("shape", [(16,), (3, 16), (2, 5, 16)])
def test_linear_matches_numpy(shape):
  layer = Linear(16, 8, use_bias=True, rngs=nnx.Rngs(0))
  layer.bias[...] = jnp.arange(8, dtype=jnp.float32)
  x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  y = layer(jnp.asarray(x))
  assert y.shape == (*shape[:-1], 8)
  np.testing.assert_allclose(y, x @ np.asarray(layer.kernel[...]) + np.arange(8), rtol=1e-5, atol=1e-5)


def test_cpu_kernel_gradient_has_no_transposing_copies():
  """The [B, T, in] kernel gradient contracts B and T: XLA's CPU backend copied both operands transposed for it
  (the d=512 train step's largest ops) until Linear ran one [N, in] matmul."""
  graphdef, params = nnx.split(Linear(16, 32, rngs=nnx.Rngs(0)))
  x = jnp.ones((4, 8, 16))
  step = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.square(nnx.merge(graphdef, p)(x))), argnums=(0, 1)))
  hlo = step.lower(params, x).compile().as_text()
  copies = [line for line in hlo.splitlines() if line.strip().startswith(("%copy", "%transpose"))]
  assert not copies, copies
