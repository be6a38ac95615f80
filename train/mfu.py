"""Analytic training FLOPs per step and the peak FLOP/s that MFU divides by.

Training FLOPs = 3 x forward (backward costs two forwards); the forward count per token comes
from the layers themselves (`layers.forward_flops`): matmul weights plus each layer's own extra work.
"""

import time

import jax
import jax.numpy as jnp
from flax import nnx

from layers.forward_flops import forward_flops_per_token

# Dense bf16 peak FLOP/s per device by `device_kind` (vendor datasheets).
PEAK_FLOPS = {
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v6 lite": 918e12,
  "TPU v6e": 918e12,
  "NVIDIA H100 80GB HBM3": 989e12,
  "NVIDIA H100": 989e12,
  "NVIDIA H200": 989e12,
  "NVIDIA A100-SXM4-80GB": 312e12,
  "NVIDIA A100-SXM4-40GB": 312e12,
}


def measured_cpu_peak(n: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of an fp32 n x n matmul on this host's CPU (the best of `repeats`)."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best


def peak_flops(devices=None) -> tuple[float, str]:
  """(peak FLOP/s of all `devices` together, how it was obtained)."""
  devices = devices or jax.devices()
  kind = devices[0].device_kind
  if devices[0].platform == "cpu":
    return measured_cpu_peak(), "measured fp32 matmul on the host CPU"
  for name, peak in PEAK_FLOPS.items():
    if kind.startswith(name):
      return peak * len(devices), f"table: {name} x {len(devices)}"
  return float("nan"), f"unknown device kind {kind!r}; add it to train.mfu.PEAK_FLOPS"


def train_flops_per_step(model: nnx.Module, *, seq_len: int, batch_size: int) -> float:
  """3 x forward FLOPs of one optimizer step over `batch_size` sequences of `seq_len` tokens."""
  return 3.0 * forward_flops_per_token(model, seq_len) * seq_len * batch_size
