"""SMoE-Dropout (Chen et al., "Sparse MoE as the New Dropout: Scaling Dense and Self-Slimmable Transformers",
ICLR 2023), registered as the ffn "smoe_dropout".

The dense feed-forward of width d_ff is split evenly into n_experts experts of width d_ff / n_experts. A
frozen, randomly initialised router picks each token's top-k experts, and k grows linearly during training
from `top_k_start` to all experts:

  k(step) = top_k_start + round((n_experts - top_k_start) * min(step, ramp_steps) / ramp_steps)

so the layer ends training as the whole dense feed-forward, its experts mixed by the router's weights.
Trained this way the model is "self-slimmable": evaluated with fewer experts it degrades smoothly, so one
model serves several compute budgets (`nnx.view(model, top_k=k)`; the training loop's `train.eval_top_k`
reports the eval loss at each k).

The schedule reads a step counter the layer keeps itself (a non-parameter variable, checkpointed with the
train state) and advances in `end_step()`, which the training loop calls once per optimizer step
(`layers.aux.end_step`; a loop of your own calls it after each update). A training forward routes with
k(counter); the k-dependent part (top-k, dispatch, experts) is one `jax.lax.switch` branch per possible k,
so one compiled step runs only k experts' work at every point of the schedule (at k = n_experts the
dense ffn over all experts' units, without dispatch: `Experts.weighted_sum`). Under a mesh with an "expert"
axis the branches use the MoE layer's expert parallelism; that combination is not tested here.

Defaults from the authors' code (github.com/VITA-Group/Random-MoE-as-Dropout), Transformer-XL on enwik8
(script/table1/transformer_xl/smoe_dropout.sh): 16 experts; k from 8 to 16 (`--moe-top-k-min 8
--moe-top-k-max 16`, mode `linear_increase`, the formula above with Python's round) over the whole run
(`--dynamic_overall_steps` = `--max_step`: set `ramp_steps` to train.steps; 0 keeps k at top_k_start); its
dense baseline has d_inner = 16 x the expert width (script .../directly_dense_training.sh), hence experts of
width d_ff / n_experts. Router (custom_gate.CustomNaiveGate, frozen with `--freeze_gate`): an nn.Linear with
bias, top-k of its logits, weights softmax over the k chosen logits (= `top_k_route(..., renormalize=True)`);
its initialisation is `routing.fixed_random_projection`. Experts: Linear + ReLU + Linear, with biases
(fmoe's FMoETransformerMLP). Evaluation at k in (1, 2, 4, 8, 16, 32, 64) up to n_experts (train.py, end).
Not reproduced: the dropout inside each expert (this codebase has no dropout). Not confirmed against the
paper's text (only its abstract and figure caption were reachable): whether its other experiments (BERT,
RoBERTa) start k elsewhere than 8 of 16.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from layers.aux import LayerMetric
from layers.context import LayerContext
from layers.forward_flops import forward_flops_per_token
from layers.moe.moe import MoE

PAPER_EXPERT_OPTIONS = {"activation": "relu", "use_bias": True}  # fmoe's expert MLP, for expert_ffn="mlp"


class ScheduleStep(nnx.Variable):
  """Optimizer steps taken, for the expert schedule: not a parameter (no gradient), saved in checkpoints."""


def active_experts(step: jax.Array | int, *, top_k_start: int, n_experts: int, ramp_steps: int) -> jax.Array:
  """k(step): linear from top_k_start at step 0 to n_experts at ramp_steps, rounded half to even.  -> int32

    >>> [int(active_experts(s, top_k_start=8, n_experts=16, ramp_steps=400)) for s in (0, 25, 75, 200, 399, 900)]
    [8, 8, 10, 12, 16, 16]
  """
  if not ramp_steps:
    return jnp.int32(top_k_start)
  frac = jnp.minimum(jnp.asarray(step, jnp.float32), ramp_steps) / ramp_steps
  return (top_k_start + jnp.round((n_experts - top_k_start) * frac)).astype(jnp.int32)


def mean_active_experts(*, top_k_start: int, n_experts: int, ramp_steps: int) -> float:
  """The mean of k(step) over steps 0 .. ramp_steps - 1 (a run as long as its ramp): its average compute."""
  if not ramp_steps:
    return float(top_k_start)
  return float(np.mean(np.asarray(active_experts(np.arange(ramp_steps), top_k_start=top_k_start,
                                                 n_experts=n_experts, ramp_steps=ramp_steps))))


class SMoEDropout(MoE):
  """SMoE-Dropout feed-forward: a fixed random router, k rising from top_k_start to n_experts over ramp_steps.

  expert_hidden 0: ctx.d_ff // n_experts (the dense ffn split evenly). expert_options None: the paper's
  expert for expert_ffn "mlp" (ReLU, biases), the ffn's own defaults otherwise. A view
  `nnx.view(model, top_k=k)` routes every token to k experts whatever the schedule says (evaluation at
  several k; `MoE.set_view`). Logged: layers/smoe_top_k (the k in force) besides the MoE layer's expert
  load metrics.
  FLOPs per token count the schedule's mean k (the run's average cost); active parameters its final k
  (all experts: the model the run ends with).
  """

  def __init__(self, ctx: LayerContext, *, rngs: nnx.Rngs, n_experts: int = 16, top_k_start: int = 8,
               ramp_steps: int = 0, expert_ffn: str = "mlp", expert_hidden: int = 0,
               expert_options: dict | None = None, seed: int = 0, grouped_matmul: str = "auto",
               tile_size: int = 128):
    if not 1 <= top_k_start <= n_experts:
      raise ValueError(f"top_k_start={top_k_start} must be in [1, n_experts={n_experts}]")
    if ramp_steps < 0:
      raise ValueError(f"ramp_steps={ramp_steps} must be >= 0 (the paper: train.steps; 0 keeps k at top_k_start)")
    if expert_options is None:
      expert_options = PAPER_EXPERT_OPTIONS if expert_ffn == "mlp" else {}
    super().__init__(ctx, rngs=rngs, n_experts=n_experts, top_k=n_experts, expert_ffn=expert_ffn,
                     expert_hidden=expert_hidden or max(1, ctx.d_ff // n_experts), expert_options=expert_options,
                     router="random", renormalize=True, load_balance_weight=0.0, z_loss_weight=0.0, seed=seed,
                     grouped_matmul=grouped_matmul, tile_size=tile_size)
    self.top_k_start, self.ramp_steps = top_k_start, ramp_steps
    self.step = ScheduleStep(jnp.zeros((), jnp.int32))

  def active_top_k(self) -> jax.Array:
    """The k the schedule sets at the current step.  -> int32 scalar"""
    return active_experts(self.step[...], top_k_start=self.top_k_start, n_experts=self.n_experts,
                          ramp_steps=self.ramp_steps)

  def end_step(self) -> None:
    """Once per optimizer step: advance the schedule."""
    self.step[...] = self.step[...] + 1

  def flops_per_token(self, seq_len: int) -> float:
    mean_k = mean_active_experts(top_k_start=self.top_k_start, n_experts=self.n_experts, ramp_steps=self.ramp_steps)
    return forward_flops_per_token(self.router, seq_len) + mean_k / self.n_experts * forward_flops_per_token(
      self.experts, seq_len)

  def _route(self, x, logits, lead: tuple[int, ...]):
    if self.view_top_k is not None:
      return self._token_choice(x, logits, lead, top_k=self.view_top_k)
    k = self.active_top_k()
    self.sow(LayerMetric, "smoe_top_k", k.astype(jnp.float32))
    ks = range(self.top_k_start, self.n_experts + 1) if self.ramp_steps else (self.top_k_start,)
    branches = [functools.partial(self._token_choice, lead=lead, top_k=j) for j in ks]
    return jax.lax.switch(k - self.top_k_start, branches, x, logits)
