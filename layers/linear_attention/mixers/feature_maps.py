"""Feature maps phi for linear attention: softmax(q k^T) is replaced by phi(q) phi(k)^T.

Fixed maps: identity, elu+1 (Katharopoulos et al.), elu (TransNormer's NormAttention, which has no
denominator to keep positive), relu. Hedgehog (Zhang et al., ICLR 2024): a
learnable per-head linear map followed by softmax over features of [xW, -xW], which doubles the feature
dimension; W starts at the identity and is not weight-decayed (decay would pull it towards a uniform map).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from layers.core import make_param

FIXED: dict[str, Callable[[jax.Array], jax.Array]] = {
  "identity": lambda x: x,
  "elu+1": lambda x: jax.nn.elu(x) + 1.0,
  "elu": jax.nn.elu,
  "relu": jax.nn.relu,
}
NAMES = (*FIXED, "hedgehog")


def hedgehog(x: jax.Array, weight: jax.Array) -> jax.Array:
  """[B, T, H, K] x [H, K, F] -> [B, T, H, 2F]: softmax over features of xW and of -xW, in fp32."""
  z = jnp.einsum("bthk,hkf->bthf", x.astype(jnp.float32), weight.astype(jnp.float32))
  return jnp.concatenate([jax.nn.softmax(z, axis=-1), jax.nn.softmax(-z, axis=-1)], axis=-1).astype(x.dtype)


class FeatureMap(nnx.Module):
  """phi applied per head to q or k [B, T, H, K]; `out_dim` is the feature size the state uses."""

  def __init__(self, name: str, n_heads: int, head_dim: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if name not in NAMES:
      raise ValueError(f"unknown feature map {name!r}; choose from {NAMES}")
    self.name = name
    self.out_dim = 2 * head_dim if name == "hedgehog" else head_dim
    eye = jnp.broadcast_to(jnp.eye(head_dim), (n_heads, head_dim, head_dim))
    self.weight = (
      make_param(lambda key, shape, dtype: eye.astype(dtype), rngs.params(), (n_heads, head_dim, head_dim),
                 param_dtype, ("heads", None, None), optim_group="no_decay")
      if name == "hedgehog"
      else None
    )

  def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, H, K] -> [B, T, H, out_dim]
    if self.weight is not None:
      return hedgehog(x, self.weight[...])
    return FIXED[self.name](x)
