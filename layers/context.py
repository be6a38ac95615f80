"""The shared dimensions a model hands to every layer it builds from the registry."""

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LayerContext:
  """Model-wide sizes and dtypes a registered layer may read.

  `features` is the width of the tensor the layer acts on: d_model for token mixers and
  feed-forwards, the hidden width for an activation built inside a feed-forward.
  """

  d_model: int
  n_heads: int = 1
  n_kv_heads: int = 1
  head_dim: int = 0
  d_ff: int = 0
  activation: str = "gelu"
  norm: str = "rmsnorm"
  layer_idx: int = 0
  n_layers: int = 1
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  features: int = 0
  attention_scale_mult: float = 1.0  # multiplies softmax attention's 1/sqrt(head_dim) (µP: models/parametrization.py)

  def __post_init__(self):
    if not self.head_dim:
      object.__setattr__(self, "head_dim", self.d_model // max(self.n_heads, 1))
    if not self.features:
      object.__setattr__(self, "features", self.d_model)

  def with_features(self, features: int) -> "LayerContext":
    return dataclasses.replace(self, features=features)
