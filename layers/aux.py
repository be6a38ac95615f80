"""Side outputs of layers: auxiliary losses the training loop adds and metrics it logs.

A layer calls `self.sow(AuxLoss, name, value)` with a scalar already multiplied by its weight;
the loop sums every AuxLoss into the training loss and logs each by name. `self.sow(LayerMetric,
name, value)` values are only logged (averaged over the layers that sowed them).
"""

from flax import nnx


class AuxLoss(nnx.Intermediate):
  """A weighted scalar the training loss includes."""


class LayerMetric(nnx.Intermediate):
  """A scalar or small vector logged per step, never differentiated."""
