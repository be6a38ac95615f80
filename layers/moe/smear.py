"""SMEAR (Muqeeth et al., "Soft Merging of Experts with Adaptive Routing"), registered as the ffn "smear".

The router's softmax weights p [E] average the experts' parameters, W = sum_e p_e W_e, and the
merged expert runs once: fully differentiable, no dispatch, cost of one expert (+ the merge).

granularity "sequence" (the paper's setting; encoders, ViT): p from the mean of x over the
  sequence, one merge per sequence; any registered ffn works as the expert. Not causal.
granularity "token" (causal, for LMs): p per token. For MLP / GLU experts the merged
  projections are computed without materialising per-token weights, since
  x @ sum_e p_e W_e = (p ⊗ x) @ stack_e(W_e); this costs E times the projection FLOPs.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from layers.aux import LayerMetric
from layers.context import LayerContext
from layers.feedforward import GLU
from layers.forward_flops import forward_flops_per_token
from layers.moe import losses
from layers.moe.experts import Experts, split_stacked
from layers.moe.routing import Router

GRANULARITIES = ("sequence", "token")


def merge_params(params: Any, weights: jax.Array) -> Any:
  """Router-weighted average of stacked params [E, ...] with weights [G, E] -> params [G, ...]."""
  return jax.tree.map(lambda p: jnp.einsum("ge,e...->g...", weights.astype(p.dtype), p), params)


def merged_linear(x: jax.Array, weights: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
  """x_n @ (sum_e w_ne W_e) + sum_e w_ne b_e.  x [N, I], weights [N, E], kernel [E, I, O] -> [N, O]"""
  n, e = weights.shape
  xw = (weights[:, :, None].astype(x.dtype) * x[:, None, :]).reshape(n, -1)  # [N, E*I]
  y = xw @ kernel.astype(x.dtype).reshape(e * kernel.shape[1], -1)
  if bias is not None:
    y = y + weights.astype(x.dtype) @ bias.astype(x.dtype)
  return y


def _apply_merged(graphdef, params: Any, rest: Any, x: jax.Array) -> jax.Array:
  """Module g with its own merged params applied to x[g].  params [G, ...], x [G, ...]"""
  return jax.vmap(lambda p, xg: nnx.merge(graphdef, p, rest)(xg))(params, x)


class SMEAR(nnx.Module):
  """SMEAR feed-forward; expert_hidden 0: ctx.d_ff (one merged expert = one dense ffn)."""

  def __init__(self, ctx: LayerContext, *, rngs: nnx.Rngs, n_experts: int = 4, expert_ffn: str = "swiglu",
               expert_hidden: int = 0, expert_options: dict | None = None, granularity: str = "token"):
    if granularity not in GRANULARITIES:
      raise ValueError(f"unknown granularity {granularity!r}; choose from {GRANULARITIES}")
    self.granularity, self.n_experts = granularity, n_experts
    self.router = Router(ctx.d_model, n_experts, param_dtype=ctx.param_dtype, rngs=rngs)
    self.experts = Experts(ctx, n_experts, expert_ffn, expert_hidden or ctx.d_ff, rngs=rngs, options=expert_options)
    if granularity == "token" and not self.experts.supports_ragged:
      raise ValueError(f"SMEAR granularity 'token' needs MLP/GLU experts; got {expert_ffn!r} "
                       "(use granularity='sequence')")

  def flops_per_token(self, seq_len: int) -> float:
    """"token": every expert's projections per token (merged exactly, E x one expert);
    "sequence": one merged expert per token plus the merge, once per sequence."""
    experts = forward_flops_per_token(self.experts, seq_len)
    router = forward_flops_per_token(self.router, seq_len)
    if self.granularity == "token":
      return router + experts
    return router + experts / self.n_experts + experts / seq_len

  def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, D] -> [B, T, D] ("sequence"); [..., D] ("token")
    if self.granularity == "sequence":
      probs = jax.nn.softmax(self.router(jnp.mean(x.astype(jnp.float32), axis=-2)), axis=-1)  # [B, E]
      graphdef, params, rest = self.experts.split()
      y = _apply_merged(graphdef, merge_params(params, probs), rest, x)
    else:
      x2 = x.reshape(-1, x.shape[-1])
      probs = jax.nn.softmax(self.router(x2), axis=-1)  # [N, E]
      y = self._token_merged(x2, probs).reshape(x.shape)
    self.sow(LayerMetric, "moe_expert_load", jnp.mean(probs, axis=0))
    self.sow(LayerMetric, "moe_router_entropy", losses.router_entropy(probs))
    return y.astype(x.dtype)

  def _token_merged(self, x: jax.Array, probs: jax.Array) -> jax.Array:  # [N, D], [N, E] -> [N, D]
    f = self.experts.ffn
    x = x.astype(self.experts.dtype)

    def proj(lin, h):
      return merged_linear(h, probs, lin.kernel[...], None if lin.bias is None else lin.bias[...])

    def act(h):
      if not isinstance(f.act, nnx.Module):
        return f.act(h)
      graphdef, params, rest = split_stacked(f.act)
      return _apply_merged(graphdef, merge_params(params, probs), rest, h)

    h = act(proj(f.gate if isinstance(f, GLU) else f.up, x))
    if isinstance(f, GLU):
      h = h * proj(f.up, x)
    return proj(f.down, h)

