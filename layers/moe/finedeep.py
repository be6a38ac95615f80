"""Finedeep (Pan et al., "Finedeep: Mitigating Sparse Activation in Dense LLMs via Multi-Layer Fine-Grained
Experts", 2025), registered as the ffn "finedeep".

The dense feed-forward of width d_ff becomes M sub-layers of K fine-grained experts each, M * K experts of
width d_ff / (M * K): the parameters and FLOPs of the dense ffn, plus one router vector per expert and one
norm per sub-layer after the first. The model stays dense: every expert runs on every token (no top-k).
Sub-layer m weighs its experts by their own outputs (output-guided sigmoid routing, fp32) and the sub-layers
are chained by residual connections:

  o_{m,k} = E_{m,k}(v_m)                      v_1 = x,  v_m = RMSNorm_m(u_m) for m > 1
  s_{m,k} = sigmoid(<o_{m,k}, r_{m,k}>)       r_{m,k} [D]: the router vector of expert (m, k)
  y_m     = sum_k s_{m,k} / (sum_j s_{m,j}) * o_{m,k}
  u_1 = x,  u_{m+1} = u_m + y_m,               output = u_{M+1} - x = sum_m y_m

x is the block's pre-normed input, and the block adds the output to the residual stream.

From the paper (abstract and its summaries; the full text was not reachable here): the partition of the ffn
into M x K experts over M sub-layers at comparable parameters and FLOPs, the per-expert contribution from a
sigmoid routing guided by the expert outputs, RMSNorm with residuals between sub-layers, and its finding that
balancing depth (M) and width (K) works best. Not confirmed against the text: the exact score (here
sigmoid(<o, r>) normalised over the sub-layer's experts), where the norms sit (here before every sub-layer
but the first, whose input the block has already normed), the router initialisation (normal, std D^-1/2),
and the paper's M x K table (the defaults 4 x 8 are a balanced choice, not a cited value). Its measure of
activation sparsity (NSAR) is not computed here.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers import registry
from layers.aux import LayerMetric
from layers.context import LayerContext
from layers.core import make_param
from layers.moe.experts import Experts, grouped_apply


def output_guided_weights(outputs: jax.Array, router: jax.Array) -> jax.Array:
  """sigmoid(<o_k, r_k>) normalised over the K experts.  outputs [K, N, D], router [K, D] -> [K, N] fp32

    >>> w = output_guided_weights(jnp.ones((2, 1, 3)), jnp.array([[1.0, 1, 1], [-1.0, -1, -1]]))
    >>> [round(float(v), 4) for v in w[:, 0]]  # sigmoid(3) and sigmoid(-3), normalised
    [0.9526, 0.0474]
  """
  scores = jax.nn.sigmoid(jnp.einsum("knd,kd->kn", outputs.astype(jnp.float32), router.astype(jnp.float32)))
  return scores / jnp.sum(scores, axis=0, keepdims=True)


class Finedeep(nnx.Module):
  """Finedeep feed-forward: n_sublayers x n_experts fine-grained experts, all active, output-guided routing.

  expert_hidden 0: ctx.d_ff // (n_sublayers * n_experts), which must divide evenly (parameter parity with the
  dense ffn of width d_ff). expert_options go to every expert's constructor. Logged per layer i:
  layers/finedeep_weights/i [M, K], each expert's mean routing weight.
  """

  def __init__(self, ctx: LayerContext, *, rngs: nnx.Rngs, n_sublayers: int = 4, n_experts: int = 8,
               expert_ffn: str = "swiglu", expert_hidden: int = 0, expert_options: dict | None = None):
    if n_sublayers < 1 or n_experts < 1:
      raise ValueError(f"n_sublayers={n_sublayers} and n_experts={n_experts} must be >= 1")
    split = n_sublayers * n_experts
    if not expert_hidden and ctx.d_ff % split:
      raise ValueError(f"Finedeep splits d_ff={ctx.d_ff} into n_sublayers * n_experts = {split} experts, which does "
                       f"not divide it; choose M, K with M * K dividing {ctx.d_ff}, or set expert_hidden")
    self.n_sublayers, self.n_experts, self.layer_idx = n_sublayers, n_experts, ctx.layer_idx
    self.experts = Experts(ctx, split, expert_ffn, expert_hidden or ctx.d_ff // split, rngs=rngs,
                           options=expert_options)
    self.router = make_param(nnx.initializers.normal(stddev=ctx.d_model**-0.5), rngs.params(),
                             (n_sublayers, n_experts, ctx.d_model), ctx.param_dtype, (None, None, "embed"))
    self.norms = nnx.List([registry.build("norm", ctx.norm, ctx, rngs=rngs) for _ in range(n_sublayers - 1)])

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., D] -> [..., D]
    x2 = x.reshape(-1, x.shape[-1])  # [N, D]
    graphdef, params, rest = self.experts.split()
    k = self.n_experts
    out, weights = jnp.zeros_like(x2), []
    for m in range(self.n_sublayers):
      v = x2 if m == 0 else self.norms[m - 1](x2 + out)  # u_m = x + y_1 + ... + y_{m-1}
      sub = jax.tree.map(lambda p, m=m: p[m * k:(m + 1) * k], params)  # sub-layer m's K experts
      outputs = grouped_apply(graphdef, sub, rest, jnp.broadcast_to(v, (k, *v.shape)))  # [K, N, D]
      w = output_guided_weights(outputs, self.router[m])  # [K, N]
      out = out + jnp.einsum("kn,knd->nd", w.astype(outputs.dtype), outputs).astype(out.dtype)
      weights.append(jnp.mean(w, axis=1))
    self.sow(LayerMetric, f"finedeep_weights/{self.layer_idx}", jnp.stack(weights))
    return out.astype(x.dtype).reshape(x.shape)
