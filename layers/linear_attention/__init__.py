"""Linear attention: ops in recurrent / chunk / parallel forms, and the mixer layers built on them."""

from layers.linear_attention.delta_rule import delta_rule
from layers.linear_attention.gated_delta_rule import gated_delta_rule
from layers.linear_attention.gla import gla
from layers.linear_attention.linear_attn import linear_attn
from layers.linear_attention.simple_gla import simple_gla

__all__ = ["delta_rule", "gated_delta_rule", "gla", "linear_attn", "simple_gla"]
