"""Softmax attention: the pure function (`softmax_attention`) and the layers built on it."""

from layers.attention.softmax_attention import softmax_attention

__all__ = ["softmax_attention"]
