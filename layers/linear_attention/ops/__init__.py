"""Linear-attention ops: pure functions, one file per op, each with its recurrent form (the
specification) beside the dispatch to its chunk form; shared chunk forms in `chunk_forms.py`,
argument checks / dtype policy / chunking helpers / document masks in `common.py`. Every op takes
`segment_ids` [B, T] (packed documents, each run from a zero state)."""

from layers.linear_attention.ops.delta_rule import delta_rule
from layers.linear_attention.ops.gated_delta_rule import gated_delta_rule
from layers.linear_attention.ops.gla import gla
from layers.linear_attention.ops.linear_attn import linear_attn
from layers.linear_attention.ops.simple_gla import simple_gla

__all__ = ["delta_rule", "gated_delta_rule", "gla", "linear_attn", "simple_gla"]
