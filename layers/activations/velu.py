"""VeLU, the Variance-enhanced Learning Unit (Shakarami, Yeganeh, Farshad, Nicolè, Ghidoni, Navab, "VeLU:
Variance-enhanced Learning Unit for Deep Neural Networks", arXiv 2504.15051, 2025).

    a(x) = x · σ(α (atan(β₁ x) + asin(clip(β₂ x, -1, 1)))) · (1 + γ tanh(μ / sqrt(mean(x², features) + ε)))
    VeLU(x) = λ a(x),   λ learnable (init 1),
    regulariser λ_OT · W₂²(N(mean a, std a²), N(0, 1)) = λ_OT · (mean(a)² + (std(a) - 1)²), a sown AuxLoss.

The ArcTan-ArcSin mix is the smooth gate; the factor 1 + γ tanh(μ / RMS) scales each row by its variance
over the features (a row's output depends on that row only); the Wasserstein-2 term, in closed form
between Gaussians, pulls each VeLU layer's output distribution towards N(0, 1) (the paper's answer to
covariate shift). The formula and every default (α = β₁ = β₂ = γ = 0.1, μ = 0.9, λ_OT = 0.1, ε = 1e-6, λ
init 1) are the authors' released Keras layer (github.com/AshkanShakarami/VeLU, VeLU.ipynb at commit
53d4dbe); its README calls that notebook the base version of the paper, whose method text could not be
read here (the paper's "ArcTan-Sin" is the code's atan + asin). Their plot of the curve uses α = 2,
β₁ = 1, β₂ = 0.7. μ is the authors' name `momentum` (a scale inside the tanh, not a moving average). The
regulariser's statistics are over every element of the layer's output (batch included), as in their code;
set `lambda_ot=0` to switch it off.
"""

import jax
from flax import nnx

from layers.activations import functional
from layers.aux import AuxLoss
from layers.context import LayerContext
from layers.core import make_param


class VeLU(nnx.Module):
  def __init__(self, ctx: LayerContext, *, rngs: nnx.Rngs, alpha: float = 0.1, beta1: float = 0.1,
               beta2: float = 0.1, gamma: float = 0.1, momentum: float = 0.9, lambda_ot: float = 0.1,
               eps: float = 1e-6):
    if lambda_ot < 0 or eps <= 0:
      raise ValueError(f"velu needs lambda_ot >= 0 and eps > 0; got lambda_ot={lambda_ot}, eps={eps}")
    self.lam = make_param(nnx.initializers.ones, rngs.params(), (1,), ctx.param_dtype, (None,),
                          optim_group="activation")
    self.options = dict(alpha=alpha, beta1=beta1, beta2=beta2, gamma=gamma, momentum=momentum, eps=eps)
    self.lambda_ot = lambda_ot

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., F] -> [..., F]
    y, a = functional.velu(x, self.lam[...], **self.options)
    if self.lambda_ot:
      self.sow(AuxLoss, "velu_w2", self.lambda_ot * functional.w2_to_standard_normal(a))
    return y
