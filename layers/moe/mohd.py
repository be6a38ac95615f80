"""Mixture of Hidden Dimensions (Chen et al., "Mixture of Hidden-Dimensions Transformer" / "Mixture of
Hidden-Dimensions: Not All Hidden-States' Dimensions are Needed in Transformer", ICML 2025), the
feed-forward half, registered as the ffn "mohd".

MoHD sparsifies the model's hidden dimension D, the width of the hidden states the blocks read and write.
D is cut into n_subdims sub-dimensions of D / n_subdims. Per token, the shared sub-dimensions (the first
n_shared) are always active, and a router picks top_k more of the remaining ones (the specialised
sub-dimensions). The gated feed-forward reads only the token's active sub-dimensions of x and writes only
its active sub-dimensions of the output, so a token uses the fraction n_active / n_subdims of the ffn's
weights:

  A(x)  = shared ∪ top_k of softmax(x W_r) over the routed sub-dimensions    (fp32)
  z     = sum_{i in A} x_i W_in,i                      x_i [s], W_in,i [s, 2F] (gate and up)
  h     = act(z_gate) * z_up                           [F]
  y_i   = alpha * c_i * h W_out,i   for i in A, else 0     c_i = 1 (shared), p_i (routed: its router prob)
  out   = Fuse(y)                                      group fusion, a Monarch-structured D x D map

Activation scaling alpha (default n_subdims / n_active) makes up for the sub-dimensions a token leaves
out; group fusion mixes within each sub-dimension (G = n_subdims blocks of s x s) and then across
sub-dimensions at each offset (s blocks of G x G), so the sparse update reaches every dimension again at
O(D (s + G)) cost. Both fusion factors start as identities. A Switch balancing loss on the routed
sub-dimensions keeps the router from collapsing.

mode "grouped" is the fast form: the shared part as dense matmuls, the routed (token, sub-dimension) pairs
sorted by sub-dimension through one grouped matmul each way (layers/moe/dispatch.py, ragged_dot or tiled),
FLOPs n_active / n_subdims of the dense ffn. mode "masked" is the specification: the dense ffn on x with
inactive sub-dimensions zeroed, output masked and gated; both agree (tests/test_moe_mohd.py).

From the paper (its abstract and reproducibility summaries; the method section was not reachable here):
shared plus routed sub-dimensions of the hidden states, activation scaling and group fusion against the
information loss of sparsity, LLaMA-style models (hence SwiGLU, activation "silu"), and the compression
setting of 50% active parameters (active_fraction 0.5). From a third-party reading of the paper, not
confirmed: 16 sub-dimensions, 3/4 of the active ones shared (shared_fraction 0.75), and a Monarch matrix as
the fusion. Our own reading, not confirmed: alpha = n_subdims / n_active, routed gates = router
probabilities (unnormalised over the chosen), fusion applied to the output and starting as the identity,
the Switch loss (weight 0.01, Switch Transformer's, not the paper's). Not here: MoHD's sparsified attention
and the expansion setting (a wider hidden dimension for the whole model at constant active parameters),
which need the attention and the embedding sparsified too.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers import registry
from layers.aux import AuxLoss, LayerMetric
from layers.context import LayerContext
from layers.core import make_param
from layers.forward_flops import active_params, forward_flops_per_token
from layers.moe import dispatch, losses
from layers.moe.experts import grouped_matmul, grouped_matmul_impl
from layers.moe.routing import top_k_route

MODES = ("grouped", "masked")


def monarch(y: jax.Array, within: jax.Array, across: jax.Array) -> jax.Array:
  """A Monarch-structured map of y [N, G * s]: each group of s dims mixed by within [G, s, s], then each of the
  s offsets mixed across the G groups by across [s, G, G].  -> [N, G * s]

    >>> y = jnp.arange(4.0)[None]  # G = 2 groups of s = 2
    >>> monarch(y, jnp.stack([jnp.eye(2)] * 2), jnp.stack([jnp.eye(2)[::-1]] * 2)).tolist()  # swap the groups
    [[2.0, 3.0, 0.0, 1.0]]
  """
  g, s = within.shape[0], within.shape[1]
  y = jnp.einsum("ngs,gst->ngt", y.reshape(-1, g, s), within)
  return jnp.einsum("ngt,tgh->nht", y, across).reshape(-1, g * s)


class MoHD(nnx.Module):
  """Mixture-of-hidden-dimensions gated feed-forward (see the module docstring).

  n_active = round(active_fraction * n_subdims) sub-dimensions per token, n_shared = round(shared_fraction *
  n_active) of them shared, top_k = n_active - n_shared routed among the n_subdims - n_shared others.
  hidden 0: ctx.d_ff. scale 0: alpha = n_subdims / n_active. Logged per layer i: layers/mohd_subdim_load/i
  (fraction of routed picks per routed sub-dimension); averaged: layers/mohd_max_violation;
  aux/mohd_load_balance.
  """

  def __init__(self, ctx: LayerContext, *, rngs: nnx.Rngs, n_subdims: int = 16, active_fraction: float = 0.5,
               shared_fraction: float = 0.75, hidden: int = 0, activation: str = "silu", scale: float = 0.0,
               fusion: bool = True, load_balance_weight: float = 0.01, mode: str = "grouped",
               grouped_matmul: str = "auto", tile_size: int = 128):
    d = ctx.d_model
    if n_subdims < 1 or d % n_subdims:
      raise ValueError(f"n_subdims={n_subdims} must divide d_model={d} (sub-dimensions of d_model / n_subdims)")
    n_active = round(active_fraction * n_subdims)
    if not 0 < active_fraction <= 1 or n_active < 1:
      raise ValueError(f"active_fraction={active_fraction} must be in (0, 1] and keep >= 1 of {n_subdims} "
                       "sub-dimensions active")
    if not 0 <= shared_fraction <= 1:
      raise ValueError(f"shared_fraction={shared_fraction} must be in [0, 1] (the share of active sub-dimensions "
                       "that every token uses)")
    if mode not in MODES:
      raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    self.n_subdims, self.n_active = n_subdims, n_active
    self.n_shared = round(shared_fraction * n_active)
    self.top_k, self.n_routed = n_active - self.n_shared, n_subdims - self.n_shared
    self.sub = d // n_subdims
    self.alpha = scale or n_subdims / n_active
    self.mode, self.grouped_matmul, self.tile_size = mode, grouped_matmul_impl(grouped_matmul), tile_size
    self.load_balance_weight, self.layer_idx, self.dtype = load_balance_weight, ctx.layer_idx, ctx.dtype
    f = hidden or ctx.d_ff
    in_init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")  # fan_in: s * G = D
    out_init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", batch_axis=(0,))  # fan_in: F
    shape_in = (n_subdims, self.sub, f)
    self.gate = make_param(in_init, rngs.params(), shape_in, ctx.param_dtype, (None, None, "mlp"))
    self.up = make_param(in_init, rngs.params(), shape_in, ctx.param_dtype, (None, None, "mlp"))
    self.down = make_param(out_init, rngs.params(), (n_subdims, f, self.sub), ctx.param_dtype, (None, "mlp", None))
    self.act = registry.build("activation", activation, ctx.with_features(f), rngs=rngs)
    self.router = (make_param(nnx.initializers.normal(stddev=d**-0.5), rngs.params(), (d, self.n_routed),
                              ctx.param_dtype, ("embed", None)) if self.top_k else None)
    def identities(key, shape, dtype):  # the fusion factors start as the identity map
      return jnp.broadcast_to(jnp.eye(shape[-1], dtype=dtype), shape)

    fusion_param = lambda shape: make_param(identities, rngs.params(), shape, ctx.param_dtype,  # noqa: E731
                                            (None, None, None), optim_group="no_decay")
    self.within = fusion_param((n_subdims, self.sub, self.sub)) if fusion else None
    self.across = fusion_param((self.sub, n_subdims, n_subdims)) if fusion else None

  def flops_per_token(self, seq_len: int) -> float:
    """The active fraction of the ffn's matmuls, plus the router and the fusion."""
    ffn = 2.0 * 3 * self.gate.size * self.n_active / self.n_subdims
    router = 2.0 * self.router.size if self.router is not None else 0.0
    fusion = 2.0 * (self.within.size + self.across.size) if self.within is not None else 0.0
    act = forward_flops_per_token(self.act, seq_len) if isinstance(self.act, nnx.Module) else 0.0
    return ffn + router + fusion + act

  def active_params(self) -> float:
    ffn = 3 * self.gate.size * self.n_active / self.n_subdims
    router = self.router.size if self.router is not None else 0.0
    fusion = self.within.size + self.across.size if self.within is not None else 0.0
    return ffn + router + fusion + (active_params(self.act) if isinstance(self.act, nnx.Module) else 0.0)

  def coefficients(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """c [N, G] fp32 (1 on shared, the router prob on chosen routed sub-dimensions, 0 elsewhere), the chosen
    routed sub-dimensions [N, top_k] (None without routing) and the router probs [N, R].  x [N, D]"""
    n = x.shape[0]
    shared = jnp.ones((n, self.n_shared), jnp.float32)
    if not self.top_k:
      return shared, None, None
    route = top_k_route(x.astype(jnp.float32) @ self.router[...].astype(jnp.float32), self.top_k)
    routed = jnp.zeros((n, self.n_routed), jnp.float32).at[jnp.arange(n)[:, None], route.experts].set(route.weights)
    return jnp.concatenate([shared, routed], axis=-1), route.experts, route.probs

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., D] -> [..., D]
    c, chosen, probs = self.coefficients(x.reshape(-1, x.shape[-1]))
    x2 = x.reshape(-1, x.shape[-1]).astype(self.dtype)  # [N, D]
    y = self._masked(x2, c) if self.mode == "masked" else self._grouped(x2, c, chosen)
    y = self.alpha * y
    if self.within is not None:
      y = monarch(y, self.within[...].astype(y.dtype), self.across[...].astype(y.dtype))
    if chosen is not None:
      load = losses.expert_load(chosen, self.n_routed)
      self.sow(LayerMetric, f"mohd_subdim_load/{self.layer_idx}", load)
      self.sow(LayerMetric, "mohd_max_violation", losses.max_violation(load))
      if self.load_balance_weight:
        self.sow(AuxLoss, "mohd_load_balance", self.load_balance_weight * losses.load_balancing_loss(load, probs))
    return y.astype(x.dtype).reshape(x.shape)

  def _ffn_hidden(self, z: jax.Array) -> jax.Array:  # [N, 2F] -> [N, F]
    gate, up = jnp.split(z, 2, axis=-1)
    return self.act(gate) * up

  def _masked(self, x: jax.Array, c: jax.Array) -> jax.Array:
    """The specification: the dense ffn on x with inactive sub-dimensions zeroed; output gated by c.  [N, D]"""
    g, s = self.n_subdims, self.sub
    c = jnp.pad(c, ((0, 0), (0, g - c.shape[-1])))  # no routing: only the shared ones
    active = jnp.repeat((c > 0).astype(x.dtype), s, axis=-1)
    w_in = jnp.concatenate([self.gate[...], self.up[...]], axis=-1).reshape(g * s, -1).astype(self.dtype)
    h = self._ffn_hidden((x * active) @ w_in)
    y = h @ self.down[...].transpose(1, 0, 2).reshape(-1, g * s).astype(self.dtype)  # [N, D]
    return y * jnp.repeat(c, s, axis=-1).astype(y.dtype)

  def _grouped(self, x: jax.Array, c: jax.Array, chosen: jax.Array | None) -> jax.Array:
    """The fast form: shared sub-dimensions dense, routed (token, sub-dimension) pairs as grouped matmuls."""
    n, sh, s = x.shape[0], self.n_shared, self.sub
    w_in = jnp.concatenate([self.gate[...], self.up[...]], axis=-1).astype(self.dtype)  # [G, s, 2F]
    w_out = self.down[...].astype(self.dtype)  # [G, F, s]
    if chosen is None:  # every active sub-dimension is shared
      h = self._ffn_hidden(x[:, :sh * s] @ w_in[:sh].reshape(sh * s, -1))
      y = h @ w_out[:sh].transpose(1, 0, 2).reshape(-1, sh * s)
      return jnp.pad(y, ((0, 0), (0, x.shape[-1] - sh * s)))
    groups = dispatch.sort_by_expert(chosen, self.n_routed)
    token = groups.order // self.top_k  # [M] token of each sorted (token, routed sub-dimension) pair
    rows = x.reshape(n, self.n_subdims, s)[token, sh + groups.expert_of_row]  # [M, s]
    z_rows = grouped_matmul(rows, w_in[sh:], groups, impl=self.grouped_matmul, tile=self.tile_size)  # [M, 2F]
    z = dispatch.from_groups(z_rows, groups, jnp.ones(chosen.shape, z_rows.dtype))  # sum over the token's picks
    if sh:
      z = z + x[:, :sh * s] @ w_in[:sh].reshape(sh * s, -1)
    h = self._ffn_hidden(z)  # [N, F]
    y_rows = grouped_matmul(h[token], w_out[sh:], groups, impl=self.grouped_matmul, tile=self.tile_size)  # [M, s]
    y_rows = y_rows * c[token, sh + groups.expert_of_row][:, None].astype(y_rows.dtype)
    routed = jnp.zeros((n, self.n_routed, s), y_rows.dtype).at[token, groups.expert_of_row].add(y_rows)
    shared = h @ w_out[:sh].transpose(1, 0, 2).reshape(-1, sh * s) if sh else jnp.zeros((n, 0), h.dtype)
    return jnp.concatenate([shared, routed.reshape(n, -1)], axis=-1)
