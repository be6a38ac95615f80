"""The gated delta rule's recurrent form as XLA:CPU kernels (`delta_rule_cpu.cc`, built by `layers.cpu_kernels`),
with a hand-written backward: gated_delta_rule(..., mode="recurrent", implementation="cpu").

On a CPU the K x V state of a head (16 KiB at K = V = 64) stays in L1, and a step is two sweeps over it, so the
sequential form costs less than the chunk form's small matmuls (which trade FLOPs for the parallelism an
accelerator needs). The forward keeps the state entering every SEGMENT steps; the backward recomputes a
segment's states from it and walks the segment backwards. Batch x heads run in parallel on XLA:CPU's threads.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from layers import cpu_kernels

SOURCE = Path(__file__).with_name("delta_rule_cpu.cc")
_TARGETS = (("ablax_delta_rule_forward", "AblaxDeltaRuleForward"),
            ("ablax_delta_rule_backward", "AblaxDeltaRuleBackward"))
SEGMENT = 64  # steps between saved states: the backward holds SEGMENT + 1 states of a head at a time


def enabled() -> bool:
  """Whether ops traced now use the kernels (`cpu_kernels.enabled`), building them on the first call."""
  return cpu_kernels.enabled() and cpu_kernels.load(SOURCE, _TARGETS)


def recurrent(q, k, v, g, beta, s0, starts):
  """`gated_delta_rule.recurrent` as kernels: q (scaled), k [B, T, H, K], v [B, T, H, V], g [B, T, H] or
  [B, T, H, K] (per key channel), beta [B, T, H], s0 [B, H, K, V], starts [B, T] bool or None; fp32.
  Returns (o [B, T, H, V], final state [B, H, K, V])."""
  g4 = g[..., None] if g.ndim == 3 else g
  starts = jnp.zeros(q.shape[:2], jnp.int32) if starts is None else starts.astype(jnp.int32)
  return _recurrence(q, k, v, g4, beta, s0, starts)


def _forward_call(q, k, v, g, beta, s0, starts):
  b, t, h, dk = q.shape
  segments = -(-t // SEGMENT)
  out = (jax.ShapeDtypeStruct((b, t, h, v.shape[-1]), jnp.float32), jax.ShapeDtypeStruct(s0.shape, jnp.float32),
         jax.ShapeDtypeStruct((b, h, segments, dk, v.shape[-1]), jnp.float32))
  return jax.ffi.ffi_call("ablax_delta_rule_forward", out, vmap_method="sequential")(
      q, k, v, g, beta, s0, starts, segment=np.int64(SEGMENT))


@jax.custom_vjp
def _recurrence(q, k, v, g, beta, s0, starts):
  return _forward_call(q, k, v, g, beta, s0, starts)[:2]


def _recurrence_fwd(q, k, v, g, beta, s0, starts):
  o, final, checkpoints = _forward_call(q, k, v, g, beta, s0, starts)
  return (o, final), (q, k, v, g, beta, starts, checkpoints)


def _recurrence_bwd(residuals, cotangents):
  q, k, v, g, beta, starts, checkpoints = residuals
  d_o, d_final = cotangents
  out = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v, g, beta, d_final))  # ds0 like d_final
  grads = jax.ffi.ffi_call("ablax_delta_rule_backward", out, vmap_method="sequential")(
      q, k, v, g, beta, starts, checkpoints, d_o, d_final, segment=np.int64(SEGMENT))
  return (*grads, None)


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)
