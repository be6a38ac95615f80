"""Softmax attention: the pure functions (`softmax_attention`, `block_softmax_attention`,
`forgetting_attention`) and the layers built on them."""

from layers.attention.block_softmax_attention import block_softmax_attention
from layers.attention.forgetting_attention import forgetting_attention
from layers.attention.softmax_attention import softmax_attention

__all__ = ["block_softmax_attention", "forgetting_attention", "softmax_attention"]
