"""Pallas kernels (GPU: Triton, TPU: Mosaic) for chunk GLA and the chunk gated delta rule, forward and backward.

Reached through the ops' `implementation="pallas"`; on CPU they run in Pallas interpret mode (tests only).
"""

from layers.linear_attention.pallas import gated_delta_rule, gla

__all__ = ["gated_delta_rule", "gla"]
