"""XLA:CPU kernels for the rational op's literal form (`rational_cpu.cc`, built by `layers.cpu_kernels`).

XLA:CPU runs the rational backward as separate loops (dL/dx, then the coefficient power sums in a variadic
reduce it does not vectorise); the kernels make one vectorised, multithreaded pass each way (fp32). Where they
cannot be built the op keeps its XLA form: the same results in about 1.5x the time.
"""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from layers import cpu_kernels

SOURCE = Path(__file__).with_name("rational_cpu.cc")
_TARGETS = (("ablax_rational_forward", "AblaxRationalForward"), ("ablax_rational_backward", "AblaxRationalBackward"))


def enabled() -> bool:
  """Whether ops traced now use the kernels (`cpu_kernels.enabled`), building them on the first call."""
  return cpu_kernels.enabled() and cpu_kernels.load(SOURCE, _TARGETS)


def group_layout(x_shape: tuple[int, ...], coeff_shape: tuple[int, ...]) -> tuple[int, int] | None:
  """(G, inner) when coefficients of shape S = coeff_shape give element i of x the group (i // inner) % G: S's
  non-unit axes (aligned to x's trailing axes) must be contiguous and equal to x's. None otherwise."""
  if len(coeff_shape) > len(x_shape):
    return None
  s = (1,) * (len(x_shape) - len(coeff_shape)) + tuple(coeff_shape)
  axes = [i for i, k in enumerate(s) if k != 1]
  if not axes:
    return 1, max(math.prod(x_shape), 1)
  lo, hi = axes[0], axes[-1] + 1
  if any(s[i] != x_shape[i] for i in range(lo, hi)):
    return None
  return math.prod(x_shape[lo:hi]), math.prod(x_shape[hi:])


def _attrs(inner: int, abs_v: bool, abs_h: bool, q0: float, j0: int) -> dict:
  return dict(inner=np.int64(inner), abs_v=np.int32(abs_v), abs_h=np.int32(abs_h), q0=np.float32(q0),
              j0=np.int32(j0))


def forward(x: jax.Array, a: jax.Array, beta: jax.Array, inner: int, abs_v: bool, abs_h: bool, q0: float, j0: int,
            limit: float) -> tuple[jax.Array, jax.Array]:
  """(F(x), whether some |x| > limit or is NaN); fp32 x [...], a [m+1, G], beta [n+1, G] (β_0 first)."""
  f, far = jax.ffi.ffi_call(
      "ablax_rational_forward",
      (jax.ShapeDtypeStruct(x.shape, jnp.float32), jax.ShapeDtypeStruct((), jnp.int32)),
      vmap_method="sequential")(x, a, beta, limit=np.float32(limit), **_attrs(inner, abs_v, abs_h, q0, j0))
  return f, far != 0


def backward(x: jax.Array, g: jax.Array, f: jax.Array, a: jax.Array, beta: jax.Array, inner: int, abs_v: bool,
             abs_h: bool, q0: float, j0: int) -> tuple[jax.Array, jax.Array]:
  """(dL/dx [...], Σ of every coefficient's gradient term [m+1 + n+1-j0, G]: a's, then β_j0..β_n's)."""
  terms = a.shape[0] + beta.shape[0] - j0
  return jax.ffi.ffi_call(
      "ablax_rational_backward",
      (jax.ShapeDtypeStruct(x.shape, jnp.float32), jax.ShapeDtypeStruct((terms, a.shape[1]), jnp.float32)),
      vmap_method="sequential")(x, g, f, a, beta, **_attrs(inner, abs_v, abs_h, q0, j0))
