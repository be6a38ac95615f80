"""Sparse mixture-of-experts feed-forward (registered as the ffn "moe").

y = g(x) * shared(x) + sum over routed experts e of w_e(x) * expert_e(x)

Routing: token choice (top-k of softmax / sigmoid scores, optionally group-limited to the best
`top_groups` of `n_groups` expert groups, weights renormalised over the k if `renormalize`, times
`routed_scale`) or expert choice; learned or fixed random router.
Balancing: the Switch loss over the batch (`load_balance_weight`), DeepSeek-V3's sequence-wise loss
(`seq_balance_weight`), DeepSeek-V3's auxiliary-loss-free bias (`bias_update_rate` > 0, see
layers/moe/balance.py), router z-loss (ST-MoE, `z_loss_weight`).
Dispatch: "dropless" (sort by expert + grouped matmul, `ragged_dot` or tiled, for MLP / GLU experts;
any other ffn falls back to buffers with capacity N, which cannot drop) or "capacity" (buffers of
ceil(factor * N * k / E) slots, overflow dropped). With k = E (SMoE-Dropout at the end of its schedule)
every expert runs on every token as one dense ffn over all experts' units, without dispatch (both settings).
Shared experts (DeepSeekMoE): n_shared experts' worth of always-on feed-forward, built as one ffn of
width n_shared * expert_hidden; `shared_gate` scales it per token by g(x) = sigmoid(x · w_g) (Qwen-MoE).

Expert parallelism switches on by itself when a mesh with an "expert" axis of size > 1 is set with
`jax.set_mesh(mesh)` while the step is traced (option expert_parallel): dropless token choice and
expert choice exchange only the routed rows, capacity dispatch exchanges GShard buffers
(layers/moe/expert_parallel.py).

Side outputs, i = ctx.layer_idx: AuxLoss "moe_load_balance", "moe_seq_balance", "moe_z_loss" (each times
its weight); LayerMetric per layer "moe_expert_load/i" [E] (fraction of assignments), "moe_dropped_fraction/i",
"moe_balance_bias/i" [E]; averaged over layers "moe_max_violation" (max load / mean load - 1) and
"moe_router_entropy".
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers import registry
from layers.aux import AuxLoss, LayerMetric
from layers.context import LayerContext
from layers.core import make_param
from layers.forward_flops import active_params, forward_flops_per_token
from layers.moe import dispatch as dispatch_lib
from layers.moe import expert_parallel, losses
from layers.moe.balance import BalanceBias
from layers.moe.experts import Experts, grouped_matmul_impl
from layers.moe.routing import SCORES, Router, expert_choice_route, top_k_route

ROUTINGS = ("token_choice", "expert_choice")
DISPATCHES = ("dropless", "capacity")


class MoE(nnx.Module):
  """Mixture of experts.

  expert_hidden 0: ctx.d_ff // (top_k + n_shared), so the active parameters equal a dense ffn of width
  d_ff (fine-grained experts for top_k > 1). expert_options go to every expert's constructor (e.g.
  {"activation": "polynorm"} for expert_ffn="mlp"). router "random" is the frozen SMoE-Dropout router
  (seeded by seed + layer). grouped_matmul (dropless): "ragged_dot", "tiled" (groups padded to tile_size
  rows), or "auto" (tiled on CPU, where ragged_dot is a dense masked matmul over all experts; ragged_dot
  elsewhere). DeepSeek-V3: score="sigmoid", renormalize=True, routed_scale=2.5, n_groups=8, top_groups=4,
  bias_update_rate=1e-3, seq_balance_weight=1e-4, load_balance_weight=0, n_shared=1.
  `nnx.view(model, top_k=k)` routes token choice to k experts instead (evaluation at several k).
  """

  def __init__(self, ctx: LayerContext, *, rngs: nnx.Rngs, n_experts: int = 8, top_k: int = 2,
               expert_ffn: str = "swiglu", expert_hidden: int = 0, expert_options: dict | None = None,
               n_shared: int = 0, shared_gate: bool = False, routing: str = "token_choice",
               router: str = "learned", score: str = "softmax", renormalize: bool = False,
               routed_scale: float = 1.0, n_groups: int = 1, top_groups: int = 1, jitter: float = 0.0,
               dispatch: str = "dropless", capacity_factor: float = 1.25, load_balance_weight: float = 0.01,
               seq_balance_weight: float = 0.0, z_loss_weight: float = 1e-3, bias_update_rate: float = 0.0,
               expert_parallel: bool = True, seed: int = 0, grouped_matmul: str = "auto", tile_size: int = 128):
    _check_options(routing=routing, dispatch=dispatch, score=score, n_experts=n_experts, top_k=top_k,
                   n_groups=n_groups, top_groups=top_groups, bias_update_rate=bias_update_rate,
                   seq_balance_weight=seq_balance_weight)
    grouped_matmul = grouped_matmul_impl(grouped_matmul)
    self.n_experts, self.top_k, self.layer_idx = n_experts, top_k, ctx.layer_idx
    self.routing, self.score, self.renormalize, self.routed_scale = routing, score, renormalize, routed_scale
    self.n_groups, self.top_groups = n_groups, top_groups
    self.dispatch, self.capacity_factor = dispatch, capacity_factor
    self.load_balance_weight, self.seq_balance_weight = load_balance_weight, seq_balance_weight
    self.z_loss_weight = z_loss_weight
    self.expert_parallel = expert_parallel
    self.grouped_matmul, self.tile_size = grouped_matmul, tile_size
    self.view_top_k: int | None = None
    expert_hidden = expert_hidden or max(1, ctx.d_ff // (top_k + n_shared))
    self.router = Router(ctx.d_model, n_experts, kind=router, jitter=jitter, seed=seed + ctx.layer_idx,
                         param_dtype=ctx.param_dtype, rngs=rngs)
    self.balance = BalanceBias(n_experts, bias_update_rate) if bias_update_rate else None
    self.experts = Experts(ctx, n_experts, expert_ffn, expert_hidden, rngs=rngs, options=expert_options)
    shared_options = {**(expert_options or {}), "hidden": n_shared * expert_hidden}
    self.shared = registry.build("ffn", expert_ffn, ctx, rngs=rngs, **shared_options) if n_shared else None
    self.shared_gate = (
      make_param(nnx.initializers.normal(stddev=ctx.d_model**-0.5), rngs.params(), (ctx.d_model, 1),
                 ctx.param_dtype, ("embed", None))
      if n_shared and shared_gate else None
    )

  def set_view(self, top_k: int | None = None):
    """`nnx.view(model, top_k=k)`: token choice with k experts per token instead of top_k (a model evaluated at
    several k, e.g. SMoE-Dropout's self-slimming); None restores the layer's own."""
    if top_k is not None:
      searched = self.top_groups * (self.n_experts // self.n_groups)
      if self.routing != "token_choice" or not 1 <= top_k <= searched:
        raise ValueError(f"top_k={top_k} view of MoE layer {self.layer_idx}: needs token_choice routing and "
                         f"1 <= top_k <= {searched} (the experts its groups search)")
    self.view_top_k = top_k

  def flops_per_token(self, seq_len: int) -> float:
    """Active work only: the router, top_k of the E experts (their stacked weights count E times),
    the shared experts and their gate."""
    routed = self.top_k / self.n_experts * forward_flops_per_token(self.experts, seq_len)
    shared = forward_flops_per_token(self.shared, seq_len) if self.shared is not None else 0.0
    gate = 2.0 * self.shared_gate.size if self.shared_gate is not None else 0.0
    return forward_flops_per_token(self.router, seq_len) + routed + shared + gate

  def active_params(self) -> float:
    routed = self.top_k / self.n_experts * active_params(self.experts)
    shared = active_params(self.shared) if self.shared is not None else 0.0
    gate = self.shared_gate.size if self.shared_gate is not None else 0.0
    return active_params(self.router) + routed + shared + gate

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., D] -> [..., D]
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])  # [N, D]
    logits = self.router(x2)  # [N, E] fp32
    y, probs, load, dropped = self._route(x2, logits, shape[:-1])
    if self.shared is not None:
      shared = self.shared(x2)
      if self.shared_gate is not None:
        gate = jax.nn.sigmoid(x2.astype(jnp.float32) @ self.shared_gate[...].astype(jnp.float32))  # [N, 1]
        shared = shared * gate.astype(shared.dtype)
      y = y + shared
    i = self.layer_idx
    self.sow(LayerMetric, f"moe_expert_load/{i}", load)
    self.sow(LayerMetric, f"moe_dropped_fraction/{i}", dropped)
    self.sow(LayerMetric, "moe_max_violation", losses.max_violation(load))
    self.sow(LayerMetric, "moe_router_entropy", losses.router_entropy(probs))
    if self.z_loss_weight:
      self.sow(AuxLoss, "moe_z_loss", self.z_loss_weight * losses.router_z_loss(logits))
    return y.astype(x.dtype).reshape(shape)

  def _route(self, x, logits, lead: tuple[int, ...]):
    """(routed output [N, D], probs [N, E], load [E], dropped fraction); subclasses change how k is chosen."""
    if self.routing == "expert_choice":
      return self._expert_choice(x, logits)
    return self._token_choice(x, logits, lead, top_k=self.view_top_k)

  def _token_choice(self, x, logits, lead: tuple[int, ...], top_k: int | None = None):
    """Token choice with `top_k` experts per token (default: the layer's top_k)."""
    top_k = self.top_k if top_k is None else top_k
    bias = self.balance.selection_bias() if self.balance is not None else None
    route = top_k_route(logits, top_k, score=self.score, renormalize=self.renormalize, bias=bias,
                        n_groups=self.n_groups, top_groups=self.top_groups, scale=self.routed_scale)
    counts = jnp.bincount(route.experts.reshape(-1), length=self.n_experts)
    load = counts.astype(jnp.float32) / route.experts.size
    if self.balance is not None:
      self.sow(LayerMetric, f"moe_balance_bias/{self.layer_idx}", bias)
      self.balance.record(counts)
    if self.load_balance_weight:
      self.sow(AuxLoss, "moe_load_balance", self.load_balance_weight * losses.load_balancing_loss(load, route.probs))
    if self.seq_balance_weight:
      t = lead[-1] if len(lead) > 1 else x.shape[0]  # a [N, D] input is one sequence
      loss = losses.sequence_balance_loss(route.experts.reshape(-1, t, top_k),
                                          route.probs.reshape(-1, t, self.n_experts))
      self.sow(AuxLoss, "moe_seq_balance", self.seq_balance_weight * loss)
    y, kept = self._dispatch(x, route.experts, route.weights)
    return y, route.probs, load, 1.0 - jnp.mean(kept.astype(jnp.float32))

  def _dispatch(self, x, experts, weights):
    """Routed experts' combined output [N, D] and which assignments were kept [N, k]."""
    top_k = experts.shape[-1]
    dropless = self.dispatch == "dropless"
    mesh = expert_parallel.active_mesh() if self.expert_parallel else None
    all_kept = jnp.ones(experts.shape, bool)
    if top_k == self.n_experts and mesh is None:  # every expert sees every token: the dense ffn, no dispatch
      n = x.shape[0]
      dense_weights = jnp.zeros((n, self.n_experts), weights.dtype).at[jnp.arange(n)[:, None], experts].set(weights)
      return self.experts.weighted_sum(x, dense_weights), all_kept
    if dropless and self.experts.supports_ragged:
      if mesh is not None:
        y = expert_parallel.ragged_apply(*self.experts.split(), x, experts, weights, mesh=mesh,
                                         grouped_matmul=self.grouped_matmul, tile=self.tile_size,
                                         dtype=self.experts.dtype)
        return y, all_kept
      groups = dispatch_lib.sort_by_expert(experts, self.n_experts)
      rows = self.experts.ragged(dispatch_lib.to_groups(x, groups, top_k), groups,
                                 impl=self.grouped_matmul, tile=self.tile_size)
      return dispatch_lib.from_groups(rows, groups, weights), all_kept
    if mesh is not None:
      return expert_parallel.capacity_apply(*self.experts.split(), x, experts, weights, n_experts=self.n_experts,
                                            mesh=mesh, capacity_factor=None if dropless else self.capacity_factor)
    n = x.shape[0]
    cap = n if dropless else dispatch_lib.capacity(n, self.n_experts, top_k, self.capacity_factor)
    slots = dispatch_lib.capacity_slots(experts, self.n_experts, cap)
    buffers = dispatch_lib.to_buffers(x, experts, slots, self.n_experts, cap)
    return dispatch_lib.from_buffers(self.experts.grouped(buffers), experts, slots, weights), slots.kept

  def _expert_choice(self, x, logits):
    n = x.shape[0]
    cap = dispatch_lib.capacity(n, self.n_experts, self.top_k, self.capacity_factor)
    route = expert_choice_route(logits, cap)
    mesh = expert_parallel.active_mesh() if self.expert_parallel else None
    if mesh is not None and self.experts.supports_ragged:
      y = expert_parallel.ragged_expert_choice_apply(*self.experts.split(), x, route.tokens, route.weights,
                                                     mesh=mesh, grouped_matmul=self.grouped_matmul,
                                                     tile=self.tile_size, dtype=self.experts.dtype)
    else:  # under a mesh: XLA's automatic sharding
      y = self.experts.grouped(dispatch_lib.gather_tokens(x, route.tokens))
      y = dispatch_lib.scatter_tokens(y, route.tokens, route.weights, n)
    missed = jnp.mean(jnp.bincount(route.tokens.reshape(-1), length=n) == 0)
    return y, route.probs, jnp.full((self.n_experts,), 1.0 / self.n_experts, jnp.float32), missed


def _check_options(*, routing: str, dispatch: str, score: str, n_experts: int, top_k: int, n_groups: int,
                   top_groups: int, bias_update_rate: float, seq_balance_weight: float) -> None:
  """A ValueError naming the option and the fix, before anything is built."""
  if routing not in ROUTINGS:
    raise ValueError(f"unknown routing {routing!r}; choose from {ROUTINGS}")
  if dispatch not in DISPATCHES:
    raise ValueError(f"unknown dispatch {dispatch!r}; choose from {DISPATCHES}")
  if score not in SCORES:
    raise ValueError(f"unknown router score {score!r}; choose from {SCORES}")
  if not 1 <= top_k <= n_experts:
    raise ValueError(f"top_k={top_k} must be in [1, n_experts={n_experts}]")
  if n_groups < 1 or n_experts % n_groups:
    raise ValueError(f"n_groups={n_groups} must divide n_experts={n_experts}")
  if not 1 <= top_groups <= n_groups or top_k > top_groups * (n_experts // n_groups):
    raise ValueError(f"top_groups={top_groups} must be in [1, n_groups={n_groups}] and its groups must hold "
                     f"top_k={top_k} experts ({n_experts // n_groups} per group)")
  if bias_update_rate < 0:
    raise ValueError(f"bias_update_rate={bias_update_rate} must be >= 0 (0 turns the balancing bias off)")
  if routing == "expert_choice" and (bias_update_rate or seq_balance_weight or n_groups > 1):
    raise ValueError("expert_choice routing is balanced by construction: bias_update_rate, seq_balance_weight and "
                     "n_groups apply to token_choice only (set them to 0, 0, 1)")
