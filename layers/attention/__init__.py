"""Softmax attention: the pure functions (`softmax_attention`, `forgetting_attention`) and the layers built on them."""

from layers.attention.forgetting_attention import forgetting_attention
from layers.attention.softmax_attention import softmax_attention

__all__ = ["forgetting_attention", "softmax_attention"]
