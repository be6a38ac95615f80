"""Standard (SP) or maximal-update (µP) parametrization of an LM's width: `model.parametrization`.

µP (Yang et al., "Tensor Programs V", 2021, table 3 for Adam, in the form of the `mup` package: the readout
scaled by a multiplier instead of a 1/fan_in² init) makes the best learning rate, initialisation scale and
activation sizes independent of width, so an lr tuned at a small width transfers to a large one. It is defined
relative to `model.base_width`, the width at which µP is SP exactly; a model of width d_model has width
multiplier m = d_model / base_width. Widths scale d_model, d_ff and head_dim together (head counts, layer
counts, vocabulary, expert counts and sizes an option gives in absolute numbers stay fixed). A dimension of a
parameter is "infinite" if it changes when the model is built at twice the width (shapes only, as the `mup`
package's base shapes); kernels are stored [..., in, out].

| kind         | which parameters (per layer kind)                                    | init             | Adam lr |
|--------------|----------------------------------------------------------------------|------------------|---------|
| hidden       | two or more infinite dims: attention q/k/v/o, MLP / GLU up, gate and | the layer's own  | × 1/m   |
| (matrix-like)| down, linear-attention q/k/v/o and output-gate projections, MoE      |  (fan-in         |         |
|              | expert kernels [E, D, F], KAN spline / base kernels and Fourier-KAN  |   variance)      |         |
|              | coefficients (B-spline [in, basis, out]), group-rational KAN fc1/fc2 |                  |         |
| output-like  | infinite fan-in, fixed fan-out (one infinite dim, not the last):     | std × m^-1/2     | × 1/m   |
|              | per-head gates (log-decay a/dt projections, delta-rule β projections | (var ∝ 1/fan_in²)|         |
|              | [D, H]), the MoE router [D, E], low-rank gate down projections [D, r]|                  |         |
|              | of fixed rank (GLA's gk_down, RWKV-7's w/a down)                     |                  |         |
| readout      | the unembedding [D, V] (logits × 1/m; tied: the embedding stays      | std × m^1/2      | × 1     |
|              | vector-like, the logits are still × 1/m)                             | (constant)       |         |
| vector-like  | one infinite dim, the last: embedding [V, D], biases, norm scales,   | the layer's own  | × 1     |
|              | per-channel decays and gate biases, depthwise conv kernels [k, D],   |                  |         |
|              | fixed-rank up projections [r, D], RWKV token-shift mixes [6, D]      |                  |         |
| scalar-like  | no infinite dim: learnable activation coefficients (rational / PAU   | the layer's own  | × 1     |
|              | numerator and denominator, group-rational, PolyNorm / PolyReLU, APA, |                  |         |
|              | Swish β, ...), per-head scalars (A_log, dt_bias, D)                  |                  |         |
| attention    | softmax attention (`attention`) logits: scale sqrt(base head_dim) /  |        -         |    -    |
|              | head_dim, i.e. 1/d_head (= 1/sqrt(head_dim) at base width)           |                  |         |

Hidden weights keep their layer's own init, which in this codebase has fan-in variance (layers.core.Linear's
default; orthogonal or zero where a layer says so). A width family that grows the head count at fixed head_dim
is not what the attention rule assumes (its scale would shrink by m^-1/2 for nothing); scale head_dim.
KAN grids are not parameters (refitted from data, never by the optimizer). Other softmax-type mixers
(forgetting, diagonal, block attention) and the linear-attention mixers keep their SP q·k scale (most
normalise q and k). SP, and µP at d_model == base_width, leave every parameter, its lr and the forward pass
exactly as they are. The lr multipliers reach the optimizer as `lr_mult` metadata on each parameter.
"""

import ml_collections
from flax import nnx

PARAMETRIZATIONS = ("sp", "mup")
HIDDEN, OUTPUT, READOUT, VECTOR, SCALAR = "hidden", "output-like", "readout", "vector-like", "scalar-like"


def check(cfg) -> None:
  """A known model.parametrization, and under µP a positive integer model.base_width."""
  name = cfg.get("parametrization", "sp")
  if name not in PARAMETRIZATIONS:
    raise ValueError(f"model.parametrization={name!r} is unknown; choose one of {PARAMETRIZATIONS}")
  base = cfg.get("base_width", 0)
  if name == "mup" and (isinstance(base, bool) or not isinstance(base, int) or base < 1):
    raise ValueError(f"model.base_width={base!r}: µP needs the width at which it equals SP (where the lr was "
                     f"tuned), a positive integer; set model.base_width, e.g. model.base_width={cfg.d_model}")


def width_mult(cfg) -> float:
  """m = d_model / base_width under µP; 1 under SP."""
  check(cfg)
  return cfg.d_model / cfg.base_width if cfg.get("parametrization", "sp") == "mup" else 1.0


def attention_scale_mult(cfg) -> float:
  """The factor on softmax attention's 1/sqrt(head_dim) scale: m^-1/2 makes it sqrt(base head_dim) / head_dim."""
  return width_mult(cfg) ** -0.5


def logit_mult(cfg) -> float:
  """The factor on the logits (the readout multiplier): 1/m."""
  return 1.0 / width_mult(cfg)


def _wider(cfg) -> ml_collections.ConfigDict:
  """The same model at twice the width, under SP (its shapes tell which dims are infinite)."""
  wide = ml_collections.ConfigDict(cfg.to_dict())
  wide.parametrization = "sp"
  wide.d_model, wide.d_ff = 2 * cfg.d_model, 2 * cfg.d_ff
  if cfg.get("head_dim", 0):
    wide.head_dim = 2 * cfg.head_dim
  return wide


def classify(shape: tuple[int, ...], wide_shape: tuple[int, ...]) -> str:
  """The µP kind of a (non-readout) parameter from its shape and its shape at twice the width."""
  infinite = [i for i, (a, b) in enumerate(zip(shape, wide_shape)) if a != b]
  if len(infinite) >= 2:
    return HIDDEN
  if not infinite:
    return SCALAR
  return VECTOR if infinite[0] == len(shape) - 1 else OUTPUT


def kinds(model: nnx.Module, cfg, *, readout: str | None) -> dict[tuple, str]:
  """{parameter path: µP kind} of `model` (built from `cfg`); parameters under the attribute `readout` (an
  untied output projection) are the readout."""
  wide = nnx.eval_shape(lambda: type(model)(_wider(cfg), rngs=nnx.Rngs(0)))
  wide_shapes = {path: v.shape for path, v in nnx.to_flat_state(nnx.state(wide, nnx.Param))}
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    out[path] = READOUT if readout is not None and path[0] == readout else classify(var.shape, wide_shapes[path])
  return out


def apply(model: nnx.Module, cfg, *, readout: str | None) -> None:
  """Under µP: rescale the init of output-like (× m^-1/2) and readout (× m^1/2) parameters and tag every
  parameter with its `lr_mult` (1/m for hidden and output-like, 1 otherwise). Under SP: nothing."""
  if cfg.get("parametrization", "sp") != "mup":
    return
  m = width_mult(cfg)
  params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  for path, kind in kinds(model, cfg, readout=readout).items():
    var = params[path]
    if kind in (OUTPUT, READOUT):
      var[...] = var[...] * m ** (-0.5 if kind == OUTPUT else 0.5)
    var.set_metadata("lr_mult", 1.0 / m if kind in (HIDDEN, OUTPUT) else 1.0)
