"""Auxiliary-loss-free load balancing (DeepSeek-V3; Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing
Strategy for Mixture-of-Experts").

A per-expert bias b [E] is added to the routing scores for top-k selection only; the gate values use the
unbiased scores, so the bias steers which experts are chosen without entering the function the gates
compute or receiving a gradient. While training, every forward adds its expert counts to `load`; once per
optimizer step `end_step` moves

  b_e += rate * sign(mean_e(load) - load_e)      (overloaded experts down, underloaded ones up)

and clears the counts. Counting over the step and updating at its end makes gradient accumulation equal one
big batch: every micro-batch routes with the same bias, and the update sees the whole batch's load.
`bias` and `load` are non-parameter variables: they live in the train state's "rest", are checkpointed with
it, and survive a resume. Evaluation forwards (`nnx.view(model, deterministic=True)` or `model.eval()`)
neither count nor update. A training loop other than train/ calls `layers.aux.end_step(model)` after each
optimizer step.
"""

import jax
import jax.numpy as jnp
from flax import nnx


class BalanceState(nnx.Variable):
  """Non-parameter state of the auxiliary-loss-free balancer: no gradient, saved in checkpoints."""


def bias_update(bias: jax.Array, load: jax.Array, rate: float) -> jax.Array:
  """b + rate * sign(mean(load) - load).  bias [E] fp32, load [E] counts -> [E] fp32

    >>> bias_update(jnp.zeros(3), jnp.array([5, 1, 3]), 0.5).tolist()  # mean load 3
    [-0.5, 0.5, 0.0]
  """
  load = load.astype(jnp.float32)
  return bias + rate * jnp.sign(jnp.mean(load) - load)


class BalanceBias(nnx.Module):
  """The bias [E] (fp32) and the expert counts [E] (int32) gathered since the last optimizer step."""

  def __init__(self, n_experts: int, rate: float):
    self.rate = rate
    self.bias = BalanceState(jnp.zeros((n_experts,), jnp.float32))
    self.load = BalanceState(jnp.zeros((n_experts,), jnp.int32))
    self.deterministic = False

  def set_view(self, deterministic: bool | None = None):
    """`nnx.view(model, deterministic=True)` (evaluation) stops the counting."""
    if deterministic is not None:
      self.deterministic = deterministic

  def selection_bias(self) -> jax.Array:
    """The bias [E] to add to the scores for top-k selection (no gradient)."""
    return jax.lax.stop_gradient(self.bias[...])

  def record(self, counts: jax.Array) -> None:
    """Add this forward's expert counts [E] to the step's load (training forwards only)."""
    if not self.deterministic:
      self.load[...] = self.load[...] + jax.lax.stop_gradient(counts).astype(jnp.int32)

  def end_step(self) -> None:
    """Once per optimizer step: move the bias against the step's load and clear the counts."""
    self.bias[...] = bias_update(self.bias[...], self.load[...], self.rate)
    self.load[...] = jnp.zeros_like(self.load[...])
