"""Gated DeltaProduct (Siems, Carstensen, Zela, Hutter, Pontil, Grazzi, "DeltaProduct: Improving
State-Tracking in Linear RNNs via Householder Products", NeurIPS 2025).

DeltaNet takes one online-gradient step per token on ||S^T k - v||^2; DeltaProduct takes n_h steps, each
with its own key, value and step size, so the state transition is a product of n_h generalised Householder
matrices (diagonal plus rank n_h) and the gate multiplies once per token:
  S <- exp(g_t) S;   for j = 1..n_h:  S <- S + beta_{t,j} k_{t,j} (v_{t,j} - S^T k_{t,j})^T;   o_t = S^T (K^-1/2 q_t)
(layers.linear_attention.gated_delta_product). The layer is Gated DeltaNet's with n_h key / value / beta
projections and short convs (n_h times as wide; step j of a token reads the j-th slice), and n_h = 1 is
Gated DeltaNet exactly (tests/test_frontier_mixers.py copies the parameters of one into the other).
Defaults: n_h = 2 (the paper compares n_h = 1 with larger n_h; 2 is the reference library layer's
default); beta = 2 sigmoid(W_b x) in [0, 2], i.e. eigenvalues of each Householder factor in [-1, 1] (the
paper's setting, after Grazzi et al. 2025, without which products of Householders cannot track state;
the reference library's model config defaults to [0, 1], its layer to [-1, 1]; allow_neg_eigval=False gives
[0, 1]); the forget gate on (Gated DeltaProduct; use_forget_gate=False is the paper's ungated DeltaProduct);
the rest as Gated DeltaNet's paper (value head 2 x head_dim, short convs of 4, SiLU-gated per-head output
RMSNorm with eps 1e-5, chunks of 64 steps).
"""

from flax import nnx

from layers.context import LayerContext
from layers.linear_attention.mixers.delta_net import DeltaNet


class GatedDeltaProduct(DeltaNet):
  """(Gated) DeltaProduct token mixer: num_householder delta steps per token."""

  def __init__(self, ctx: LayerContext, *, num_householder: int = 2, use_forget_gate: bool = True,
               allow_neg_eigval: bool = True, expand_k: float = 1.0, expand_v: float = 2.0, conv_size: int = 4,
               use_gate: bool = True, norm_eps: float = 1e-5, mode: str = "chunk", chunk_size: int = 64,
               rngs: nnx.Rngs):
    if num_householder < 1:
      raise ValueError(f"num_householder must be >= 1 (delta steps per token), got {num_householder}")
    self._build(ctx, gated=use_forget_gate, expand_k=expand_k, expand_v=expand_v, conv_size=conv_size,
                use_gate=use_gate, allow_neg_eigval=allow_neg_eigval, norm_eps=norm_eps, mode=mode,
                chunk_size=chunk_size, rngs=rngs, num_householder=num_householder)
