"""What layers hand the training loop: auxiliary losses it adds, metrics it logs, and a per-step hook.

A layer calls `self.sow(AuxLoss, name, value)` with a scalar already multiplied by its weight;
the loop sums every AuxLoss into the training loss and logs each by name. `self.sow(LayerMetric,
name, value)` values are only logged (averaged over the layers that sowed them under the same name;
a layer that wants its own line puts its index in the name, e.g. "moe_expert_load/3").
A layer with state to commit once per optimizer step, after all its micro-batches (the MoE
auxiliary-loss-free balancing bias, SMoE-Dropout's step counter for its expert schedule), defines
`end_step()`; the loop calls `end_step(model)`. Such state lives in non-parameter variables, so it is
checkpointed with the train state and needs nothing from train/.
"""

from flax import nnx


class AuxLoss(nnx.Intermediate):
  """A weighted scalar the training loss includes."""


class LayerMetric(nnx.Intermediate):
  """A scalar or small vector logged per step, never differentiated."""


def end_step(model: nnx.Module) -> None:
  """Call `end_step()` on every sub-module that defines it; once per optimizer step, after the gradients."""
  for _, module in nnx.iter_modules(model):
    if hasattr(module, "end_step"):
      module.end_step()
