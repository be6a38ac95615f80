"""Sparse mixture-of-experts feed-forward (registered as the ffn "moe").

y = shared(x) + sum over routed experts e of w_e(x) * expert_e(x)

Routing: token choice (top-k of softmax / sigmoid scores) or expert choice; learned or fixed
random router. Dispatch: "dropless" (sort by expert + grouped matmul, `ragged_dot` or tiled,
for MLP / GLU experts; any other ffn falls back to buffers with capacity N, which cannot drop)
or "capacity" (buffers of ceil(factor * N * k / E) slots, overflow dropped).
Shared experts (DeepSeekMoE): n_shared experts' worth of always-on feed-forward, built as one
ffn of width n_shared * expert_hidden.

Expert parallelism switches on by itself for token choice when a mesh with an "expert" axis of
size > 1 is set with `jax.set_mesh(mesh)` while the step is traced (option expert_parallel);
expert choice always runs under XLA's automatic sharding.

Side outputs: AuxLoss "moe_load_balance" (Switch), "moe_z_loss" (ST-MoE), each already times its
weight; LayerMetric "moe_expert_load" [E], "moe_dropped_fraction", "moe_router_entropy".
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers import registry
from layers.aux import AuxLoss, LayerMetric
from layers.context import LayerContext
from layers.flops import active_params, forward_flops_per_token
from layers.moe import dispatch, losses
from layers.moe.expert_parallel import active_mesh, expert_parallel_apply
from layers.moe.experts import GROUPED_MATMULS, Experts
from layers.moe.routing import Router, expert_choice_route, top_k_route

ROUTINGS = ("token_choice", "expert_choice")
DISPATCHES = ("dropless", "capacity")


class MoE(nnx.Module):
  def __init__(self, ctx: LayerContext, *, n_experts: int, top_k: int, expert_ffn: str, expert_hidden: int,
               expert_options: dict | None, n_shared: int, routing: str, router: str, score: str,
               renormalize: bool, jitter: float, dispatch: str, capacity_factor: float,
               load_balance_weight: float, z_loss_weight: float, expert_parallel: bool, seed: int,
               grouped_matmul: str, tile_size: int, rngs: nnx.Rngs):
    if routing not in ROUTINGS:
      raise ValueError(f"unknown routing {routing!r}; choose from {ROUTINGS}")
    if dispatch not in DISPATCHES:
      raise ValueError(f"unknown dispatch {dispatch!r}; choose from {DISPATCHES}")
    if not 1 <= top_k <= n_experts:
      raise ValueError(f"top_k={top_k} must be in [1, n_experts={n_experts}]")
    self.n_experts, self.top_k = n_experts, top_k
    self.routing, self.score, self.renormalize = routing, score, renormalize
    self.dispatch, self.capacity_factor = dispatch, capacity_factor
    self.load_balance_weight, self.z_loss_weight = load_balance_weight, z_loss_weight
    self.expert_parallel = expert_parallel
    if grouped_matmul == "auto":
      grouped_matmul = "tiled" if jax.default_backend() == "cpu" else "ragged_dot"
    if grouped_matmul not in GROUPED_MATMULS:
      raise ValueError(f"unknown grouped_matmul {grouped_matmul!r}; choose 'auto' or {GROUPED_MATMULS}")
    self.grouped_matmul, self.tile_size = grouped_matmul, tile_size
    self.router = Router(ctx.d_model, n_experts, kind=router, jitter=jitter, seed=seed + ctx.layer_idx,
                         param_dtype=ctx.param_dtype, rngs=rngs)
    self.experts = Experts(ctx, n_experts, expert_ffn, expert_hidden, rngs=rngs, options=expert_options)
    shared_options = {**(expert_options or {}), "hidden": n_shared * expert_hidden}
    self.shared = registry.build("ffn", expert_ffn, ctx, rngs=rngs, **shared_options) if n_shared else None

  def flops_per_token(self, seq_len: int) -> float:
    """Active work only: the router, top_k of the E experts (their stacked weights count E times),
    and the shared experts."""
    routed = self.top_k / self.n_experts * forward_flops_per_token(self.experts, seq_len)
    shared = forward_flops_per_token(self.shared, seq_len) if self.shared is not None else 0.0
    return forward_flops_per_token(self.router, seq_len) + routed + shared

  def active_params(self) -> float:
    routed = self.top_k / self.n_experts * active_params(self.experts)
    return active_params(self.router) + routed + (active_params(self.shared) if self.shared is not None else 0.0)

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., D] -> [..., D]
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])  # [N, D]
    logits = self.router(x2)  # [N, E] fp32
    if self.routing == "expert_choice":
      y, probs, dropped = self._expert_choice(x2, logits)
    else:
      y, probs, dropped = self._token_choice(x2, logits)
    if self.shared is not None:
      y = y + self.shared(x2)
    self.sow(LayerMetric, "moe_dropped_fraction", dropped)
    self.sow(LayerMetric, "moe_router_entropy", losses.router_entropy(probs))
    if self.z_loss_weight:
      self.sow(AuxLoss, "moe_z_loss", self.z_loss_weight * losses.router_z_loss(logits))
    return y.astype(x.dtype).reshape(shape)

  def _token_choice(self, x, logits):
    route = top_k_route(logits, self.top_k, score=self.score, renormalize=self.renormalize)
    load = losses.expert_load(route.experts, self.n_experts)
    self.sow(LayerMetric, "moe_expert_load", load)
    if self.load_balance_weight:
      self.sow(AuxLoss, "moe_load_balance",
               self.load_balance_weight * losses.load_balancing_loss(load, route.probs))
    dropless = self.dispatch == "dropless"
    mesh = active_mesh() if self.expert_parallel else None
    if mesh is not None:
      y, kept = expert_parallel_apply(*self.experts.split(), x, route.experts, route.weights,
                                      n_experts=self.n_experts, mesh=mesh,
                                      capacity_factor=None if dropless else self.capacity_factor)
    elif dropless and self.experts.supports_ragged:
      groups = dispatch.sort_by_expert(route.experts, self.n_experts)
      rows = self.experts.ragged(dispatch.to_groups(x, groups, self.top_k), groups,
                                 impl=self.grouped_matmul, tile=self.tile_size)
      y, kept = dispatch.from_groups(rows, groups, route.weights), jnp.ones(route.experts.shape, bool)
    else:
      n = x.shape[0]
      cap = n if dropless else dispatch.capacity(n, self.n_experts, self.top_k, self.capacity_factor)
      slots = dispatch.capacity_slots(route.experts, self.n_experts, cap)
      buffers = dispatch.to_buffers(x, route.experts, slots, self.n_experts, cap)
      y = dispatch.from_buffers(self.experts.grouped(buffers), route.experts, slots, route.weights)
      kept = slots.kept
    return y, route.probs, 1.0 - jnp.mean(kept.astype(jnp.float32))

  def _expert_choice(self, x, logits):
    n = x.shape[0]
    cap = dispatch.capacity(n, self.n_experts, self.top_k, self.capacity_factor)
    route = expert_choice_route(logits, cap)
    y = self.experts.grouped(dispatch.gather_tokens(x, route.tokens))
    counts = jnp.bincount(route.tokens.reshape(-1), length=n)
    self.sow(LayerMetric, "moe_expert_load", jnp.full((self.n_experts,), 1.0 / self.n_experts, jnp.float32))
    return dispatch.scatter_tokens(y, route.tokens, route.weights, n), route.probs, jnp.mean(counts == 0)


def moe(ctx: LayerContext, *, rngs: nnx.Rngs, n_experts: int = 8, top_k: int = 2, expert_ffn: str = "swiglu",
        expert_hidden: int = 0, expert_options: dict | None = None, n_shared: int = 0,
        routing: str = "token_choice", router: str = "learned", score: str = "softmax",
        renormalize: bool = False, jitter: float = 0.0, dispatch: str = "dropless",
        capacity_factor: float = 1.25,
        load_balance_weight: float = 0.01, z_loss_weight: float = 1e-3, expert_parallel: bool = True,
        seed: int = 0, grouped_matmul: str = "auto", tile_size: int = 128) -> MoE:
  """Mixture of experts. expert_hidden defaults to ctx.d_ff // (top_k + n_shared): the active
  parameters then equal a dense ffn of width d_ff (fine-grained experts for top_k > 1).
  expert_options are passed to every expert's constructor (e.g. {"activation": "polynorm"} for
  expert_ffn="mlp"). router "random" is the frozen SMoE-Dropout router (seeded by seed + layer).
  grouped_matmul (dropless): "ragged_dot", "tiled" (groups padded to tile_size rows), or "auto"
  (tiled on CPU, where ragged_dot is a dense masked matmul over all experts; ragged_dot elsewhere)."""
  hidden = expert_hidden or max(1, ctx.d_ff // (top_k + n_shared))
  return MoE(ctx, n_experts=n_experts, top_k=top_k, expert_ffn=expert_ffn, expert_hidden=hidden,
             expert_options=expert_options, n_shared=n_shared, routing=routing, router=router, score=score,
             renormalize=renormalize, jitter=jitter, dispatch=dispatch, capacity_factor=capacity_factor,
             load_balance_weight=load_balance_weight, z_loss_weight=z_loss_weight,
             expert_parallel=expert_parallel, seed=seed, grouped_matmul=grouped_matmul, tile_size=tile_size,
             rngs=rngs)
