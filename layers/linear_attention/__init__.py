"""Linear attention: pure ops (`ops/`: recurrent / chunk / parallel forms) and the mixer layers built
on them (`mixers/`). The public names here are the ops."""

from layers.linear_attention.ops import (
  delta_rule,
  dplr_delta_rule,
  gated_delta_product,
  gated_delta_rule,
  gla,
  kda,
  linear_attn,
  simple_gla,
)

__all__ = [
  "delta_rule",
  "dplr_delta_rule",
  "gated_delta_product",
  "gated_delta_rule",
  "gla",
  "kda",
  "linear_attn",
  "simple_gla",
]
